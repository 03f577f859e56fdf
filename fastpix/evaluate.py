"""Scoring translations: per-image metrics, the aggregate report, the results page, baselines, FID/KID, and the
FCN-score (fcn_score.py).

Images are scored as saved (uint8, the reference's truncating conversion), so scoring a checkpoint and scoring
its saved results give the same numbers. What is saved and scored is fastpix.data.pictures': fake_B against real_B,
and for colorization the RGB pictures fake_B_rgb against real_B_rgb. Metrics on [0, 1] images (data range 1): L1
(mean absolute error), PSNR, SSIM (Gaussian window σ 1.5) and the high-frequency energy ratio output/target
(sharpness: blur → below 1).
A results folder holds index.html, images/ and scores.json (the report: protocol, aggregate, per-image values).
"""

from __future__ import annotations

import glob
import html
import json
import math
import os

import numpy as np

from fastpix.config import model_kind
from fastpix.data.dataset import DataError
from fastpix.data.pictures import SCORED, pictures
from fastpix.files import atomic_write_bytes
from fastpix.results import save_png, write_index

METRICS = {
    "l1": "lower is better",
    "psnr": "higher is better",
    "ssim": "higher is better",
    "hf_ratio": "sharpness: 1 = as sharp as the target, below 1 = blurrier",
}
SCALE = (
    "images scaled to [0, 1] (uint8 / 255), data range 1.0; SSIM with a Gaussian window σ 1.5 (11 taps), "
    "K1 0.01, K2 0.03; hf_ratio = high-frequency energy (image − its σ 1.5 blur) of output / target"
)
SCORES_FILE = "scores.json"


def score(output: np.ndarray, target: np.ndarray) -> dict:
    """Every metric of one uint8 HWC output against its uint8 HWC target."""
    from fastpix import metrics

    return {
        "l1": float(metrics.l1(output, target)),
        "psnr": float(metrics.psnr(output, target)),
        "ssim": float(metrics.ssim(output, target)),
        "hf_ratio": float(metrics.high_frequency_ratio(output, target)),
    }


def aggregate(per_image: list[dict], protocol: str) -> dict:
    from fastpix.metrics import summarize

    return {
        "protocol": protocol,
        "scale": SCALE,
        "n": len(per_image),
        "metrics": {m: summarize([r[m] for r in per_image]) for m in METRICS},
        "per_image": per_image,
    }


def save_and_score(
    items, out: str, kept: list | None = None, aspect_ratio: float = 1.0, kind: str = "pix2pix"
) -> list[tuple]:
    """Save the pictures of each (stem, real_A, fake_B, real_B) (fastpix.data.pictures, for the model kind `kind`)
    under <out>/images/<stem>_<label>.png as the reference does (resized to aspect_ratio: its test --aspect_ratio),
    and score the output against the target (unresized).

    Returns rows (stem, [(label, file relative to out)], scores). With a list as `kept`, the uint8
    (real_A, output, target) arrays of every image are appended to it (for the baselines and FID/KID)."""
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    output, target = SCORED[kind]
    rows = []
    for stem, real_A, fake_B, real_B in items:
        shown = pictures(real_A, fake_B, real_B, kind)
        files = []
        for label, array in shown.items():
            files.append((label, f"images/{stem}_{label}.png"))
            save_png(array, os.path.join(out, files[-1][1]), aspect_ratio)
        rows.append((stem, files, {"name": stem, **score(shown[output], shown[target])}))
        if kept is not None:
            kept.append((shown["real_A"], shown[output], shown[target]))
    return rows


def score_and_write(
    items,
    out: str,
    title: str,
    protocol: str,
    sort: str = "name",
    width: int = 256,
    aspect_ratio: float = 1.0,
    kind: str = "pix2pix",
) -> dict:
    """`fastpix test`: save (resized to aspect_ratio), score, write index.html (images `width` px wide:
    --display_winsize) and scores.json; return the report."""
    rows = save_and_score(items, out, aspect_ratio=aspect_ratio, kind=kind)
    report = aggregate([r[2] for r in rows], protocol)
    write_results(out, title, rows, report, sort, width)
    return report


