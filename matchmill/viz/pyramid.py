"""``matchmill viz pyramid``: the PUMP correlation pyramid for one pixel (PUMP supplementary, Figures D/E).

One row per pyramid level: image 1 with the query pixel and the level's receptive field (red square,
doubling each level), image 2 with the 3 best positions of the consolidated correlation map
(red, green, blue), and the map itself.
"""

from __future__ import annotations

import numpy as np
import torch

from matchmill.geometry.frames import resize_max as resize_long_side
from matchmill.geometry.frames import resize_to_multiple
from matchmill.methods.devices import load_state
from matchmill.models.pump.convmixer import DEFAULT_CONF, PumpConvMixer
from matchmill.models.pump.convmixer import cpu_sized as cpu_conf
from matchmill.models.pump.dense_match import pyramid_maps_for_pixel
from matchmill.models.pump.extract import dense_descriptors

TOP3_COLOURS = ("red", "lime", "blue")


def pump_net(weights: str | None = None, cpu_sized: bool = True, seed: int = 0) -> torch.nn.Module:
    """The ConvMixer used by ``extract.method=pump`` (seeded random init unless weights are given)."""
    torch.manual_seed(int(seed))
    net = PumpConvMixer(cpu_conf(DEFAULT_CONF) if cpu_sized else dict(DEFAULT_CONF)).eval()
    load_state(net, weights)
    return net


def prepare(image: np.ndarray, resize_max: int | None, multiple: int) -> np.ndarray:
    """Resize so the long side is <= ``resize_max``, then to a multiple of the net's stride."""
    small, _ = resize_long_side(image, resize_max)
    return resize_to_multiple(small, multiple, min_cells=1, what="the pyramid view")[0]


def pyramid_levels(net: torch.nn.Module, image1: np.ndarray, image2: np.ndarray, x: float, y: float,
                   conf: dict | None = None) -> list[dict]:
    """Per level: ``level``, ``patch_size`` (px), ``map`` (h_l, w_l), ``top3`` (3, 3) [x2, y2, score].

    ``image1``/``image2`` are (H, W, 3) uint8 already in the net's frame; (x, y) a pixel of image1.
    """
    h, w = image1.shape[:2]
    if not (0 <= x < w and 0 <= y < h):
        raise ValueError(f"pixel ({x}, {y}) is outside image 1 ({w}x{h} after resizing)")
    with torch.no_grad():
        (_, d1), = dense_descriptors(net, image1, [1.0])
        (_, d2), = dense_descriptors(net, image2, [1.0])
    return pyramid_maps_for_pixel(d1, d2, x, y, conf)


def draw_pyramid(image1: np.ndarray, image2: np.ndarray, x: float, y: float, levels: list[dict], out_png: str) -> None:
    """Write the figure (rows = levels; columns = image 1 + receptive field, image 2 + top-3, map)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if not levels:
        raise ValueError("the pyramid has no level for this pixel (images too small?)")
    fig, axes = plt.subplots(len(levels), 3, figsize=(11, 2.9 * len(levels)), squeeze=False)
    for row, lv in zip(axes, levels):
        size = float(lv["patch_size"])
        row[0].imshow(image1)
        row[0].add_patch(Rectangle((x - size / 2, y - size / 2), size, size, fill=False, color="red", lw=1.5))
        row[0].plot([x], [y], "r+", ms=10)
        row[0].set_title(f"level {lv['level']}: patch {size:g} px")
        row[1].imshow(image2)
        for (tx, ty, score), colour in zip(np.asarray(lv["top3"]), TOP3_COLOURS):
            row[1].add_patch(Rectangle((tx - size / 2, ty - size / 2), size, size, fill=False, color=colour, lw=1.5))
            row[1].plot([tx], [ty], "+", color=colour, ms=10)
        row[1].set_title("top-3 in image 2 (red, green, blue)")
        im = row[2].imshow(np.asarray(lv["map"], np.float32), cmap="viridis")
        row[2].set_title("consolidated correlation")
        fig.colorbar(im, ax=row[2], fraction=0.046, pad=0.04)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
