"""``matchmill compare RUN...``: the metrics of several runs side by side (what ``make demo`` prints last)."""

from __future__ import annotations

import json

from matchmill.cli import main
from matchmill.pipeline.status import compare_runs


def _run(tmp_path, name, summary):
    folder = tmp_path / name / "metrics"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    return f"file://{tmp_path / name}"


def test_metrics_of_runs_in_columns_fractions_in_percent(tmp_path, capsys):
    a = _run(tmp_path, "demo", {"auc@5": 0.25, "auc@10": 0.5, "auc@20": 0.75, "num_pairs": 40.0})
    b = _run(tmp_path, "demo-learned", {"auc@5": 0.125, "auc@10": 0.0625, "auc@20": 0.5, "num_pairs": 40.0})
    text = compare_runs([a, b])
    lines = text.splitlines()
    assert "demo" in lines[0] and "demo-learned" in lines[0]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert list(rows)[:3] == ["auc@5", "auc@10", "auc@20"]
    assert rows["auc@10"] == ["50.00", "6.25"] and rows["num_pairs"] == ["40.00", "40.00"]
    missing = f"file://{tmp_path / 'not-run'}"
    assert main(["compare", a, missing]) == 0
    out = capsys.readouterr().out
    assert f"no metrics yet: {missing}" in out and "-" in out.splitlines()[1]


def test_column_names_the_chain_from_the_stage_commits(tmp_path, demo_root):
    """The columns name each run's methods, read from commit markers written as the runner writes them."""
    from matchmill.manifests.commit import CommitInfo, write_commit
    from matchmill.pipeline.config import load_config
    from matchmill.pipeline.graph import STAGES
    from matchmill.pipeline.runner import _jsonable, stage_config

    from tests.helpers.paths import DEMO_CONFIG

    conf = load_config(DEMO_CONFIG.parent / "demo-learned.yaml", [f"data.root={demo_root}"])
    url = _run(tmp_path, "demo-learned", {"auc@10": 0.5})
    for spec in STAGES:
        if spec.name in ("extract", "propose", "refine"):
            write_commit(url, CommitInfo(spec.name, spec.manifest, "h", 1, 0,
                                         extra={"config": _jsonable(stage_config(conf, spec))}))
    assert "demo-learned: pump>ncnet>patch2pix" in compare_runs([url]).splitlines()[0]