def write_results(out: str, title: str, rows: list[tuple], report: dict, sort: str = "name", width: int = 256):
    """<out>/index.html (the aggregate table on top, then per image input, output and target with its metrics,
    by name or worst L1 first) and <out>/scores.json (the report)."""
    if sort == "worst":
        rows = sorted(rows, key=lambda r: -r[2]["l1"])
    header = f"<p>{html.escape(report['protocol'])}; {report['n']} images</p>" + summary_html(report)
    page_rows = [
        (f"{stem} — " + ", ".join(f"{m} {scores[m]:.4g}" for m in METRICS), files) for stem, files, scores in rows
    ]
    write_index(out, title, page_rows, width, header_html=header)
    write_json(os.path.join(out, SCORES_FILE), report)


def write_json(path: str, report: dict):
    """Strict JSON: a non-finite value (the PSNR of identical images is +inf) is written as a string."""

    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [finite(v) for v in value]
        return value

    atomic_write_bytes(path, json.dumps(finite(report), indent=2, allow_nan=False).encode())


def summary_html(report: dict) -> str:
    baselines = report.get("baselines", {})
    head = "".join(f"<th>{html.escape(name)}<br>mean</th>" for name in baselines)
    body = ""
    for m, s in report["metrics"].items():
        others = "".join(f"<td>{b[m]['mean']:.4g}</td>" for b in baselines.values())
        body += (
            f"<tr><td>{m}</td><td>{s['mean']:.4g}</td><td>{s['std']:.4g}</td><td>{s['min']:.4g}</td>"
            f"<td>{s['max']:.4g}</td>{others}<td>{html.escape(METRICS[m])}</td></tr>"
        )
    extra = "".join(
        f"<p>{key.upper()}: {html.escape(describe(report[key]))}</p>" for key in ("fid", "kid") if key in report
    )
    if "fcn_score" in report:
        from fastpix.fcn_score import summary_html as fcn_html

        extra += fcn_html(report["fcn_score"])
    return (
        "<table border='1' cellpadding='4'><tr><th>metric</th><th>mean</th><th>std</th><th>min</th>"
        f"<th>max</th>{head}<th></th></tr>{body}</table><p>{html.escape(report['scale'])}</p>{extra}"
    )


def saved_images(folder: str) -> tuple[list[str], str, str]:
    """The image stems of a results folder (--results), the protocol that made them and the model kind whose
    pictures they are (colorization's outputs are <stem>_fake_B_rgb.png).

    A fastpix folder's scores.json names the images of its last run (a folder reused by a run with a smaller
    --num_test still holds the older images); a reference results folder has none, and every output picture
    counts.
    """
    manifest = os.path.join(folder, SCORES_FILE)
    images = os.path.join(glob.escape(folder), "images")
    if os.path.isfile(manifest):
        with open(manifest) as f:
            saved = json.load(f)
        stems = [r["name"] for r in saved["per_image"]]
        first = stems[0] if stems else ""
        kind = (
            "colorization" if os.path.isfile(os.path.join(folder, "images", f"{first}_fake_B_rgb.png")) else "pix2pix"
        )
        return stems, saved["protocol"], kind
    for kind in ("pix2pix", "colorization"):
        suffix = f"_{SCORED[kind][0]}.png"
        fakes = sorted(glob.glob(os.path.join(images, f"*{suffix}")))
        if fakes:
            return ([os.path.basename(p)[: -len(suffix)] for p in fakes], "an unknown protocol (no scores.json)", kind)
    raise DataError(
        f"--results {folder}: no scores.json and no images/*_fake_B.png (or colorization's "
        "*_fake_B_rgb.png) (expected a fastpix or reference results folder such as "
        "results/<name>/test_latest)"
    )


def saved_image(folder: str, stem: str, label: str) -> np.ndarray | None:
    """A saved picture of a results folder; None when there is none."""
    from fastpix.data.decode import decode_image

    path = os.path.join(folder, "images", f"{stem}_{label}.png")
    return decode_image(path, "RGB") if os.path.isfile(path) else None


