"""``matchmill report``: regression logic, exit codes, Markdown, plots and match drawings (no browser)."""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest

from matchmill.viz.draw import draw_matches
from matchmill.evaluation.benchmarks.history import append_history, history_rows
from matchmill.evaluation.report.figures import BenchmarkPictures, PairData, report_pictures
from matchmill.evaluation.report.pair_drawings import choose_pairs, draw_example_pairs
from matchmill.evaluation.report.plots import accuracy_curve, plot_homography_accuracy, plot_mma_curve, plot_pose_error_cdf
from matchmill.evaluation.report.render import fmt, fmt_delta, md_escape
from matchmill.evaluation.report.report import (
    build_report,
    compare_metric,
    direction_of,
    load_report,
    parse_tolerances,
    tolerance_for,
)
from matchmill.cli import main

from tests.helpers.report_history import build_history

UTC = _dt.timezone.utc


def _append_run(url: str, day: int, metrics: dict, method: str = "sift", benchmark: str = "hpatches",
                dataset: str = "/d", out_url: str = "file:///nonexistent-out") -> None:
    date = _dt.datetime(2025, 1, day, tzinfo=UTC)
    append_history(url, history_rows(run_id=f"run-{day}", date=date, benchmark=benchmark, dataset=dataset,
                                     out_url=out_url, method=method, metrics=metrics, num_pairs=10,
                                     config_hash="c", model_hashes={}))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return build_history(tmp_path_factory.mktemp("report_history"))


# ------------------------------------------------------------------------------ regression rule


def test_drop_beyond_tolerance_is_flagged_within_is_not():
    assert compare_metric("mma@3", 0.80, 0.82, 0.01, "higher").regressed
    assert not compare_metric("mma@3", 0.815, 0.82, 0.01, "higher").regressed
    assert not compare_metric("mma@3", 0.81, 0.82, 0.01, "higher").regressed  # exactly the tolerance


def test_improvement_is_not_flagged_and_lower_is_better_rises_are():
    assert not compare_metric("auc@10", 0.9, 0.5, 0.01, "higher").regressed
    assert not compare_metric("num_failed", 0, 3, 0.0, "lower").regressed
    rose = compare_metric("num_failed", 2, 0, 0.0, "lower")
    assert rose.regressed and "rose by 2" in rose.reason
    assert not compare_metric("num_pairs", 5, 100, 0.0, "info").regressed


def test_missing_metric_in_latest_run_is_flagged():
    for latest in (None, float("nan")):
        c = compare_metric("homography_acc@3", latest, 0.7, 0.01, "higher")
        assert c.regressed and c.reason == "missing in the latest run" and c.delta is None
    assert not compare_metric("homography_acc@3", 0.7, None, 0.01, "higher").regressed  # new metric


def test_tolerances_by_longest_prefix_and_cli_specs():
    table = parse_tolerances(["mma=0.05", "auc_fdegensac=0.2"])
    assert tolerance_for("mma@3", table) == 0.05
    assert tolerance_for("auc_fdegensac@5", table) == 0.2
    assert tolerance_for("auc@5", table) == 0.01
    assert tolerance_for("num_matches_mean", table) == 5.0
    assert tolerance_for("viewpoint/mma@3", table) == 0.01  # no prefix: the '' default
    assert set(parse_tolerances(["0.3"]).values()) == {0.3}
    assert parse_tolerances(["0.3", "mma=0.1"])["mma"] == 0.1
    for bad in ("x", "mma=", "=0.1", "-1", "mma=nan"):
        with pytest.raises(ValueError, match="tolerance"):
            parse_tolerances([bad])
    assert direction_of("num_failed") == "lower" and direction_of("mean_corner_error") == "lower"
    assert direction_of("num_pairs") == "info" and direction_of("mma@1") == "higher"


def test_report_compares_latest_with_the_run_just_before(tmp_path):
    url = f"file://{tmp_path}/history"
    _append_run(url, 1, {"mma@3": 0.2, "auc@5": 0.5})
    _append_run(url, 2, {"mma@3": 0.9, "auc@5": 0.5})
    _append_run(url, 3, {"mma@3": 0.85})  # dropped vs day 2 (not vs day 1); auc@5 vanished
    _append_run(url, 2, {"mma@3": 0.1}, method="orb")  # another method: its own single run
    report = load_report(url)
    sift = next(m for m in report.methods if m.method == "sift")
    assert (sift.latest.run_id, sift.previous.run_id) == ("run-3", "run-2")
    flags = {c.metric: c for c in sift.regressions}
    assert set(flags) == {"mma@3", "auc@5"}
    assert math.isclose(flags["mma@3"].delta, -0.05)
    orb = next(m for m in report.methods if m.method == "orb")
    assert orb.previous is None and orb.regressions == []
    assert {(m.method, c.metric) for m, c in report.regressions} == {("sift", "mma@3"), ("sift", "auc@5")}
    loose = load_report(url, parse_tolerances(["mma=0.1"]))
    assert [c.metric for m, c in loose.regressions] == ["auc@5"]


