"""``matchmill compare RUN...``: every metric of several runs side by side (what ``make demo`` prints
last), counts as integers, fractions in percent, ``-`` where a run lacks a metric."""

from __future__ import annotations

from matchmill.cli import main
from matchmill.pipeline.compare import compare_runs, compare_table, format_metric

from tests.helpers.written_runs import write_summary


def test_metrics_of_runs_in_columns_fractions_in_percent(tmp_path, capsys):
    a = write_summary(tmp_path, "demo", {"num_pairs": 40.0, "auc@5": 0.25, "auc@10": 0.5, "auc@20": 0.75})
    b = write_summary(tmp_path, "demo-learned", {"auc@5": 0.125, "auc@10": 0.0625, "auc@20": 0.5, "num_pairs": 40.0})
    text = compare_runs([a, b])
    lines = text.splitlines()
    assert "demo" in lines[0] and "demo-learned" in lines[0]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert list(rows)[:3] == ["auc@5", "auc@10", "auc@20"]
    assert rows["auc@10"] == ["50.00", "6.25"] and rows["num_pairs"] == ["40", "40"]
    assert lines[-1] == "(auc: percent)"
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
    url = write_summary(tmp_path, "demo-learned", {"auc@10": 0.5})
    for spec in STAGES:
        if spec.name in ("extract", "propose", "refine"):
            write_commit(url, CommitInfo(spec.name, spec.manifest, "h", 1, 0,
                                         extra={"config": _jsonable(stage_config(conf, spec))}))
    assert "demo-learned: pump>ncnet>patch2pix" in compare_runs([url]).splitlines()[0]


def test_folder_runs_show_every_shared_metric_counts_as_integers(tmp_path, capsys):
    """Two folder runs (no ground truth): every metric of theirs, mean matches and inliers included."""
    a = write_summary(tmp_path, "photos-sift", {"num_pairs": 14.0, "num_failed": 0.0, "mean_matches": 220.2857,
                                                "mean_inliers": 150.7143})
    b = write_summary(tmp_path, "photos-pump", {"num_pairs": 14.0, "num_failed": 2.0, "mean_matches": 1503.5,
                                                "mean_inliers": 912.25, "num_verified": 11.0})
    assert main(["compare", a, b]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["photos-sift", "photos-pump"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows == {"num_pairs": ["14", "14"], "num_failed": ["0", "2"], "mean_matches": ["220.3", "1503.5"],
                    "mean_inliers": ["150.7", "912.2"], "num_verified": ["-", "11"]}
    assert [line.split()[0] for line in lines[1:]] == list(rows)  # the metrics stage's order


def test_metric_formats():
    assert [format_metric(k, v) for k, v in [("num_pairs", 3.0), ("num_pairs", 2.5), ("auc@5", 0.41531),
                                              ("mma@3", 1.0), ("homography_acc@3", 0.5), ("mean_inliers", 10.04),
                                              ("inlier_ratio", 0.123456), ("auc@10", float("nan")),
                                              ("num_failed", None)]] == \
        ["3", "2.5", "41.53", "100.00", "50.00", "10.0", "0.1235", "nan", "-"]
    text = compare_table(["a", "b"], [{"mma@3": 0.5, "auc@5": 0.25}, {"num_pairs": 3.0, "auc@20": 0.5}])
    assert [line.split()[0] for line in text.splitlines()[1:]] == ["auc@5", "auc@20", "mma@3", "num_pairs",
                                                                   "(auc,"]
    assert text.splitlines()[-1] == "(auc, mma: percent)"