def load_saved(folder: str, stem: str, label: str) -> np.ndarray:
    image = saved_image(folder, stem, label)
    if image is None:
        raise DataError(f"{os.path.join(folder, 'images', f'{stem}_{label}.png')}: missing (--results {folder})")
    return image


def score_saved(folder: str, kept: list | None = None) -> dict:
    """The report for a results folder's saved images; `kept` as in score_and_write (real_A may be None)."""
    stems, protocol, kind = saved_images(folder)
    per_image = []
    for stem in stems:
        fake, real = (load_saved(folder, stem, label) for label in SCORED[kind])
        per_image.append({"name": stem, **score(fake, real)})
        if kept is not None:
            kept.append((saved_image(folder, stem, "real_A"), fake, real))
    return aggregate(per_image, f"saved results in {folder}, made with {protocol}")


def baseline_scores(pairs: list[tuple[np.ndarray, np.ndarray]], mean_target: np.ndarray | None) -> dict:
    """Scores of the trivial translations over (input, target) pairs: output = input; output = mean target."""
    from fastpix.metrics import summarize

    found = {}
    if all(a is not None and a.shape == b.shape for a, b in pairs):
        values = [score(a, b) for a, b in pairs]
        found["output = input"] = {m: summarize([v[m] for v in values]) for m in METRICS}
    if mean_target is not None:
        values = [score(mean_target, b) for _, b in pairs if b.shape == mean_target.shape]
        found["output = mean training target"] = {m: summarize([v[m] for v in values]) for m in METRICS}
    return found


def mean_training_target(model_cfg, data_cfg) -> np.ndarray:
    """The per-pixel mean of the training split's target pictures at the test transform (uint8)."""
    from fastpix.infer.protocol import protocol_dataset

    kind = model_kind(vars(model_cfg), vars(data_cfg))
    dataset = protocol_dataset(model_cfg, data_cfg, "train")
    total: np.ndarray | None = None
    count = 0
    for i in range(len(dataset)):
        item = dataset[i]
        if item is None:
            continue
        b = pictures(item["A"], item["B"], item["B"], kind)[SCORED[kind][1]].astype(np.float64)
        total, count = (b if total is None else total + b), count + 1
    if total is None:
        raise DataError(f"{data_cfg.dataroot}/train: no readable pair for the mean training target (--baselines)")
    return np.round(total / count).astype(np.uint8)


def add_fid_kid(report: dict, kept: list, weights: str | None, device):
    """FID and KID of the outputs against the targets, with the user's feature network; else say why not."""
    if weights is None:
        report["fid"] = report["kid"] = "skipped: no --inception-weights given (fastpix downloads nothing)"
        return
    if len(kept) < 2:
        report["fid"] = report["kid"] = f"skipped: FID/KID need at least 2 images, got {len(kept)}"
        return
    from fastpix import fid

    net = fid.load_feature_network(weights, device)
    feat_fake = fid.features(net, [f for _, f, _ in kept], device)
    feat_real = fid.features(net, [b for _, _, b in kept], device)
    report["fid"] = fid.fid(feat_fake, feat_real)
    mean, std = fid.kid(feat_fake, feat_real)
    report["kid"] = {"mean": mean, "std": std}


def run_test(model_cfg, data_cfg, test_cfg, weights: str, width: int = 256, aspect_ratio: float = 1.0) -> str:
    """Translate with the generator in `weights` and write <results_dir>/<name>/<phase>_<epoch>/ (images resized
    to the reference's --aspect_ratio, index.html with per-image metrics, its images `width` px wide: the
    reference's --display_winsize); return it."""
    from fastpix.infer.protocol import build_generator, protocol_dataset, protocol_name, translate_split
    from fastpix.runtime import default_device

    device = default_device(test_cfg.device)
    G = build_generator(model_cfg, weights, device)
    dataset = protocol_dataset(model_cfg, data_cfg, test_cfg.phase)
    out = os.path.join(test_cfg.results_dir, test_cfg.name, f"{test_cfg.phase}_{test_cfg.epoch}")
    if test_cfg.load_iter > 0:
        out += f"_iter{test_cfg.load_iter}"  # the reference's folder for --load_iter
    items = translate_split(G, dataset, test_cfg.num_test, test_cfg.eval, test_cfg.seed, device, test_cfg.precision)
    title = f"Experiment = {test_cfg.name}, Phase = {test_cfg.phase}, Epoch = {test_cfg.epoch}"
    score_and_write(
        items,
        out,
        title,
        protocol_name(test_cfg.eval, test_cfg.seed),
        sort=test_cfg.sort,
        width=width,
        aspect_ratio=aspect_ratio,
        kind=model_kind(vars(model_cfg), vars(data_cfg)),
    )
    return out


