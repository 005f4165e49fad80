"""Procedural textures of the demo scene (float32 RGB in [0, 1], (H, W, 3) with H, W multiples of 32).

Every texture is at least as large as the surfaces it covers, so no surface shows the same
texture patch twice (a wrapped texture is an exactly periodic pattern that wide-baseline
matchers cannot disambiguate). Repetition comes only from the modelled structure: brick
courses, paving slabs, window rows, crate planks, each varied at several scales.
"""

from __future__ import annotations

import cv2
import numpy as np

from .drawing import (
    GRAFFITI,
    as_color,
    colorize,
    draw_blobs,
    draw_lines,
    draw_text,
    fractal_noise,
    paste,
    poster,
    random_words,
    sigmoid,
    streaks,
)


def texture_paving(rng: np.random.Generator, size: int = 1600, slab: int = 32) -> np.ndarray:
    """Ground: slabs in rows with random offsets (per-slab tone, a few replaced or cracked), grout,
    stains, leaves, painted lines, a manhole cover and a drain grate."""
    n = size // slab
    tone = rng.uniform(0.72, 1.18, (n, n + 1)).astype(np.float32)
    odd = rng.random((n, n + 1)) < 0.05  # replaced slabs of another stone
    yy, xx = np.arange(size, dtype=np.int32)[:, None], np.arange(size, dtype=np.int32)[None, :]
    row_shift = rng.integers(0, slab, n).astype(np.int32)  # random bond: every row offset differently
    iy = yy // slab
    shift = row_shift[iy]
    ix = (xx + shift) // slab
    slab_tone = tone[iy, ix]
    gx, gy = (xx + shift) % slab, yy % slab
    grout = (np.minimum(gx, slab - 1 - gx) < 1.5) | (np.minimum(gy, slab - 1 - gy) < 1.5)
    noise = 0.5 + 0.12 * fractal_noise(rng, size, 1.6) + 0.08 * fractal_noise(rng, size, 3.0)
    base = colorize(noise * slab_tone, (0.35, 0.33, 0.30), (0.80, 0.76, 0.68))
    m = odd[iy, ix]
    base[m] = base[m] * np.array([0.85, 0.88, 1.0], np.float32) * 0.8
    base[grout] *= 0.45
    stains = sigmoid(4 * fractal_noise(rng, size, 3.2) - 4)[..., None]
    base = base * (1 - 0.5 * stains) + stains * 0.5 * np.array([0.25, 0.22, 0.18], np.float32)
    draw_lines(base, rng, 40, np.array([[0.22, 0.21, 0.19]], np.float32), (1, 2), length=20)  # cracks
    draw_blobs(base, rng, 60, 2, 6, np.array([[0.55, 0.35, 0.12], [0.45, 0.28, 0.10], [0.6, 0.5, 0.15]],
                                                np.float32), alpha=0.9)  # leaves
    draw_lines(base, rng, 10, np.array([[0.95, 0.9, 0.3], [0.9, 0.9, 0.9]], np.float32), (6, 10))
    for _ in range(2):  # manhole covers: a ring and a cross-hatched disc
        c = (int(rng.integers(300, 1300)), int(rng.integers(500, 1200)))
        cv2.circle(base, c, 24, (0.18, 0.17, 0.16), -1, cv2.LINE_AA)
        cv2.circle(base, c, 24, (0.35, 0.33, 0.3), 2, cv2.LINE_AA)
        for k in range(-18, 19, 6):
            cv2.line(base, (c[0] + k, c[1] - 20), (c[0] + k, c[1] + 20), (0.3, 0.28, 0.26), 1, cv2.LINE_AA)
    x0, y0 = int(rng.integers(400, 1200)), int(rng.integers(600, 1100))
    base[y0:y0 + 14, x0:x0 + 60] = (0.12, 0.12, 0.12)  # drain grate
    base[y0 + 2:y0 + 12, x0 + 2:x0 + 58:4] = (0.4, 0.4, 0.4)
    return np.clip(base, 0, 1).astype(np.float32)


