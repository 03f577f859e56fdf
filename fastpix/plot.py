"""A small line-plot writer for the run folder's loss curves (PIL only: no plotting dependency).

One panel per series, each with its own y-range, because pix2pix's losses differ by two orders of magnitude
(λ·L1 ≈ 10–50 against GAN losses ≈ 0.1–3).
"""
from __future__ import annotations

import json

from PIL import Image, ImageDraw

from fastpix.files import atomic_write

PANEL_W, PANEL_H, MARGIN = 360, 200, 40
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def read_series(metrics_jsonl: str, names) -> tuple[list[int], dict]:
    iters, series = [], {n: [] for n in names}
    with open(metrics_jsonl) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:  # a line torn by a kill
                continue
            if all(n in rec for n in names):
                iters.append(rec["iter"])
                for n in names:
                    series[n].append(float(rec[n]))
    return iters, series


def plot_panel(draw: ImageDraw.ImageDraw, box, xs, ys, title, colour):
    x0, y0, x1, y1 = box
    draw.rectangle(box, outline=(160, 160, 160))
    draw.text((x0 + 4, y0 - 14), title, fill=(0, 0, 0))
    if len(xs) < 2:
        return
    lo, hi = min(ys), max(ys)
    hi = hi if hi > lo else lo + 1.0
    draw.text((x0 - 36, y0), f"{hi:.3g}", fill=(80, 80, 80))
    draw.text((x0 - 36, y1 - 10), f"{lo:.3g}", fill=(80, 80, 80))
    draw.text((x0, y1 + 2), str(xs[0]), fill=(80, 80, 80))
    draw.text((x1 - 40, y1 + 2), str(xs[-1]), fill=(80, 80, 80))
    span = max(xs[-1] - xs[0], 1)
    points = [(x0 + (x - xs[0]) / span * (x1 - x0), y1 - (y - lo) / (hi - lo) * (y1 - y0)) for x, y in zip(xs, ys)]
    draw.line(points, fill=colour, width=2)


def write_loss_plot(metrics_jsonl: str, png_path: str, names=("G_GAN", "G_L1", "D_real", "D_fake")):
    iters, series = read_series(metrics_jsonl, names)
    cols = 2
    rows = -(-len(names) // cols)
    img = Image.new("RGB", (cols * (PANEL_W + MARGIN) + MARGIN, rows * (PANEL_H + MARGIN) + MARGIN), "white")
    draw = ImageDraw.Draw(img)
    for k, name in enumerate(names):
        r, c = divmod(k, cols)
        x0, y0 = MARGIN + c * (PANEL_W + MARGIN), MARGIN + r * (PANEL_H + MARGIN)
        plot_panel(draw, (x0, y0, x0 + PANEL_W, y0 + PANEL_H), iters, series[name], f"{name} vs iteration",
                   COLOURS[k % len(COLOURS)])
    atomic_write(png_path, lambda tmp: img.save(tmp, format="PNG"))  # never a truncated loss.png
