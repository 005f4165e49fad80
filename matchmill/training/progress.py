"""Console progress of a training run, printed by the driver from the run's Parquet log.

Rank 0 flushes its log every ``train.log_every`` steps; this thread polls the log folder and
prints one line per new logged step window and per validation. The driver's console stays free
of Ray's own worker chatter (shown with ``--verbose``), and the same lines come out whether the
workers run on this machine or on a cluster.
"""

from __future__ import annotations

import io
import math
import threading
import time

import pyarrow.parquet as pq

from matchmill.manifests.storage import list_files, read_bytes

__all__ = ["ProgressPrinter", "format_progress"]

_BOOKKEEPING = ("kind", "step", "attempt", "time", "epoch", "lr", "samples_per_s", "skipped_images", "loss")


def format_progress(step: int, steps: int, loss: float, parts: dict[str, float], rate: float, eta_s: float,
                    skipped: int) -> str:
    """One console line: ``step 20/200  loss 0.5123  ap_loss 0.51 ...  3.2 samples/s  ETA 9m12s``."""
    shown = "  ".join(f"{k} {v:.4g}" for k, v in parts.items() if k in _SHOWN)
    eta = f"{int(eta_s // 60)}m{int(eta_s % 60):02d}s" if math.isfinite(eta_s) else "?"
    skip = f"  skipped images {skipped}" if skipped else ""
    return f"[train] step {step}/{steps}  loss {loss:.4f}  {shown}  {rate:.2f} samples/s  ETA {eta}{skip}"


_SHOWN = {"ap_loss", "pump_loss", "score_pos", "score_neg", "cls", "geo", "sampson_fine"}


class ProgressPrinter:
    """Polls ``<run>/log`` every ``interval`` s in a daemon thread; ``stop()`` prints what is left."""

    def __init__(self, run_url: str, steps: int, echo=print, interval: float = 1.0) -> None:
        self.folder = run_url.rstrip("/") + "/log"
        self.steps = int(steps)
        self.echo = echo
        self.interval = float(interval)
        self._seen = set(list_files(self.folder))  # parts of earlier attempts are not reprinted
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.time()
        self._first_step: int | None = None

    def __enter__(self) -> "ProgressPrinter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.poll()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - progress output never breaks training
                continue

    def poll(self) -> None:
        for url in list_files(self.folder):
            if url in self._seen:
                continue
            self._seen.add(url)
            rows = pq.read_table(io.BytesIO(read_bytes(url))).to_pylist()
            for row in rows:
                self._print(row)

    def _print(self, row: dict) -> None:
        finite = {k: v for k, v in row.items() if k not in _BOOKKEEPING and isinstance(v, float) and math.isfinite(v)}
        step = int(row["step"])
        if row["kind"] == "val":
            self.echo(f"[val] step {step} epoch {int(row.get('epoch') or 0)}  "
                      + "  ".join(f"{k} {v:.4g}" for k, v in sorted(finite.items())))
            return
        rate = row.get("samples_per_s")
        if rate is None or not math.isfinite(rate):
            return  # a step inside a window: only the window's last step is printed
        if self._first_step is None:
            self._first_step, self._start = step, row["time"]
        done = max(step - self._first_step, 0)
        eta = (self.steps - step) * (row["time"] - self._start) / done if done else float("nan")
        skipped = int(row.get("skipped_images") or 0)
        self.echo(format_progress(step, self.steps, float(row["loss"]), finite, float(rate), eta, skipped))
