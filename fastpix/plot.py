"""The pictures of a run folder: the loss plot (loss.png) and labelled image grids (samples/).

loss.png is drawn with matplotlib (the `plot` extra: pip install 'fastpix[plot]') when it is installed, else with
PIL; both draw the same panels, with ticks, gridlines, titles and axis titles (x: iteration; y: the loss):
  * D_real and D_fake together, since they are read against each other (both near log 2 while D cannot tell);
  * G_GAN alone;
  * λ·L1 (G_L1) alone, λ from the run: in pix2pix it is two orders of magnitude above the GAN losses
    (≈ 10–50 against ≈ 0.1–3), so on a shared axis the others would be flat lines;
  * with --val_freq, the val metrics: L1 and SSIM on the left axis (both on [0, 1]), PSNR in dB on the right.
Every picture is written atomically (fastpix.files): a reader never sees half a PNG.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fastpix.files import atomic_write

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"]  # matplotlib's tab10 order
VAL_METRICS = ("l1", "psnr", "ssim")
PLOT_BACKENDS = ("auto", "matplotlib", "pil")


@dataclasses.dataclass
class Axis:
    label: str
    series: list  # [(key in the metrics, legend label)]


@dataclasses.dataclass
class Panel:
    title: str
    left: Axis
    right: Axis | None = None


def loss_panels(lambda_L1: float, with_val: bool) -> list[Panel]:
    panels = [
        Panel("discriminator", Axis("loss", [("D_real", "D_real"), ("D_fake", "D_fake")])),
        Panel("generator: GAN loss", Axis("loss", [("G_GAN", "G_GAN")])),
        Panel(f"generator: λ·L1 (G_L1), λ = {lambda_L1:g}", Axis("loss", [("G_L1", "λ·L1 (G_L1)")])),
    ]
    if with_val:
        panels.append(
            Panel(
                "validation (the test protocol)",
                Axis("L1, SSIM", [("val_l1", "L1"), ("val_ssim", "SSIM")]),
                Axis("PSNR (dB)", [("val_psnr", "PSNR")]),
            )
        )
    return panels


def read_metrics(metrics_jsonl: str) -> dict:
    """{key: (iterations, values)} of every loss and val metric in a run's metrics.jsonl; val metrics are keyed
    val_<name>. Lines torn by a kill are skipped."""
    series: dict = {}

    def add(key, iteration, value):
        if isinstance(value, (int, float)) and math.isfinite(value):  # a PSNR of identical images is +inf
            xs, ys = series.setdefault(key, ([], []))
            xs.append(iteration)
            ys.append(float(value))

    with open(metrics_jsonl) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not isinstance(rec, dict) or "iter" not in rec:
                continue
            for key in ("G_GAN", "G_L1", "D_real", "D_fake"):
                if key in rec:
                    add(key, rec["iter"], rec[key])
            for key, value in (rec.get("val") or {}).items():
                if key in VAL_METRICS:
                    add(f"val_{key}", rec["iter"], value)
    return series


def write_loss_plot(metrics_jsonl: str, png_path: str, lambda_L1: float = 100.0, backend: str = "auto"):
    """Draw loss.png from metrics.jsonl (backend: auto = matplotlib if installed, else PIL)."""
    if backend not in PLOT_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(PLOT_BACKENDS)}, not {backend!r}")
    series = read_metrics(metrics_jsonl)
    panels = loss_panels(lambda_L1, any(k.startswith("val_") for k in series))
    if backend == "auto":
        try:
            import matplotlib  # noqa: F401 - imported only to learn whether it is installed

            backend = "matplotlib"
        except ImportError:
            backend = "pil"
    draw = draw_matplotlib if backend == "matplotlib" else draw_pil
    draw(panels, series, png_path)


def draw_matplotlib(panels: list[Panel], series: dict, png_path: str):
    # Figure and its Agg canvas directly, not pyplot: no global backend switched, nothing shown, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = -(-len(panels) // 2)
    fig = Figure(figsize=(11, 3.6 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 2, squeeze=False).ravel()
    iterations = [x for xs, _ in series.values() for x in xs]
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax, panel in zip(axes, panels):
        ax.set_title(panel.title)
        ax.set_xlabel("iteration")
        ax.grid(True, color="#dddddd")
        if iterations:  # one iteration axis for every panel, so that they read side by side
            ax.set_xlim(min(iterations), max(max(iterations), min(iterations) + 1))
        handles = plot_axis(ax, panel.left, series, 0)
        if panel.right is not None:
            handles += plot_axis(ax.twinx(), panel.right, series, len(panel.left.series))
        if handles:
            ax.legend(handles=handles, loc="best", fontsize="small")
    fig.suptitle("pix2pix training losses (means over each --print_freq window)")
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png"))


def plot_axis(ax, axis: Axis, series: dict, colour_offset: int) -> list:
    ax.set_ylabel(axis.label)
    handles = []
    for k, (key, label) in enumerate(axis.series):
        xs, ys = series.get(key, ([], []))
        if xs:
            style = "-" if len(xs) > 1 else "o"
            handles += ax.plot(
                xs, ys, style, color=COLOURS[(colour_offset + k) % len(COLOURS)], label=label, linewidth=1.5
            )
    return handles


# --- the PIL fallback ---------------------------------------------------------------------------------------------

PANEL_W, PANEL_H = 440, 220  # the plotting area of one panel
LEFT, RIGHT, TOP, BOTTOM = 78, 70, 44, 52  # room around it for ticks, axis titles and the panel's title
GRID, FRAME, INK = (225, 225, 225), (110, 110, 110), (30, 30, 30)


def font(size: int):
    """PIL's default font at `size` px (Pillow >= 10.1 with FreeType); else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    """About `count` round tick values (1, 2, 2.5 or 5 × 10^k apart) whose first and last enclose [lo, hi]."""
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1, round(step))
    first, last = math.floor(lo / step), math.ceil(hi / step)
    return [k * step for k in range(first, last + 1)]


