"""Patch2Pix training helpers on the demo scene (CPU, seeded, well under a minute).

The backbone and NCNet are random-initialised (no weights ship with the repository). An
untrained NCNet gives a handful of mutual proposals (4 per pair here) that are essentially
random, so the training examples ALSO get perturbed ground-truth proposals: depth-map pixels of
image 0 projected into image 1, with uniform noise of +-6 px on the image-1 side. The union is
sampled to ``ptmax`` as in training. This tests that the loss and the optimisation drive the
regressors, not that an untrained proposal stage is useful.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from matchmill.datasets.demo import ensure_demo_scene
from matchmill.datasets.image_io import load_image
from matchmill.datasets.megadepth import load_depth, select_megadepth_pairs
from matchmill.geometry.epipolar import fundamental_from_pose, sampson_distance_sq
from matchmill.models.ncnet import NCNet
from matchmill.models.patch2pix import Patch2Pix, cpu_sized, sampson_distance_sq_torch
from matchmill.models.patch2pix_training import (
    SOURCE_EXTRA,
    SOURCE_NCNET,
    depth_correspondences,
    evaluate_examples,
    make_training_example,
    recalibrate_batchnorm,
    sample_proposals,
    scale_intrinsics,
    training_step,
)
from matchmill.models.resnet import ResNet34Pyramid

PTMAX = 8  # 8 proposals -> 64 anchors per pair (the reference uses 400 -> 3200; CPU budget)
STEPS = 25
NOISE = 6.0  # px, uniform, on the image-1 side of the ground-truth proposals


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> list[dict]:
    root = tmp_path_factory.getbasetemp() / "matchmill_demo"  # same folder as conftest's demo_root
    ensure_demo_scene(root, seed=0)
    rows = select_megadepth_pairs(root, {"max_pairs_per_scene": 4, "symmetric": False})
    rows = [r for r in rows if r["T_0to1"] is not None]
    assert len(rows) >= 2
    return rows[:2]


def _depth(path: str) -> np.ndarray:
    p = Path(path)
    return load_depth(p.parent.parent / "depths" / f"{p.stem}.h5")


def _gt(row: dict, noise: float, seed: int) -> np.ndarray:
    return depth_correspondences(_depth(row["path0"]), row["K0"], row["K1"], row["T_0to1"],
                                 _depth(row["path1"]), step=8, noise=noise, seed=seed)


@pytest.fixture(scope="module")
def nets():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    return ResNet34Pyramid().eval(), NCNet().eval()


def _example(row: dict, nets, seed: int, extra: np.ndarray | None, ptmax: int = PTMAX) -> dict:
    backbone, ncnet = nets
    return make_training_example(
        load_image(row["path0"]), load_image(row["path1"]), row["K0"], row["K1"], row["T_0to1"],
        backbone, ncnet, ptmax=ptmax, seed=seed, crop0=row["crop0"], crop1=row["crop1"], extra_proposals=extra,
    )


@pytest.fixture(scope="module")
def examples(pairs, nets) -> list[dict]:
    return [_example(row, nets, seed=i, extra=_gt(row, NOISE, seed=i)) for i, row in enumerate(pairs)]


def test_scaled_intrinsics_use_the_pixel_centre_convention():
    K = np.array([[200.0, 0, 159.5], [0, 210.0, 119.5], [0, 0, 1]])
    Ks = scale_intrinsics(K.reshape(-1), (0.5, 0.25))
    assert np.allclose(np.diag(Ks), [100.0, 52.5, 1.0])
    # the image centre stays the image centre: (320 - 1) / 2 -> (160 - 1) / 2, (240 - 1) / 2 -> (60 - 1) / 2
    assert np.allclose(Ks[:2, 2], [79.5, 29.5])


def test_sample_proposals_truncates_tiles_and_handles_none():
    rng = np.random.default_rng(0)
    idx = sample_proposals(10, 4, rng)
    assert idx.shape == (4,) and len(set(idx.tolist())) == 4
    tiled = sample_proposals(3, 8, np.random.default_rng(1))
    assert tiled.shape == (8,) and sorted(np.bincount(tiled, minlength=3).tolist()) == [2, 3, 3]
    assert (tiled[:3] == tiled[3:6]).all()  # cyclic repetition of one shuffle
    assert sample_proposals(0, 8, rng).shape == (0,)


def test_example_frame_shapes_and_epipolar_geometry(pairs, nets, examples):
    row, ex = pairs[0], examples[0]
    assert ex["valid"] and ex["size0"] == (304, 208)  # crop 318x212 floored to multiples of 16
    assert [tuple(f.shape) for f in ex["feats0"]] == [(1, 3, 208, 304), (1, 64, 104, 152), (1, 64, 52, 76),
                                                       (1, 128, 26, 38), (1, 256, 26, 38)]
    assert tuple(ex["proposals"].shape) == (PTMAX, 4) and ex["proposals"].dtype == torch.float32
    assert ex["n_ncnet"] >= 1 and ex["n_extra"] > 100
    nc = ex["proposals"][ex["proposal_source"] == SOURCE_NCNET]
    assert ((nc - 4) % 8 == 0).all()  # NCNet proposals sit at 8x8 cell centres of the network frame
    # noise-free ground truth is exactly epipolar in the original frame and, after crop + resize
    # with K' = A K, in the network frame: this pins the pixel-centre convention of the resize
    gt = _gt(row, 0.0, 0)
    F0 = fundamental_from_pose(np.reshape(row["K0"], (3, 3)), np.reshape(row["K1"], (3, 3)),
                               np.reshape(row["T_0to1"], (4, 4)))
    assert sampson_distance_sq(F0, gt[:, :2], gt[:, 2:]).max() < 1e-12
    clean = _example(row, nets, seed=0, extra=gt, ptmax=64)
    p = clean["proposals"][clean["proposal_source"] == SOURCE_EXTRA]
    assert len(p) > 32
    assert float(sampson_distance_sq_torch(clean["F"], p[:, :2], p[:, 2:]).max()) < 1e-6
    # a 0.5 px principal-point error (corner convention) would show up clearly
    wrong = fundamental_from_pose(clean["K0"] + np.array([[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]]), clean["K1"],
                                  clean["T_0to1"])
    assert float(sampson_distance_sq_torch(torch.from_numpy(wrong), p[:, :2], p[:, 2:]).median()) > 1e-3


def test_training_reduces_loss_and_fine_sampson_error(examples):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = Patch2Pix(cpu_sized())
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    before_batch = evaluate_examples(model, examples, expand=True, batch_stats=True)
    before_eval = evaluate_examples(model, examples, expand=True)
    history = [training_step(model, optimizer, examples) for _ in range(STEPS)]
    assert all(h["stepped"] == 1.0 and h["n_pairs"] == 2.0 and h["n_anchors"] == 2 * 8 * PTMAX for h in history)
    losses = np.array([h["loss"] for h in history])
    assert np.isfinite(losses).all()
    first, last = losses[:5].mean(), losses[-5:].mean()
    assert last < 0.8 * first, f"loss did not drop enough: first 5 {first:.2f}, last 5 {last:.2f}"

    # held-in fine Sampson error (median px^2 over anchors already within 50 px^2), same anchors
    # before and after, with the pair's batch statistics (the function training optimises) ...
    after_batch = evaluate_examples(model, examples, expand=True, batch_stats=True)
    assert after_batch["n_near"] == before_batch["n_near"] > 0
    assert after_batch["sampson_fine"] < 0.5 * before_batch["sampson_fine"], (before_batch, after_batch)
    assert after_batch["sampson_fine"] < after_batch["sampson_in"]  # refined beyond the noisy inputs
    # ... and in eval mode once the BatchNorm running statistics are recomputed for the new weights
    assert recalibrate_batchnorm(model, examples) == 2
    after_eval = evaluate_examples(model, examples, expand=True)
    print(f"\nloss per step: {np.round(losses, 2).tolist()}\nfirst 5 mean {first:.2f}, last 5 mean {last:.2f}; "
          f"held-in fine Sampson median px^2 (batch stats) {before_batch['sampson_fine']:.2f} -> "
          f"{after_batch['sampson_fine']:.2f} (inputs {after_batch['sampson_in']:.2f}); eval mode "
          f"{before_eval['sampson_fine']:.2f} -> {after_eval['sampson_fine']:.2f} after BN recalibration")
    assert after_eval["sampson_fine"] < 0.5 * before_eval["sampson_fine"], (before_eval, after_eval)


def test_example_without_proposals_is_skipped(examples):
    torch.manual_seed(0)
    model = Patch2Pix(cpu_sized())
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    empty = {**examples[0], "proposals": torch.zeros((0, 4)), "proposal_source": torch.zeros(0, dtype=torch.long),
             "valid": False}
    before = [p.detach().clone() for p in model.parameters()]
    out = training_step(model, optimizer, [empty])
    assert out["stepped"] == 0.0 and out["n_pairs"] == 0.0 and np.isnan(out["loss"])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    mixed = training_step(model, optimizer, [empty, examples[1]])
    assert mixed["stepped"] == 1.0 and mixed["n_pairs"] == 1.0


def test_bad_inputs_are_refused(pairs, nets):
    row = pairs[0]
    image = load_image(row["path0"])
    backbone, ncnet = nets
    with pytest.raises(ValueError, match="ptmax"):
        make_training_example(image, image, row["K0"], row["K0"], np.eye(4), backbone, ncnet, ptmax=1)
    with pytest.raises(ValueError, match="uint8"):
        make_training_example(image.astype(np.float32), image, row["K0"], row["K0"], np.eye(4), backbone, ncnet)
    with pytest.raises(ValueError, match="multiple of 16"):
        make_training_example(image, image, row["K0"], row["K0"], np.eye(4), backbone, ncnet, size=(300, 200))
    with pytest.raises(ValueError, match="T_0to1"):
        make_training_example(image, image, row["K0"], row["K0"], np.eye(3), backbone, ncnet)