def run_eval(model_cfg, data_cfg, cfg, weights: str | None, run_name: str) -> dict:
    """`fastpix eval`: translate cfg.phase with the generator in `weights` under the chosen protocol and score
    it (or score the saved images in cfg.results), add the baselines and FID/KID as asked, and write the results
    page <results_dir>/<run_name>/eval_<phase>_<epoch>/ (not for --results). Returns the report."""
    from fastpix.fcn_score import check_options
    from fastpix.infer.protocol import build_generator, protocol_dataset, protocol_name, translate_split
    from fastpix.runtime import default_device

    check_options(cfg)
    device = default_device(cfg.device)
    # (input, output, target) pictures, kept for the baselines, FID/KID and the FCN-score
    kept: list = []
    keeping = kept if cfg.baselines or cfg.inception_weights or cfg.segmenter else None
    rows = None
    if cfg.results:
        report = score_saved(cfg.results, keeping)
    else:
        assert weights is not None, "the CLI resolves the weights unless --results is given"
        G = build_generator(model_cfg, weights, device)
        dataset = protocol_dataset(model_cfg, data_cfg, cfg.phase)
        epoch = os.path.splitext(os.path.basename(weights))[0].removesuffix("_net_G")
        out = os.path.join(cfg.results_dir, run_name, f"eval_{cfg.phase}_{epoch}")
        items = translate_split(G, dataset, cfg.num_test, cfg.eval, cfg.seed, device, cfg.precision)
        rows = save_and_score(items, out, keeping, kind=model_kind(vars(model_cfg), vars(data_cfg)))
        report = aggregate([r[2] for r in rows], protocol_name(cfg.eval, cfg.seed))
    if cfg.baselines:
        mean_target = mean_training_target(model_cfg, data_cfg) if data_cfg.dataroot else None
        report["baselines"] = baseline_scores([(a, b) for a, _, b in kept], mean_target)
    add_fid_kid(report, kept, cfg.inception_weights, device)
    if cfg.segmenter:
        from fastpix.fcn_score import fcn_score

        report["fcn_score"] = fcn_score(kept, [r["name"] for r in report["per_image"]], cfg, device)
    if rows is not None and weights is not None:
        write_results(
            out, f"Evaluation of {run_name} ({os.path.basename(weights)}), phase {cfg.phase}", rows, report, cfg.sort
        )
        report["page"] = os.path.join(out, "index.html")
    return report


def format_report(report: dict) -> str:
    columns = {"model": report["metrics"], **report.get("baselines", {})}
    lines = [
        f"{report['n']} images; {report['protocol']}",
        report["scale"],
        f"{'metric':<10}" + "".join(f"{name:>32}" for name in columns),
    ]
    for m in METRICS:
        cells = "".join(f"{c[m]['mean']:>22.4f} ± {c[m]['std']:<7.4f}" for c in columns.values())
        lines.append(f"{m:<10}{cells}")
    for key in ("fid", "kid"):
        if key in report:
            lines.append(f"{key.upper()}: {describe(report[key])}")
    if "fcn_score" in report:
        from fastpix.fcn_score import format_lines

        lines += format_lines(report["fcn_score"])
    return "\n".join(lines)


def describe(value) -> str:
    """FID (a number), KID (mean and std) or why they were skipped (a sentence)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return f"{value['mean']:.6g} ± {value['std']:.2g}"
    return f"{value:.6g}"