def _brick_panel(rng: np.random.Generator, h: int, w: int, course: int = 20, bmin: int = 30,
                 bmax: int = 52, mortar: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Irregular bricks: course heights ``course`` +- 2, brick lengths in [bmin, bmax], random joints.

    Returns brick id (h, w) int32, mortar mask (h, w) bool and brick centres (N, 2) (x, y).
    """
    ids = np.zeros((h, w), np.int32)
    mort = np.zeros((h, w), bool)
    cols = np.arange(w)
    centres = []
    y0 = nid = 0
    while y0 < h:
        y1 = min(h, y0 + course + int(rng.integers(-2, 3)))
        edges = [-int(rng.integers(0, bmax))]
        while edges[-1] < w:
            edges.append(edges[-1] + int(rng.integers(bmin, bmax + 1)))
        e = np.array(edges)
        k = np.searchsorted(e, cols, side="right") - 1
        ids[y0:y1] = nid + k
        mort[y0:y1] = (np.minimum(cols - e[k], e[k + 1] - 1 - cols) < mortar / 2)[None, :]
        mort[max(y0, y1 - mortar):y1] = True
        centres += [((a + b) / 2, (y0 + y1) / 2) for a, b in zip(e[:-1], e[1:])]
        nid += len(e) - 1
        y0 = y1
    return ids, mort, np.array(centres, np.float32)


_BRICK_COLOURS = np.array([[0.62, 0.30, 0.20], [0.54, 0.24, 0.16], [0.70, 0.40, 0.25], [0.46, 0.29, 0.21],
                           [0.30, 0.18, 0.14], [0.74, 0.60, 0.43]], np.float32)


def _bricks(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) weathered brickwork: irregular bonds, brick colours from several batches, patches
    of repair, a bricked-up window with stone lintel, soot streaks, efflorescence and damp."""
    ids, mort, centres = _brick_panel(rng, h, w)
    nb = len(centres)
    kind = rng.choice(len(_BRICK_COLOURS), nb, p=[0.55, 0.25, 0.08, 0.08, 0.03, 0.01])
    col = _BRICK_COLOURS[kind] * rng.uniform(0.88, 1.1, (nb, 1)).astype(np.float32)
    col += rng.normal(0, 0.015, (nb, 3)).astype(np.float32)
    # repairs: newer, cleaner bricks in a few irregular regions
    for _ in range(2):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(40, 140), rng.uniform(30, 90)
        m = ((centres[:, 0] - cx) / rx) ** 2 + ((centres[:, 1] - cy) / ry) ** 2 < 1
        col[m] = np.array([0.78, 0.42, 0.30], np.float32) * rng.uniform(0.9, 1.08, (int(m.sum()), 1))
    # bricked-up window: darker bricks, stone lintel and sill
    bx, by = int(rng.integers(40, max(41, w - 200))), int(rng.integers(60, 160))
    bw, bh = int(rng.integers(90, 130)), int(rng.integers(140, 190))
    m = (centres[:, 0] > bx) & (centres[:, 0] < bx + bw) & (centres[:, 1] > by) & (centres[:, 1] < by + bh)
    col[m] *= np.array([0.7, 0.75, 0.8], np.float32)
    img = col[ids]
    img *= (1 + 0.16 * fractal_noise(rng, (h, w), 3.0) + 0.08 * fractal_noise(rng, (h, w), 1.0))[..., None]
    mortar_col = colorize(0.5 + 0.2 * fractal_noise(rng, (h, w), 2.0), (0.50, 0.48, 0.44), (0.80, 0.78, 0.72))
    img[mort] = mortar_col[mort]
    stone = colorize(0.55 + 0.15 * fractal_noise(rng, (24, bw + 40), 1.5), (0.55, 0.53, 0.48), (0.85, 0.82, 0.75))
    img[max(0, by - 24):by, bx - 20:bx + bw + 20] = stone[-min(24, by):]
    img[by + bh:by + bh + 14, bx - 10:bx + bw + 10] = stone[:14, : bw + 20] * 0.95
    # weathering: soot and rain streaks from the top, efflorescence, rising damp at the bottom
    top = np.exp(-np.arange(h, dtype=np.float32) / (0.45 * h))[:, None]
    soot = (sigmoid(3 * streaks(rng, (h, w)) - 1.5) * top)[..., None]
    img = img * (1 - 0.4 * soot)
    eff = sigmoid(4 * fractal_noise(rng, (h, w), 2.6) - 6.5)[..., None]
    img = img * (1 - 0.6 * eff) + 0.6 * eff * np.array([0.85, 0.84, 0.80], np.float32)
    edge = h - 50 + 18 * fractal_noise(rng, (8, w), 2.0)[0]
    damp = sigmoid((np.arange(h)[:, None] - edge[None, :]) / 4.0)[..., None]
    img = img * (1 - 0.35 * damp) * (1 - 0.15 * damp * np.array([1, 0, 1], np.float32))
    # a ghost sign: faded painted letters
    gy = int(rng.integers(60, 140))
    layer = img.copy()
    draw_text(layer, random_words(rng), (int(rng.integers(10, max(11, w // 3))), gy), 55, (0.88, 0.86, 0.78), 7)
    img = 0.6 * img + 0.4 * layer
    return np.clip(img, 0, 1).astype(np.float32)


def _stone_strip(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) dressed stone (pilaster, coping): blocks of random height with joints."""
    img = colorize(0.55 + 0.15 * fractal_noise(rng, (h, w), 1.8), (0.52, 0.50, 0.46), (0.86, 0.83, 0.76))
    y = int(rng.integers(0, 40))
    while y < h:
        img[y:y + 2] *= 0.55
        y += int(rng.integers(30, 70))
    return img


def _shopfront(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) stucco shop front: upper windows with curtains, sign board with lettering, striped
    awning, shop window with a display, a panelled door, a lamp, a number plate."""
    img = colorize(0.5 + 0.15 * fractal_noise(rng, (h, w), 2.4), (0.72, 0.64, 0.48), (0.94, 0.88, 0.72))
    img *= (1 - 0.25 * sigmoid(3 * streaks(rng, (h, w)) - 2.5))[..., None]
    for k, x0 in enumerate((int(w * 0.14), int(w * 0.58))):  # upper floor windows, each different
        y0, ww, hh = 70, int(w * 0.26), 150
        img[y0 - 8:y0 + hh + 8, x0 - 8:x0 + ww + 8] = (0.92, 0.92, 0.88)
        glass = colorize(0.45 + 0.25 * fractal_noise(rng, (hh, ww), 2.0, 3), (0.06, 0.08, 0.12), (0.4, 0.5, 0.6))
        img[y0:y0 + hh, x0:x0 + ww] = glass
        cur = GRAFFITI[rng.integers(8)] * 0.8
        cw = int(rng.integers(ww // 5, ww // 2))
        if k == 0:
            img[y0:y0 + hh, x0:x0 + cw] = cur
        else:
            img[y0:y0 + int(rng.integers(hh // 4, hh // 2)), x0:x0 + ww] = cur  # blind
        img[y0:y0 + hh, x0 + ww // 2 - 3:x0 + ww // 2 + 3] = (0.92, 0.92, 0.88)
        img[y0 + hh + 8:y0 + hh + 20, x0 - 16:x0 + ww + 16] = (0.78, 0.76, 0.7)  # sill
        draw_blobs(img[y0 + hh - 10:y0 + hh + 8, x0:x0 + ww], rng, 10, 3, 8,
                    np.array([[0.2, 0.5, 0.2], [0.8, 0.2, 0.25], [0.9, 0.8, 0.2]], np.float32))
    sy0 = 270  # sign board
    board = np.array([0.10, 0.28, 0.20], np.float32) * rng.uniform(0.8, 1.2)
    img[sy0:sy0 + 60, 20:w - 20] = board
    img[sy0:sy0 + 4, 20:w - 20] = img[sy0 + 56:sy0 + 60, 20:w - 20] = (0.75, 0.62, 0.25)
    draw_text(img, random_words(rng), (40, sy0 + 46), 36, (0.90, 0.78, 0.35), 4)
    draw_text(img, random_words(rng), (w // 2 + 20, sy0 + 40), 24, (0.95, 0.95, 0.9), 2)
    aw = np.arange(w - 60)
    stripes = ((aw // 18) % 2).astype(np.float32)[None, :, None]  # awning
    img[sy0 + 64:sy0 + 92, 30:w - 30] = (stripes * np.array([0.75, 0.15, 0.15]) + (1 - stripes) * 0.9)[0]
    img[sy0 + 92:sy0 + 98, 30:w - 30] *= 0.5
    wx0, wy0, ww, wh = 30, 380, int(w * 0.5), 170  # shop window with a display
    img[wy0 - 6:wy0 + wh + 6, wx0 - 6:wx0 + ww + 6] = (0.2, 0.18, 0.16)
    img[wy0:wy0 + wh, wx0:wx0 + ww] = colorize(0.35 + 0.25 * fractal_noise(rng, (wh, ww), 2.2, 3),
                                                (0.05, 0.06, 0.08), (0.45, 0.52, 0.58))
    disp = img[wy0 + wh // 2:wy0 + wh, wx0:wx0 + ww]
    draw_blobs(disp, rng, 18, 5, 18, GRAFFITI, alpha=0.9)
    draw_text(img, random_words(rng), (wx0 + 10, wy0 + 40), 22, (0.95, 0.95, 0.95), 2)
    dx0, dw = int(w * 0.64), 95  # panelled door
    img[wy0 - 20:h, dx0 - 8:dx0 + dw + 8] = (0.85, 0.83, 0.78)
    door = np.array([0.45, 0.12, 0.10], np.float32) * rng.uniform(0.8, 1.2)
    img[wy0 - 12:h, dx0:dx0 + dw] = door
    for py, ph in ((wy0, 70), (wy0 + 90, 100)):
        img[py:py + ph, dx0 + 12:dx0 + dw - 12] = door * 0.7
    cv2.circle(img, (dx0 + dw - 16, wy0 + 85), 5, (0.85, 0.75, 0.3), -1, cv2.LINE_AA)
    img[wy0 - 60:wy0 - 36, dx0 + dw + 20:dx0 + dw + 50] = (0.15, 0.2, 0.5)  # number plate
    draw_text(img, str(int(rng.integers(2, 99))), (dx0 + dw + 22, wy0 - 40), 16, (1, 1, 1), 2)
    cv2.circle(img, (dx0 - 30, wy0 - 50), 12, (0.95, 0.9, 0.7), -1, cv2.LINE_AA)  # lamp
    img[wy0 - 50:wy0 - 38, dx0 - 34:dx0 - 26] = (0.1, 0.1, 0.1)
    return np.clip(img, 0, 1).astype(np.float32)


def _mural(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) painted mural on plaster: large shapes, waves, a sun, lettering, drips; faded."""
    base = colorize(0.5 + 0.15 * fractal_noise(rng, (h, w), 2.0), (0.25, 0.45, 0.50), (0.55, 0.75, 0.78))
    img = base.copy()
    for _ in range(7):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.ellipse(img, c, (int(rng.integers(30, 120)), int(rng.integers(30, 120))), float(rng.uniform(0, 180)),
                    0, 360, as_color(GRAFFITI[rng.integers(8)]), -1, cv2.LINE_AA)
    for _ in range(3):
        x = np.arange(0, w, 4)
        y = rng.uniform(0.2, 0.9) * h + rng.uniform(15, 50) * np.sin(x / rng.uniform(25, 70) + rng.uniform(0, 6))
        cv2.polylines(img, [np.stack([x, y], 1).astype(np.int32)], False, as_color(GRAFFITI[rng.integers(8)]),
                      int(rng.integers(8, 20)), cv2.LINE_AA)
    c = (int(rng.integers(w // 4, 3 * w // 4)), int(rng.integers(80, 200)))
    for k in range(11):  # sun with irregular rays
        ang = k * 2 * np.pi / 11 + rng.uniform(-0.2, 0.2)
        r = rng.uniform(70, 110)
        cv2.line(img, c, (int(c[0] + r * np.cos(ang)), int(c[1] + r * np.sin(ang))), (0.98, 0.75, 0.15), 6, cv2.LINE_AA)
    cv2.circle(img, c, 45, (0.98, 0.82, 0.2), -1, cv2.LINE_AA)
    cv2.circle(img, (c[0] - 14, c[1] - 8), 6, (0.1, 0.1, 0.1), -1, cv2.LINE_AA)
    cv2.circle(img, (c[0] + 14, c[1] - 8), 6, (0.1, 0.1, 0.1), -1, cv2.LINE_AA)
    cv2.ellipse(img, (c[0], c[1] + 10), (20, 12), 0, 0, 180, (0.1, 0.1, 0.1), 3, cv2.LINE_AA)
    draw_text(img, random_words(rng), (int(rng.integers(10, max(11, w // 3))), h - 110), 60, (0.95, 0.95, 0.92), 9)
    draw_lines(img, rng, 25, GRAFFITI, (2, 3), length=40)
    fade = sigmoid(3 * fractal_noise(rng, (h, w), 2.4) - 2.0)[..., None]
    img = img * (1 - 0.6 * fade) + base * 0.6 * fade
    return np.clip(img, 0, 1).astype(np.float32)


def texture_back_facade(rng: np.random.Generator, shape=(640, 2048), used=(600, 2000)) -> np.ndarray:
    """The back facade (used area ``used`` = (rows, cols) texels, row 0 at the top): weathered
    brickwork on the left half, a stucco shop front and a mural on the right quarters,
    separated by stone pilasters, under a stone coping, with posters, a drainpipe and dirt."""
    h, w = used
    img = np.zeros(shape + (3,), np.float32)
    b1, b2 = int(0.50 * w), int(0.75 * w)  # section boundaries (columns)
    img[:h, :b1] = _bricks(rng, h, b1)
    img[:h, b1:b2] = _shopfront(rng, h, b2 - b1)
    img[:h, b2:w] = _mural(rng, h, w - b2)
    for x in (b1 - 12, b2 - 12):
        img[:h, x:x + 24] = _stone_strip(rng, h, 24)
    img[:18, :w] = _stone_strip(rng, w, 18).transpose(1, 0, 2)  # coping
    img[18:22, :w] *= 0.5
    for _ in range(3):  # posters on the brickwork, some torn
        ph, pw = int(rng.integers(60, 110)), int(rng.integers(45, 80))
        paste(img, poster(rng, ph, pw), int(rng.integers(20, b1 - pw - 20)), int(rng.integers(260, h - ph - 40)),
               rng, torn=float(rng.choice([0.0, 0.3, 0.6])))
    px = int(rng.integers(b1 // 3, 2 * b1 // 3))  # drainpipe with brackets at irregular heights
    pipe = (0.25 + 0.3 * np.sin(np.linspace(0.2, np.pi - 0.2, 10)))[None, :, None] * np.array([0.9, 0.95, 1.0])
    img[18:h, px:px + 10] = pipe
    y = 40
    while y < h - 20:
        img[y:y + 6, px - 3:px + 13] = (0.2, 0.2, 0.22)
        y += int(rng.integers(90, 170))
    edge = h - 30 + 10 * fractal_noise(rng, (8, w), 2.0)[0]
    dirt = sigmoid((np.arange(h)[:, None] - edge[None, :]) / 3.0)[..., None]
    img[:h, :w] *= 1 - 0.3 * dirt
    img[:h, :w] *= (1 + 0.06 * fractal_noise(rng, (h, w), 3.0))[..., None]
    return np.clip(img, 0, 1).astype(np.float32)


def texture_windows(rng: np.random.Generator, shape=(640, 896), used=(584, 834), cell: int = 128) -> np.ndarray:
    """Plaster facade: three floors of windows on a regular grid (the repeated structure), each
    window different (curtains, blinds, shutters, plants, one boarded up, an air conditioner),
    with rain streaks under the sills; a ground floor with a door, a garage and lettering."""
    h, w = used
    img = np.zeros(shape + (3,), np.float32)
    img[:h, :w] = colorize(0.5 + 0.15 * fractal_noise(rng, (h, w), 2.5), (0.70, 0.62, 0.48), (0.92, 0.86, 0.72))
    refl = 0.5 + 0.25 * fractal_noise(rng, (h, w), 2.0, min_freq=4)
    streak = sigmoid(3 * streaks(rng, (h, w)) - 1.0)
    frame = np.array([0.30, 0.26, 0.22], np.float32) * rng.uniform(0.8, 1.2)
    ncol = (w - 32) // cell
    boarded = (int(rng.integers(0, 3)), int(rng.integers(0, ncol)))
    for gy in range(3):
        for gx in range(ncol):
            x0, y0 = gx * cell + 32, gy * cell + 20
            x1, y1 = x0 + 64, y0 + 88
            below = (slice(y1 + 10, min(h, y1 + 70)), slice(x0, x1))
            fall = np.linspace(1, 0, below[0].stop - below[0].start)[:, None]  # streak fades downwards
            img[below] *= (1 - 0.3 * streak[below] * fall)[..., None]
            img[y0 - 5:y1 + 5, x0 - 5:x1 + 5] = frame
            img[y1 + 5:y1 + 11, x0 - 9:x1 + 9] = (0.82, 0.8, 0.75)  # sill
            if (gy, gx) == boarded:
                img[y0:y1, x0:x1] = (0.45, 0.36, 0.24)
                for k in range(y0 + 4, y1, 14):
                    img[k:k + 2, x0:x1] = (0.25, 0.2, 0.14)
                cv2.line(img, (x0, y0), (x1, y1), (0.35, 0.28, 0.2), 4, cv2.LINE_AA)
                continue
            glass = colorize(refl[y0:y1, x0:x1], (0.08, 0.10, 0.14), (0.45, 0.55, 0.65))
            img[y0:y1, x0:x1] = glass * rng.uniform(0.7, 1.2)
            style = int(rng.choice(5, p=[0.2, 0.15, 0.1, 0.3, 0.25]))  # 3, 4: plain glass
            cur = GRAFFITI[rng.integers(8)] * rng.uniform(0.5, 0.9)
            if style == 0:  # curtain on one side
                cw = int(rng.integers(10, 32))
                if rng.random() < 0.5:
                    img[y0:y1, x0:x0 + cw] = cur
                else:
                    img[y0:y1, x1 - cw:x1] = cur
            elif style == 1:  # blind lowered to a random height
                bh = int(rng.integers(15, 70))
                img[y0:y0 + bh, x0:x1] = cur
                img[y0 + 3:y0 + bh:6, x0:x1] *= 0.8
            elif style == 2:  # open shutters
                img[y0 - 5:y1 + 5, x0 - 30:x0 - 5] = cur
                img[y0 - 5:y1 + 5, x1 + 5:x1 + 30] = cur
                img[y0 - 5:y1 + 5:7, x0 - 30:x0 - 5] *= 0.7
                img[y0 - 5:y1 + 5:7, x1 + 5:x1 + 30] *= 0.7
            img[(y0 + y1) // 2 - 2:(y0 + y1) // 2 + 2, x0:x1] = frame
            img[y0:y1, (x0 + x1) // 2 - 2:(x0 + x1) // 2 + 2] = frame
            if rng.random() < 0.2:  # flower box
                img[y1 - 2:y1 + 8, x0 - 4:x1 + 4] = (0.35, 0.22, 0.15)
                flowers = np.array([[0.2, 0.55, 0.2], [0.85, 0.2, 0.3], [0.95, 0.85, 0.3], [0.9, 0.9, 0.95]],
                                   np.float32)
                draw_blobs(img[y1 - 14:y1, x0 - 4:x1 + 4], rng, 12, 2, 6, flowers)
            if rng.random() < 0.12:  # air conditioner
                img[y1 + 14:y1 + 40, x0 + 10:x0 + 54] = (0.82, 0.82, 0.8)
                img[y1 + 18:y1 + 36:4, x0 + 14:x0 + 50] = (0.5, 0.5, 0.5)
    gy0 = 3 * cell + 20  # ground floor
    img[gy0:gy0 + 6, :w] = (0.55, 0.5, 0.42)
    dx = int(rng.integers(40, 120))
    img[gy0 + 14:h, dx:dx + 70] = np.array([0.15, 0.3, 0.45], np.float32) * rng.uniform(0.8, 1.2)
    img[gy0 + 26:gy0 + 70, dx + 10:dx + 60] = (0.5, 0.6, 0.7)
    gx0 = int(rng.integers(300, 420))
    gar = np.arange(gy0 + 60, h)
    img[gar, gx0:gx0 + 230] = (0.55 + 0.1 * ((gar - gy0) // 8 % 2))[:, None, None] * np.array([0.9, 0.92, 1.0])
    draw_text(img, random_words(rng, 2), (gx0 - 10, gy0 + 45), 26, (0.2, 0.15, 0.1), 3)
    ph, pw = int(rng.integers(60, 90)), int(rng.integers(45, 60))
    paste(img, poster(rng, ph, pw), dx + 100, gy0 + 50, rng, torn=0.3)
    img[:h, :w] = img[:h, w - 1::-1].copy()  # the facade's u axis points to the viewer's left
    return np.clip(img, 0, 1).astype(np.float32)


def texture_graffiti(rng: np.random.Generator, shape=(512, 512)) -> np.ndarray:
    """Concrete with posters, blobs, strokes and tags: rich, non-repetitive texture."""
    h, w = shape
    area = h * w / 512.0**2
    img = colorize(0.5 + 0.18 * fractal_noise(rng, (h, w), 1.8), (0.38, 0.38, 0.40), (0.75, 0.74, 0.72))
    for _ in range(int(round(7 * area))):  # posters
        ph, pw = int(rng.integers(50, 120)), int(rng.integers(50, 120))
        paste(img, poster(rng, ph, pw), int(rng.integers(0, w - pw)), int(rng.integers(0, h - ph)),
               rng, torn=float(rng.choice([0.0, 0.0, 0.4])))
    draw_blobs(img, rng, int(40 * area), 6, 40, GRAFFITI, alpha=0.85)
    draw_lines(img, rng, int(50 * area), GRAFFITI, (2, 6), length=170)
    for _ in range(int(round(3 * area))):
        draw_text(img, random_words(rng), (int(rng.integers(0, w - 100)), int(rng.integers(40, h))), float(rng.uniform(20, 45)),
              GRAFFITI[rng.integers(8)], int(rng.integers(3, 7)), cv2.FONT_HERSHEY_SCRIPT_SIMPLEX)
    return np.clip(img, 0, 1).astype(np.float32)


def texture_crate(rng: np.random.Generator, shape=(768, 1536), base=(0.55, 0.42, 0.28),
                   stickers: float = 1.0) -> np.ndarray:
    """Boxes: wood/metal-like panels with planks of uneven width (a mildly repeated structure),
    stickers, scratches and stencilled lettering (``stickers`` scales their density)."""
    h, w = shape
    area = h * w / 512.0**2 * stickers
    grain = 0.5 + 0.2 * fractal_noise(rng, (h, w), 2.2) + 0.1 * np.sin(np.arange(w) / 3.0)[None, :]
    img = colorize(grain, np.asarray(base, np.float32) * 0.55, np.asarray(base, np.float32) * 1.4)
    x = int(rng.integers(0, 40))
    while x < w:  # planks of uneven width
        img[:, x] *= 0.4
        img[:, x + 1:x + 2] *= 0.6
        x += int(rng.integers(48, 80))
    draw_blobs(img, rng, int(25 * area), 5, 22, GRAFFITI, alpha=1.0)
    draw_lines(img, rng, int(20 * area), GRAFFITI[[4, 5, 0]], (1, 3), length=170)
    for _ in range(int(round(4 * area))):
        draw_text(img, random_words(rng), (int(rng.integers(0, w - 100)), int(rng.integers(30, h))), float(rng.uniform(18, 34)),
              GRAFFITI[[5, 0, 4]][rng.integers(3)], 3, cv2.FONT_HERSHEY_SIMPLEX)
    return np.clip(img, 0, 1).astype(np.float32)


def texture_pillar(rng: np.random.Generator, shape=(1024, 768)) -> np.ndarray:
    """Weathered concrete pillar: formwork seams, stains, a few posters and tags."""
    h, w = shape
    img = colorize(0.5 + 0.15 * fractal_noise(rng, (h, w), 1.8) + 0.1 * fractal_noise(rng, (h, w), 0.8),
                    (0.42, 0.42, 0.43), (0.76, 0.75, 0.73))
    y = int(rng.integers(20, 60))
    while y < h:  # formwork seams at uneven heights
        img[y:y + 2] *= 0.7
        y += int(rng.integers(100, 180))
    img *= (1 - 0.3 * sigmoid(3 * streaks(rng, (h, w)) - 2.0))[..., None]
    for _ in range(5):
        ph, pw = int(rng.integers(70, 140)), int(rng.integers(60, 120))
        paste(img, poster(rng, ph, pw), int(rng.integers(0, 640 - pw)), int(rng.integers(100, 700 - ph)),
               rng, torn=float(rng.choice([0.0, 0.4])))
    for _ in range(4):
        draw_text(img, random_words(rng), (int(rng.integers(0, 540)), int(rng.integers(120, 700))), float(rng.uniform(25, 50)),
              GRAFFITI[rng.integers(8)], int(rng.integers(3, 7)), cv2.FONT_HERSHEY_SCRIPT_SIMPLEX)
    return np.clip(img, 0, 1).astype(np.float32)


def texture_bench(rng: np.random.Generator, shape=(384, 1536)) -> np.ndarray:
    """Wooden bench: horizontal slats (a repeated structure) with grain, knots and carved marks."""
    h, w = shape
    grain = 0.5 + 0.15 * fractal_noise(rng, (h, w), 2.0) + 0.12 * streaks(rng, (w, h), 12).T
    img = colorize(grain, (0.30, 0.20, 0.12), (0.70, 0.52, 0.32))
    y = 0
    while y < h:
        img[y:y + 3] *= 0.35  # gaps between slats
        img[y + 3:y + 30] *= rng.uniform(0.85, 1.15)
        y += 30
    draw_blobs(img, rng, 25, 2, 6, np.array([[0.25, 0.16, 0.1]], np.float32), alpha=0.8)  # knots
    for _ in range(8):
        draw_text(img, random_words(rng), (int(rng.integers(0, w - 80)), int(rng.integers(20, h))), float(rng.uniform(12, 20)),
              (0.2, 0.13, 0.08), 2, cv2.FONT_HERSHEY_SIMPLEX)
    return np.clip(img, 0, 1).astype(np.float32)


def mip_pyramid(tex: np.ndarray, levels: int = 6) -> list[np.ndarray]:
    """Texture and its box-filtered halvings (exact 2x2 averages while both sides are even)."""
    pyr = [tex]
    for _ in range(levels - 1):
        t = pyr[-1]
        if min(t.shape[:2]) < 8 or t.shape[0] % 2 or t.shape[1] % 2:
            break
        pyr.append(0.25 * (t[0::2, 0::2] + t[1::2, 0::2] + t[0::2, 1::2] + t[1::2, 1::2]))
    return pyr
