"""Training and validation curves of training runs as one PNG (the model card's figure).

    python -m matchmill.evaluation.release.curves matchmill/weights/curves.png RUN_URL [RUN_URL ...]

One column per run: the training loss (raw, light, and a moving average) on top, every validation
metric of the run's task (its log's ``val`` rows: ``mma@3``, ``auc@5/10/20``) below.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from matchmill.training.train_log import read_log


def plot_runs(out: str | Path, run_urls: list[str], window: int = 25) -> Path:
    """Write the figure; returns its path. Runs without a log are drawn as an empty, titled panel."""
    import matplotlib  # lazy: matplotlib only when drawing

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(run_urls), figsize=(4.2 * len(run_urls), 6.0), squeeze=False)
    for col, url in enumerate(run_urls):
        name = url.rstrip("/").rsplit("/", 1)[-1]
        top, bottom = axes[0][col], axes[1][col]
        top.set_title(name, fontsize=10)
        try:
            df = read_log(url).to_pandas()
        except Exception as exc:  # noqa: BLE001 - a missing run is shown, not fatal
            top.text(0.5, 0.5, f"no log\n{type(exc).__name__}", ha="center", va="center", transform=top.transAxes)
            continue
        train = df[df["kind"] == "train"].sort_values("step")
        if len(train):
            loss = train["loss"].to_numpy(float)
            top.plot(train["step"], loss, color="0.8", lw=0.8)
            k = max(1, min(window, len(loss) // 5 or 1))
            smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
            top.plot(train["step"].to_numpy()[k - 1:], smooth, color="C0", lw=1.5, label=f"loss (mean of {k})")
            top.legend(fontsize=8)
        top.set_xlabel("step", fontsize=8)
        val = df[df["kind"] == "val"].sort_values("step")
        metrics = [c for c in val.columns if "@" in c and val[c].notna().any()]  # mma@3, auc@5/10/20
        for i, m in enumerate(metrics):
            bottom.plot(val["step"], val[m], marker="o", ms=3, color=f"C{i + 1}", label=m)
        bottom.set_xlabel("step", fontsize=8)
        bottom.set_ylabel("validation (held-out)", fontsize=8)
        if metrics:
            bottom.legend(fontsize=8)
        bottom.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m matchmill.evaluation.release.curves", description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("runs", nargs="+")
    args = p.parse_args(argv)
    print(plot_runs(args.out, args.runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
