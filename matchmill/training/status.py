"""``matchmill status`` of a training run: model, latest step, validation, checkpoints, best."""

from __future__ import annotations

import math

from .checkpoints import list_checkpoints, read_best, read_train_marker
from .train_log import read_log


def is_training_run(run_url: str) -> bool:
    return read_train_marker(run_url) is not None


def training_status(run_url: str) -> str:
    marker = read_train_marker(run_url) or {}
    lines = [f"training run: {run_url}", f"model: {marker.get('model')}  config {str(marker.get('config_hash'))[:10]}"]
    table = read_log(run_url)
    if table.num_rows:
        df = table.to_pandas()
        train, val = df[df["kind"] == "train"], df[df["kind"] == "val"]
        if len(train):
            last = train.iloc[-1]
            rate = last.get("samples_per_s") if "samples_per_s" in last else float("nan")
            lines.append(f"latest step: {int(last['step'])}  loss {last['loss']:.4f}"
                         + (f"  {rate:.2f} samples/s" if isinstance(rate, float) and math.isfinite(rate) else ""))
        if len(val):
            last = val.iloc[-1]
            skip = ("kind", "step", "attempt", "time", "epoch")
            shown = {k: v for k, v in last.items() if k not in skip and isinstance(v, float) and math.isfinite(v)}
            lines.append(f"validation (step {int(last['step'])}): " + "  ".join(f"{k} {v:.4g}" for k, v in sorted(shown.items())))
    else:
        lines.append("latest step: none logged yet")
    checkpoints = list_checkpoints(run_url)
    lines.append(f"checkpoints ({len(checkpoints)}):")
    for c in checkpoints:
        metric = c.get("metric")
        value = (c.get("val") or {}).get(metric)
        lines.append(f"  step {c.get('step'):>7}  {metric} {value:.4g}  {c['url']}" if value is not None else f"  step {c.get('step'):>7}  {c['url']}")
    best = read_best(run_url)
    if best:
        lines.append(f"best: step {best.get('step')}  {best.get('metric')} {best.get('best'):.4g}  {run_url.rstrip('/')}/best/model.safetensors")
    return "\n".join(lines)
