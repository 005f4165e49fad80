"""Patch2Pix pixel targets (matchmill/training/patch2pix_pixel_loss.py) and ``patch2pix.loss`` in the task."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from matchmill.config import ConfigError
from matchmill.datasets.demo.oracle import HomographyOracle
from matchmill.training.config import load_train_config
from matchmill.training.patch2pix_pixel_loss import pixel_loss

from tests.helpers.train_fixtures import demo_pairs_manifest, rows_manifest, tiny_overrides

SHIFT = np.array([[1.0, 0.0, 5.0], [0.0, 1.0, -3.0], [0.0, 0.0, 1.0]])  # B = A + (5, -3)
ORACLE = HomographyOracle(SHIFT, (64, 64), (64, 64))


def _inputs() -> torch.Tensor:
    """(6, 4) anchors: B points 2..4 px from the truth; the last one's A point maps outside B."""
    a = torch.tensor([[10.0, 10.0], [20.0, 30.0], [40.0, 12.0], [30.0, 40.0], [15.0, 50.0], [62.0, 20.0]])
    b = a + torch.tensor([5.0, -3.0]) + torch.tensor([[2.0, 1.0], [-3.0, 0.0], [0.0, 4.0], [1.0, -2.0], [2.0, 2.0], [0.0, 0.0]])
    return torch.cat([a, b], 1)


def _pred(mid: torch.Tensor, fine: torch.Tensor, conf_mid=None, conf_fine=None) -> dict:
    n = mid.shape[0]
    return {"mid": mid.clone().requires_grad_(True), "fine": fine.clone().requires_grad_(True),
            "mid_conf": (torch.full((n,), 0.5) if conf_mid is None else conf_mid).requires_grad_(True),
            "fine_conf": (torch.full((n,), 0.5) if conf_fine is None else conf_fine).requires_grad_(True)}


def _truth(inputs: torch.Tensor) -> torch.Tensor:
    return torch.cat([inputs[:, :2], inputs[:, :2] + torch.tensor([5.0, -3.0])], 1)


def test_outputs_on_the_true_match_score_lower_than_outputs_off_it():
    inputs = _inputs()
    right = pixel_loss(_pred(_truth(inputs), _truth(inputs)), inputs, ORACLE)
    wrong = _truth(inputs)
    wrong[:, 2:] += 3.0  # B points 4.2 px off the truth
    off = pixel_loss(_pred(wrong, wrong), inputs, ORACLE)
    assert float(right["reg"].detach()) < 1e-6 < float(off["reg"].detach())
    assert right["err_mid"] == 0.0 and off["err_mid"] > 3.0
    assert right["n_truth"] == 5 and right["n_reg_mid"] == 5  # all true matches within the 16 px window
    assert right["valid"] and off["valid"]


def test_confidence_target_is_the_true_error():
    inputs = _inputs()  # input errors: 2.2, 3, 4, 2.2, 2.8 px (all < 7: correct for mid)
    mid = _truth(inputs)
    mid[:2, 2:] += 10.0  # two mid outputs 14 px off: wrong for the fine stage's label
    good = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 0.5])
    bad = 1.0 - good
    bad[5] = 0.5
    low = pixel_loss(_pred(mid, mid, conf_fine=good), inputs, ORACLE)
    high = pixel_loss(_pred(mid, mid, conf_fine=bad.clamp(1e-4, 1 - 1e-4)), inputs, ORACLE)
    assert float(low["cls"].detach()) < float(high["cls"].detach())


def test_anchors_without_truth_or_outside_the_window_do_not_contribute():
    inputs = _inputs()
    inputs[0, 2:] += 20.0  # true match now 22 px away: outside the mid window
    pred = _pred(_truth(inputs) + 1.0, _truth(inputs) + 1.0)
    out = pixel_loss(pred, inputs, ORACLE)
    (out["reg_mid"]).backward()
    grad = pred["mid"].grad
    assert float(grad[0].abs().max()) == 0.0 and float(grad[5].abs().max()) == 0.0  # outside window / not visible
    assert float(grad[1:5].abs().min()) > 0
    assert out["n_reg_mid"] == 4


def test_shapes_are_checked():
    inputs = _inputs()
    with pytest.raises(ValueError, match=r"pred\['mid'\] must have shape \(6, 4\)"):
        pixel_loss(_pred(_truth(inputs)[:3], _truth(inputs)), inputs, ORACLE)
    with pytest.raises(ValueError, match="inputs must have shape"):
        pixel_loss(_pred(_truth(inputs), _truth(inputs)), inputs[:, :2], ORACLE)


@pytest.fixture(scope="module")
def pairs_url(demo_root, tmp_path_factory):
    return demo_pairs_manifest(demo_root, tmp_path_factory.mktemp("pix-manifests") / "pairs.parquet")


def test_config_names_a_bad_loss_and_missing_depth(pairs_url, tmp_path):
    with pytest.raises(ConfigError, match="patch2pix.loss: expected one of epipolar | pixel | both, got 'l1'"):
        load_train_config("patch2pix", None, [f"data.pairs={pairs_url}", "patch2pix.loss=l1"])
    with pytest.raises(ConfigError, match="patch2pix.pixel_thresholds"):
        load_train_config("patch2pix", None, [f"data.pairs={pairs_url}", "patch2pix.pixel_thresholds=[3]"])
    rows = pq.read_table(pairs_url[len("file://"):]).to_pylist()
    for r in rows:
        r["path1"] = r["path1"].replace("/images/", "/elsewhere/")
    url = rows_manifest(rows, tmp_path / "no-depth.parquet")
    with pytest.raises(ConfigError, match="patch2pix.loss: 'both' needs pairs with ground truth"):
        load_train_config("patch2pix", None, [f"data.pairs={url}", "patch2pix.loss=both"])


def test_a_few_training_steps_lower_the_pixel_loss(pairs_url, tmp_path):
    """``both`` trains (pixel + epipolar parts); ``pixel`` alone has no epipolar part. One training
    run (the costly part) serves both modes."""
    from matchmill.training.patch2pix_task import Patch2PixTask

    def task_for(mode: str) -> Patch2PixTask:
        conf = load_train_config("patch2pix", None, tiny_overrides("patch2pix", tmp_path, pairs_url)
                                 + [f"patch2pix.loss={mode}", "patch2pix.lr=0.002", "patch2pix.ptmax=32"])
        task = Patch2PixTask(conf, torch.device("cpu"))
        task.setup_data()
        return task

    task = task_for("both")
    net = task.build_net()
    opt = task.make_optimizer(net)
    batch = task.local_batch(1, [0, 1])
    assert all(ex["oracle"] is not None for ex in batch.examples)
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    first = None
    for _ in range(6):
        loss, parts = task.loss(net, batch)
        first = parts["pix"] if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, parts = task.loss(net, batch)
    assert parts["pix"] < first
    assert "geo" in parts
    moved = {n.split(".")[0] for n, p in net.named_parameters() if not torch.equal(p.detach(), params[n])}
    assert {"mid_regressor", "fine_regressor"} <= moved
    with torch.no_grad():
        _, pixel_parts = task_for("pixel").loss(net, batch)
    assert "pix" in pixel_parts and "geo" not in pixel_parts
