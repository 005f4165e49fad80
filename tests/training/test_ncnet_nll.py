"""NCNet's true-cell NLL loss (matchmill/training/ncnet_losses.py) and ``ncnet.loss`` in the task."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch

from matchmill.config import ConfigError
from matchmill.models.ncnet import NCNet
from matchmill.training.config import load_train_config
from matchmill.training.ncnet_losses import true_cell_nll

from tests.helpers.train_fixtures import demo_pairs_manifest, rows_manifest, tiny_overrides

HA, WA, HB, WB = 3, 4, 3, 4


def _peaked(shift: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A (1, 1, 3, 4, 3, 4) volume peaked on B cell (y, x + shift) of each A cell (y, x); targets shift 0."""
    corr = torch.zeros(1, 1, HA, WA, HB, WB)
    a2b = torch.full((1, HA * WA), -1, dtype=torch.int64)
    b2a = torch.full((1, HB * WB), -1, dtype=torch.int64)
    for y in range(HA):
        for x in range(WA - 1):
            corr[0, 0, y, x, y, min(x + shift, WB - 1)] = 5.0
            a2b[0, y * WA + x] = y * WB + x
            b2a[0, y * WB + x] = y * WA + x
    return corr, a2b, b2a


def test_loss_is_lower_on_the_true_cells_than_one_cell_off():
    right, a2b, b2a = _peaked(0)
    off, _, _ = _peaked(1)
    loss_right, parts = true_cell_nll(right, a2b, b2a)
    loss_off, parts_off = true_cell_nll(off, a2b, b2a)
    assert float(loss_right) < float(loss_off) - 1.0
    assert parts["top1"] == 1.0 and parts_off["top1"] < 0.1  # (B cells without a peak argmax to A cell 0)
    assert parts["cells"] == 2 * HA * (WA - 1)


def test_cells_without_target_do_not_contribute():
    corr, a2b, b2a = _peaked(0)
    b2a[:] = -1  # only A -> B: B -> A softmaxes would mix A rows
    a2b[0, 5] = -1
    base, _ = true_cell_nll(corr, a2b, b2a)
    changed = corr.clone()
    changed[0, 0, 5 // WA, 5 % WA] = torch.randn(HB, WB) * 10
    changed.requires_grad_(True)
    loss, _ = true_cell_nll(changed, a2b, b2a)
    assert torch.allclose(loss, base)
    loss.backward()
    assert float(changed.grad[0, 0, 5 // WA, 5 % WA].abs().max()) == 0.0
    assert float(changed.grad.abs().sum()) > 0
    empty, parts = true_cell_nll(corr, torch.full_like(a2b, -1), torch.full_like(b2a, -1))
    assert float(empty) == 0.0 and parts["cells"] == 0


def test_shapes_are_checked_at_entry():
    corr, a2b, b2a = _peaked(0)
    with pytest.raises(ValueError, match="corr must have shape"):
        true_cell_nll(corr[0], a2b, b2a)
    with pytest.raises(ValueError, match=r"target_a2b must be an int64 tensor of shape \(1, 12\)"):
        true_cell_nll(corr, a2b[:, :5], b2a)
    with pytest.raises(ValueError, match="target_b2a values must be in"):
        true_cell_nll(corr, a2b, b2a + 100)
    with pytest.raises(ValueError, match="int64"):
        true_cell_nll(corr, a2b.int(), b2a)


def test_gradients_reach_the_nc_layers():
    torch.manual_seed(0)
    net = NCNet({})
    fa, fb = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)
    corr = net(fa, fb)["corr"]
    n = corr.shape[2] * corr.shape[3]
    target = torch.arange(n).roll(1).unsqueeze(0)
    loss, _ = true_cell_nll(corr, target, target)
    loss.backward()
    grads = [p.grad for p in net.nc.parameters()]
    assert grads and all(g is not None and float(g.abs().sum()) > 0 for g in grads)


@pytest.fixture(scope="module")
def pairs_url(demo_root, tmp_path_factory):
    return demo_pairs_manifest(demo_root, tmp_path_factory.mktemp("nll-manifests") / "pairs.parquet")


def test_config_names_a_bad_loss_and_missing_depth(pairs_url, tmp_path):
    with pytest.raises(ConfigError, match="ncnet.loss: expected one of weak | nll | weak\\+nll, got 'l2'"):
        load_train_config("ncnet", None, [f"data.pairs={pairs_url}", "ncnet.loss=l2"])
    rows = pq.read_table(pairs_url[len("file://"):]).to_pylist()
    for r in rows:  # same images, but where no depths/ folder sits next to them
        r["path0"] = r["path0"].replace("/images/", "/elsewhere/")
    url = rows_manifest(rows, tmp_path / "no-depth.parquet")
    with pytest.raises(ConfigError, match="ncnet.loss: 'nll' needs pairs with ground truth"):
        load_train_config("ncnet", None, [f"data.pairs={url}", "ncnet.loss=nll"])
    load_train_config("ncnet", None, [f"data.pairs={url}"])  # the weak loss needs no depth


@pytest.mark.parametrize("mode", ["nll", "weak+nll"])
def test_a_few_training_steps_lower_the_nll(pairs_url, tmp_path, mode):
    from matchmill.training.ncnet_task import NCNetTask

    conf = load_train_config("ncnet", None, tiny_overrides("ncnet", tmp_path, pairs_url) + [f"ncnet.loss={mode}", "ncnet.lr=0.005"])
    task = NCNetTask(conf, torch.device("cpu"))
    task.setup_data()
    net = task.build_net()
    opt = task.make_optimizer(net)
    batch = task.local_batch(1, [0, 1])
    assert tuple(batch.target_a2b.shape) == (2, 6 * 8) and int((batch.target_a2b >= 0).sum()) > 10
    first = None
    for _ in range(12):
        loss, parts = task.loss(net, batch)
        first = parts["nll_a2b"] + parts["nll_b2a"] if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, parts = task.loss(net, batch)
    assert parts["nll_a2b"] + parts["nll_b2a"] < first - 0.05
    assert ("score_neg" in parts) == (mode == "weak+nll")
    assert task.truth.num_skipped == 0