def test_whole_method_failure_is_a_regression_and_recovery_is_not(tmp_path):
    url = f"file://{tmp_path}/history"
    _append_run(url, 1, {"mma@3": 0.5})
    _append_run(url, 2, {"method_failed": 1.0})
    flagged = {c.metric for _, c in load_report(url).regressions}
    assert flagged == {"mma@3", "method_failed"}
    _append_run(url, 3, {"mma@3": 0.5})
    assert load_report(url).regressions == []


def test_empty_history_is_an_error(tmp_path):
    from matchmill.evaluation.benchmarks.history import HISTORY_SCHEMA
    from matchmill.manifests.storage import ManifestError

    with pytest.raises(ManifestError, match="empty or does not exist"):
        build_report(HISTORY_SCHEMA.empty_table(), history_url="file:///h")


# ------------------------------------------------------------------------------ the command


def test_cli_exit_codes_and_outputs(synthetic, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", synthetic.history_url, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "REGRESSION hpatches" in printed and " sift mma@1:" in printed
    args = ["report", synthetic.history_url, "--out", str(out), "--fail-on-regression", "--pairs-to-draw", "0"]
    assert main(args) == 1
    report = load_report(synthetic.history_url)
    assert {m.method for m, _ in report.regressions} == {"sift"}  # the noisy method only
    assert not [c for m, c in report.regressions if m.benchmark == "pose"]  # pose improved
    pose = next(m for m in report.methods if m.benchmark == "pose")
    assert all(c.delta > 0 for c in pose.metrics)


def test_markdown_has_tables_pictures_and_missing_notes(synthetic, tmp_path):
    out = tmp_path / "report"
    assert main(["report", synthetic.history_url, "--out", str(out), "--pairs-to-draw", "2"]) == 0
    md = (out / "report.md").read_text()
    assert "| benchmark | dataset | method | metric | previous | latest | delta | why |" in md
    assert "| metric | orb | sift |" in md
    sift = next(m for m in load_report(synthetic.history_url).methods if m.method == "sift")
    mma1 = next(c for c in sift.metrics if c.metric == "mma@1")
    assert mma1.regressed and mma1.previous - mma1.latest > 0.1  # 2.5 px of noise ruins 1 px accuracy
    assert (f"| mma@1 | {fmt(mma1.previous)} | {fmt(mma1.latest)} | {fmt_delta(mma1)} | 0.01 | "
            f"REGRESSION: {mma1.reason} |") in md
    links = [line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    kinds = {name.rsplit("_", 1)[-1] for name in links}
    assert {"mma.png", "accuracy.png", "pair0.png", "pair1.png"} <= kinds and "pair2.png" not in kinds
    for name in links:
        image = cv2.imread(str(out / name))
        assert image is not None and image.shape[0] > 100 and image.std() > 5, name
    # the latest pose run's OUT folder was never written: the tables stay, the notes say why
    pose = next(m for m in load_report(synthetic.history_url).methods if m.benchmark == "pose")
    assert f"| auc@5 | {fmt(pose.value('auc@5'))} |" in md and pose.previous is not None
    notes = [line for line in md.splitlines() if line.startswith("> Missing:")]
    expected = (f"Per-pair curves and matches of sift: {synthetic.pose_out_urls[1]}/sift/pairs.parquet not found "
                "(bench OUT folder moved or deleted?)")
    assert [n for n in notes if "pose1/sift/pairs.parquet" in n] == [f"> Missing: {md_escape(expected)}"]


def test_report_of_a_single_run(tmp_path, capsys):
    url = f"file://{tmp_path}/history"
    _append_run(url, 1, {"auc@5": 0.4, "auc@10": 0.6}, benchmark="pose")
    assert main(["report", url, "--out", str(tmp_path / "r"), "--fail-on-regression"]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "**No regression**" in md and "(no previous run)" in md and "| auc@10 | — | 0.6000 |" in md
    assert "0 regression(s) in 1 method run(s)" in capsys.readouterr().out


def test_missing_or_unreadable_history_exits_2_with_one_line(tmp_path, capsys):
    assert main(["report", f"file://{tmp_path}/nothing", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "empty or does not exist" in err and "nothing" in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "part-1.parquet").write_bytes(b"not parquet")
    assert main(["report", f"file://{tmp_path}/bad", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "part-1.parquet" in err and "unreadable" in err
    with pytest.raises(SystemExit) as exc:
        main(["report", f"file://{tmp_path}/bad", "--out", str(tmp_path / "r"), "--tolerance", "mma=oops"])
    assert exc.value.code == 2


# ------------------------------------------------------------------------------ pictures


def _colour(rgb: np.ndarray) -> str:
    """"green" / "red" when that channel dominates (anti-aliased lines blend a little), else "gray"."""
    r, g, b = (int(v) for v in rgb)
    if g > r + 100 and g > b + 100:
        return "green"
    if r > g + 100 and r > b + 100:
        return "red"
    return "gray"


def test_draw_matches_colours_and_shape_checks(tmp_path):
    image0 = np.full((60, 80, 3), 90, np.uint8)
    image1 = np.full((50, 70), 90, np.uint8)  # grayscale is accepted
    matches = np.array([[10, 10, 10, 40], [70, 50, 60, 10]], np.float64)
    inliers = np.array([True, False])
    canvas = draw_matches(image0, image1, matches, inliers, str(tmp_path / "m.png"), gap=8)
    assert canvas.shape == (60, 80 + 8 + 70, 3)
    written = cv2.cvtColor(cv2.imread(str(tmp_path / "m.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(written, canvas)
    # midpoints of the two lines: (10,10)->(98,40) inlier, (70,50)->(148,10) outlier
    assert _colour(canvas[25, 54]) == "green" and _colour(canvas[30, 109]) == "red"
    assert _colour(canvas[5, 40]) == "gray"  # away from the lines
    assert draw_matches(image0, image1, np.repeat(matches, 50, axis=0), max_lines=7).shape == canvas.shape
    with pytest.raises(ValueError, match=r"matches must have shape \(N, 4\)"):
        draw_matches(image0, image1, np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"inliers must have shape \(2,\)"):
        draw_matches(image0, image1, matches, np.array([True]))
    with pytest.raises(ValueError, match="image0 must be uint8"):
        draw_matches(image0.astype(np.float32), image1, matches)
    with pytest.raises(ValueError, match="nan or inf"):
        draw_matches(image0, image1, np.array([[1, 2, np.nan, 4]]))


def test_draw_matches_downscales_coordinates_with_the_image():
    image = np.zeros((200, 400, 3), np.uint8)
    canvas = draw_matches(image, image, np.array([[100.0, 100.0, 300.0, 100.0]]), np.array([True]), max_side=200, gap=0)
    assert canvas.shape == (100, 400, 3)
    assert _colour(canvas[50, 150]) == "green"  # (50, 50) -> (250, 50) after halving: midpoint x = 150
    assert _colour(canvas[80, 150]) == "gray"


def test_accuracy_curve_counts_failures_as_wrong():
    errors = [0.5, 2.0, math.inf, float("nan")]
    np.testing.assert_allclose(accuracy_curve(errors, [1, 3, 100]), [0.25, 0.5, 0.5])
    with pytest.raises(ValueError, match="empty"):
        accuracy_curve([], [1])


def test_plots_write_pngs_and_reject_bad_series(tmp_path):
    paths = [
        plot_mma_curve({"a": np.linspace(0.2, 0.9, 10)}, str(tmp_path / "mma.png")),
        plot_homography_accuracy({"a": [0.5, 4.0, math.inf]}, str(tmp_path / "h.png")),
        plot_pose_error_cdf({"a": [1.0, 7.0, math.inf], "b": [3.0]}, str(tmp_path / "p.png")),
    ]
    for path in paths:
        image = cv2.imread(path)
        assert image.shape == (400, 640, 3) and image.std() > 10
    with pytest.raises(ValueError, match="method 'a' has 3 values, expected 10"):
        plot_mma_curve({"a": [0.1, 0.2, 0.3]}, str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="no method"):
        plot_pose_error_cdf({}, str(tmp_path / "x.png"))
    assert not Path(tmp_path / "x.png").exists()


def test_example_pairs_are_shared_by_methods_and_read_inline_matches(tmp_path):
    assert choose_pairs([["d", "a", "c", "b", "e"], ["a", "c", "e", "x"]], 2) == ["a", "e"]
    assert choose_pairs([["a", "b"], ["x"]], 5) == ["a", "b"]  # nothing shared: the first method's
    assert choose_pairs([["a"]], 0) == []

    image = np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    url = f"file://{tmp_path}/history"
    _append_run(url, 1, {"mma@1": 0.5}, method="tuned", out_url=f"file://{tmp_path}/out")
    method = load_report(url).methods[0]
    table = pa.table({"pair_id": ["p"], "path0": [str(tmp_path / "a.png")], "path1": [str(tmp_path / "a.png")],
                      "matches": [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]], "inliers": [[True, False]],
                      "match_threshold": [0.3]})
    out = BenchmarkPictures()
    conf = {"pairs_to_draw": 3, "max_lines": 10, "max_side": None}
    draw_example_pairs([method], {"tuned": PairData(table, "t")}, str(tmp_path), "s", conf, out)
    assert [p.caption for p in out.matches] == ["2 matches, 1 inliers (green), 1 outliers (red)"]
    assert cv2.imread(str(tmp_path / out.matches[0].file)).shape == (40, 108, 3)
    out = BenchmarkPictures()
    draw_example_pairs([method], {"tuned": PairData(table.drop_columns(["matches", "inliers"]), "t")},
                       str(tmp_path), "s", conf, out)
    assert out.matches == [] and "threshold-tuned" in out.missing[0]
    # no OUT folder at all: one note for the method, the MMA curve still drawn from the history
    pictures = report_pictures(load_report(url), str(tmp_path / "r"))[("hpatches", "/d")]
    assert [p.kind for p in pictures.curves] == ["mma"]
    assert len(pictures.missing) == 1 and "Per-pair curves and matches of tuned" in pictures.missing[0]
