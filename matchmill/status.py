"""``matchmill status`` of any run: a pipeline run's stages (:mod:`matchmill.pipeline.status`) or a
training run's steps and checkpoints (:mod:`matchmill.training.status`). It sits at the top of the
import graph because it reads both kinds of run (the pipeline never imports training)."""

from __future__ import annotations

from typing import Any

from matchmill.pipeline.status import format_run_state, run_state
from matchmill.training.status import is_training_run, training_status


def status_data(run_url: str) -> dict[str, Any]:
    """The run's state: :func:`matchmill.pipeline.status.run_state`'s dict plus ``text``, or
    ``{"url", "kind": "training", "text"}`` for a training run.

    Raises:
        StorageError: the run does not exist.
    """
    if is_training_run(run_url):
        return {"url": run_url, "kind": "training", "text": training_status(run_url)}
    state = run_state(run_url)
    return {**state, "text": format_run_state(state)}


def status_text(run_url: str) -> str:
    """What ``matchmill status RUN`` prints."""
    return status_data(run_url)["text"]
