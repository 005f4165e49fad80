"""``matchmill bench card``: the table builder, the MegaDepth pairs-file writer, and one tiny real run."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from matchmill.datasets.pairs_file import read_pairs_file
from matchmill.evaluation.release import model_card as mc
from matchmill.evaluation.release.card_datasets import DatasetAbsent, write_megadepth_pairs_file
from matchmill.evaluation.release.card_markdown import build_card_markdown
from matchmill.config import ConfigError

from tests.helpers.paths import shared_data


def _synthetic_card() -> dict:
    pose = {"auc@5": 0.25, "auc@10": 0.5, "auc@20": 0.75, "num_pairs": 4, "num_failed": 0}
    return {
        "methods": ["sift", "pump"],
        "params": {"random_init": True, "overrides": ["extract.max_keypoints=1024"]},
        "method_info": {"sift": {"chain": "extract=sift -> propose=mnn -> refine=identity", "weights": {}, "learned": False},
                        "pump": {"chain": "extract=pump -> propose=pump-pyramid -> refine=identity",
                                 "weights": {"extract.pump": "init-seed-0"}, "learned": True}},
        "datasets": [
            {"key": "demo-heldout", "title": "demo held-out", "benchmark": "pose", "kind": "pose", "status": "ok",
             "num_pairs": 4, "pairs_listed": 180, "resize": 320, "path": "/cache/demo", "out": "/o/demo-heldout",
             "methods": {"sift": {"status": "ok", "metrics": pose},
                         "pump": {"status": "ok", "metrics": {**pose, "auc@5": 0.0, "num_failed": 1}}}},
            {"key": "hpatches-v_wormhole", "title": "HPatches v_wormhole", "benchmark": "hpatches", "kind": "homography",
             "status": "ok", "num_pairs": 5, "pairs_listed": 5, "resize": 640, "path": "/d/hpatches/v_wormhole",
             "methods": {"sift": {"status": "ok", "metrics": {"homography_acc@1": 0.2, "homography_acc@3": 0.6,
                                                              "homography_acc@5": 0.8, "mma@3": 0.4512,
                                                              "num_pairs": 5, "num_failed": 0}},
                         "pump": {"status": "failed", "error": "RuntimeError: out of memory | in extract\nline 2"}}},
            {"key": "oxford-graf", "title": "Oxford graf", "benchmark": "oxford", "kind": "homography",
             "status": "absent", "error": "/d/oxford_graf is absent", "methods": {}},
            {"key": "kitti-seq00", "title": "KITTI seq 00", "benchmark": "pose", "kind": "pose", "status": "failed",
             "error": "ValueError: bad pairs file", "methods": {}},
        ],
        "cost": {"what": "CPU cost, measured in a child process", "methods": {
            "sift": {"status": "ok", "seconds_per_pair_median": 0.42, "seconds_first_pair": 0.5, "build_seconds": 0.01,
                     "stage_seconds_median": {"extract": 0.2, "propose": 0.01, "refine": 0.0, "verify": 0.2},
                     "peak_rss_mib": 123.4},
            "pump": {"status": "failed", "error": "FileNotFoundError: shipped:x is missing", "peak_rss_mib": 300.0}}},
    }


def test_card_table_has_a_column_per_dataset_and_reports_absent_and_failed_cells():
    md = build_card_markdown(_synthetic_card())
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| method | demo"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[0] == "method" and len(cells) == 5
    assert cells[1].startswith("demo held-out: AUC@5/10/20") and "[4 pairs, 320 px]" in cells[1]
    assert cells[2].startswith("HPatches v_wormhole: H acc @1/3/5 px, MMA@3") and "[5 pairs, 640 px]" in cells[2]
    assert cells[3].startswith("Oxford graf") and cells[4].startswith("KITTI seq 00")

    def row(label):
        line = next(line for line in lines if line.startswith(f"| `{label}` |") and "/" in line)
        return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip("|"))]  # an escaped pipe stays in its cell

    sift = row("sift")
    assert sift[1:] == ["25.0 / 50.0 / 75.0", "20.0 / 60.0 / 80.0, 45.1", "absent", "failed: ValueError: bad pairs file"]
    pump = row("pump (random init)")  # learned method of a --random-init card
    assert pump[1] == "0.0 / 50.0 / 75.0 (1/4 pairs failed)"
    assert pump[2].startswith("failed: RuntimeError: out of memory \\| in extract line 2")  # one line, pipe escaped
    assert pump[3] == "absent"

    cost_header = next(line for line in lines if line.startswith("| method | s / pair"))
    assert "peak RSS (MiB)" in cost_header
    cost_sift = next(line for line in lines if line.startswith("| `sift` | 0.420"))
    assert cost_sift.rstrip().endswith("| 123 |")
    assert any(line.startswith("| `pump (random init)` | failed: FileNotFoundError") for line in lines)
    assert "CPU cost, measured in a child process" in md
    assert "`extract.max_keypoints=1024`" in md and "Oxford graf (`oxford-graf`, oxford bench)" in md


def test_random_init_overrides_null_every_weights_key_of_the_presets():
    presets = {"a": {"extract.method": "pump", "extract.weights": "shipped:x", "refine.weights": "shipped:y"},
               "b": {"extract.method": "sift"}}
    assert mc.random_init_overrides(["a", "b"], presets) == ["a:extract.weights=null", "a:refine.weights=null"]


def test_megadepth_pairs_file_from_the_shared_pair(tmp_path):
    folder = shared_data("megadepth_pair")
    path = write_megadepth_pairs_file(folder, tmp_path / "inputs" / "pairs.txt")
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert len(lines) == 1 and len(lines[0].split()) == 2 + 2 + 9 + 9 + 16
    (row,) = read_pairs_file(path, folder)
    assert row["status"] == "ok" and row["image0"] == "img_0.jpg" and row["image1"] == "img_1.jpg"
    cams = json.loads((folder / "cameras_converted.json").read_text())
    np.testing.assert_allclose(np.reshape(row["K0"], (3, 3)), cams["img_0.jpg"]["K"])
    np.testing.assert_allclose(np.reshape(row["K1"], (3, 3)), cams["img_1.jpg"]["K"])
    expected = np.linalg.inv(np.array(cams["img_1.jpg"]["c2w"])) @ np.array(cams["img_0.jpg"]["c2w"])
    np.testing.assert_allclose(np.reshape(row["T_0to1"], (4, 4)), expected, atol=1e-6)


def test_megadepth_pairs_file_refuses_a_pose_inconsistent_with_the_cameras(tmp_path):
    wrong = np.eye(4)
    wrong[0, 3] = 1.0  # both cameras at the origin, yet a translation
    cams = {"a.jpg": {"K": np.eye(3).tolist(), "c2w": np.eye(4).tolist()},
            "b.jpg": {"K": np.eye(3).tolist(), "c2w": np.eye(4).tolist()}, "T_0to1": wrong.tolist()}
    (tmp_path / "cameras_converted.json").write_text(json.dumps(cams))
    with pytest.raises(ValueError, match="inv\\(c2w_1\\) @ c2w_0"):
        write_megadepth_pairs_file(tmp_path, tmp_path / "pairs.txt")
    with pytest.raises(DatasetAbsent):
        write_megadepth_pairs_file(tmp_path / "missing", tmp_path / "pairs.txt")


def test_card_refuses_an_out_folder_of_other_parameters(tmp_path):
    (tmp_path / "card.json").write_text(json.dumps({"params": {"quick": False, "max_pairs": None}}))
    req = mc.CardRequest(out=str(tmp_path), methods=["sift"], quick=True, history=None)
    with pytest.raises(ConfigError, match="other parameters.*quick"):
        mc.run_card(req, echo=lambda _: None)
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        mc.run_card(mc.CardRequest(out=str(tmp_path / "x"), methods=["nope"]), echo=lambda _: None)


@pytest.mark.ray
def test_card_end_to_end_on_the_demo_with_sift(ray_local, tmp_path, monkeypatch, capsys):
    from matchmill.cli import main

    monkeypatch.setenv("MATCHMILL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "card"
    code = main(["bench", "card", "--out", str(out), "--data", str(tmp_path / "no-data"), "--methods", "sift",
                 "--datasets", "demo-heldout,oxford-graf", "--demo-seeds", "0", "--max-pairs", "1",
                 "--cost-pairs", "1", "--history", "none"])
    printed = capsys.readouterr().out
    assert code == 0
    card = json.loads((out / "card.json").read_text())
    demo, oxford = card["datasets"]
    assert demo["status"] == "ok" and demo["num_pairs"] == 1 and demo["resize"] == 320
    sift = demo["methods"]["sift"]
    assert sift["status"] == "ok" and set(sift["metrics"]) >= {"auc@5", "auc@10", "auc@20", "num_failed"}
    assert 0 <= sift["metrics"]["auc@5"] <= sift["metrics"]["auc@20"] <= 1
    assert oxford["status"] == "absent"
    assert json.loads((out / "demo-heldout" / "summary.json").read_text())["sift"]["num_pairs"] == 1  # the bench's files
    cost = card["cost"]["methods"]["sift"]
    assert cost["status"] == "ok" and cost["pairs"] == 1 and cost["threads"] == 2
    assert cost["seconds_per_pair_median"] > 0 and 20 < cost["peak_rss_mib"] < 4096
    md = (out / "card.md").read_text()
    assert md in printed and "| `sift` |" in md and "| absent |" in md