def tick_text(value: float, integer: bool) -> str:
    return str(int(round(value))) if integer else f"{value:.6g}"


def text_size(draw: ImageDraw.ImageDraw, text: str, face) -> tuple[int, int]:
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=face)
    return int(x1 - x0), int(y1 - y0)


def put(draw: ImageDraw.ImageDraw, xy, text: str, face, fill=INK, align: str = "lt"):
    """text placed by its ink box: align = horizontal (l, m, r) + vertical (t, m) of that box at xy. PIL's own
    anchors need a FreeType font; the bitmap fallback font has none."""
    text = latin(text)
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=face)
    dx = {"l": 0, "m": (x1 - x0) / 2, "r": x1 - x0}[align[0]]
    dy = {"t": 0, "m": (y1 - y0) / 2}[align[1]]
    draw.text((xy[0] - x0 - dx, xy[1] - y0 - dy), text, fill=fill, font=face)


def latin(text: str) -> str:
    """PIL's default fonts have no Greek letters: λ is spelt out."""
    return text.replace("λ", "lambda")


def vertical_text(img: Image.Image, text: str, centre: tuple[int, int], face):
    """Text turned 90° anticlockwise, centred at `centre`: a y axis's title."""
    text = latin(text)
    w, h = text_size(ImageDraw.Draw(img), text, face)
    label = Image.new("RGB", (w + 4, h + 6), "white")
    ImageDraw.Draw(label).text((2, 1), text, fill=INK, font=face)
    label = label.rotate(90, expand=True)
    img.paste(label, (centre[0] - label.width // 2, centre[1] - label.height // 2))


def draw_pil(panels: list[Panel], series: dict, png_path: str):
    cols, rows = 2, -(-len(panels) // 2)
    cell_w, cell_h = LEFT + PANEL_W + RIGHT, TOP + PANEL_H + BOTTOM
    img = Image.new("RGB", (cols * cell_w, rows * cell_h + 30), "white")
    draw = ImageDraw.Draw(img)
    title = "pix2pix training losses (means over each --print_freq window)"
    put(draw, (img.width // 2, 8), title, font(15), align="mt")
    iterations = [x for key in series for x in series[key][0]]
    x_ticks = nice_ticks(min(iterations, default=0), max(iterations, default=1), 6, integer=True)
    for k, panel in enumerate(panels):
        r, c = divmod(k, cols)
        box = (c * cell_w + LEFT, 30 + r * cell_h + TOP, c * cell_w + LEFT + PANEL_W, 30 + r * cell_h + TOP + PANEL_H)
        pil_panel(img, draw, box, panel, series, x_ticks)
    atomic_write(png_path, lambda tmp: img.save(tmp, format="PNG"))


def pil_panel(img, draw, box, panel: Panel, series: dict, x_ticks: list[float]):
    x0, y0, x1, y1 = box
    small, label_face = font(11), font(13)
    put(draw, ((x0 + x1) // 2, y0 - 26), panel.title, label_face, align="mt")
    to_x = scale(x_ticks[0], x_ticks[-1], x0, x1)
    for tick in x_ticks:
        x = to_x(tick)
        draw.line([(x, y0), (x, y1)], fill=GRID)
        draw.line([(x, y1), (x, y1 + 4)], fill=FRAME)
        put(draw, (x, y1 + 6), tick_text(tick, True), small, align="mt")
    put(draw, ((x0 + x1) // 2, y1 + 24), "iteration", label_face, align="mt")
    legend, offset = [], 0
    for axis, side in ((panel.left, "left"), (panel.right, "right")):
        if axis is None:
            continue
        legend += pil_axis(img, draw, box, axis, side, series, to_x, offset)
        offset += len(axis.series)
    draw.rectangle(box, outline=FRAME)
    lx = x1 - 8
    for label, colour in reversed(legend):  # right-aligned in the panel's top right corner
        w, _ = text_size(draw, latin(label), small)
        put(draw, (lx, y0 + 6), label, small, align="rt")
        draw.line([(lx - w - 22, y0 + 12), (lx - w - 6, y0 + 12)], fill=colour, width=2)
        lx -= w + 32


def pil_axis(img, draw, box, axis: Axis, side: str, series: dict, to_x, colour_offset: int) -> list:
    """One y axis of a panel (ticks, gridlines on the left axis, its title) and its lines; returns the legend."""
    x0, y0, x1, y1 = box
    small, label_face = font(11), font(13)
    present = [
        (key, label, COLOURS[(colour_offset + k) % len(COLOURS)])
        for k, (key, label) in enumerate(axis.series)
        if series.get(key, ([], []))[0]
    ]
    values = [y for key, _, _ in present for y in series[key][1]]
    ticks = nice_ticks(min(values, default=0.0), max(values, default=1.0))
    to_y = scale(ticks[0], ticks[-1], y1, y0)
    for tick in ticks:
        y = to_y(tick)
        if side == "left":
            draw.line([(x0, y), (x1, y)], fill=GRID)
            draw.line([(x0 - 4, y), (x0, y)], fill=FRAME)
            put(draw, (x0 - 6, y), tick_text(tick, False), small, align="rm")
        else:
            draw.line([(x1, y), (x1 + 4, y)], fill=FRAME)
            put(draw, (x1 + 6, y), tick_text(tick, False), small, align="lm")
    vertical_text(img, axis.label, (x0 - 62 if side == "left" else x1 + 58, (y0 + y1) // 2), label_face)
    legend = []
    for key, label, colour in present:
        points = [(to_x(x), to_y(y)) for x, y in zip(*series[key])]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        else:
            ((px, py),) = points
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        legend.append((label, colour))
    return legend


def scale(lo: float, hi: float, out_lo: float, out_hi: float):
    """The linear map of [lo, hi] onto [out_lo, out_hi]."""
    span = (hi - lo) or 1.0
    return lambda v: out_lo + (v - lo) / span * (out_hi - out_lo)


# --- labelled image grids -----------------------------------------------------------------------------------------


def labelled_grid(rows: list[list[np.ndarray]], labels: list[str]) -> Image.Image:
    """Images (uint8 HWC, one list per row, each row the same widths) side by side at their own size, under a
    header strip naming each column."""
    body = np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)
    widths = [a.shape[1] for a in rows[0]]
    face = font(label_size(min(widths)))
    strip = header_height(min(widths))
    img = Image.new("RGB", (body.shape[1], strip + body.shape[0]), "white")
    img.paste(Image.fromarray(body).convert("RGB"), (0, strip))
    draw = ImageDraw.Draw(img)
    x = 0
    for width, label in zip(widths, labels):
        put(draw, (x + width // 2, strip // 2), label, face, align="mm")
        x += width
    return img


def label_size(column_width: int) -> int:
    """The labels' font size: readable at 32 px columns, not lost above 256 px ones."""
    return max(10, min(24, column_width // 12))


def header_height(column_width: int) -> int:
    return label_size(column_width) + 10
