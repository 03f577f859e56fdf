"""`fastpix study make`: a self-contained study folder from one or more results folders.

A results folder is fastpix's or the reference's results/<name>/<phase>_<epoch>/, holding
images/<stem>_{real_A,fake_B,real_B}.png (colorization's: <stem>_{fake_B_rgb,real_B_rgb}.png, the RGB pictures); each
one is a model of the study. The folder written:
    index.html    the page (style and script inline; the study below embedded, so it also runs from a file)
    study.json    the study: id, protocol (a StudyConfig), models with their image stems
    images/m<k>/  each model's <stem>_fake_B.png and <stem>_real_B.png; images/blank.png (the attention check)
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import shutil

import numpy as np

from fastpix.data.dataset import DataError
from fastpix.data.pictures import SCORED
from fastpix.study.template import PAGE

STUDY_FILE = "study.json"
PAGE_FILE = "index.html"
ANSWERS_FILE = "answers.jsonl"
BLANK = "images/blank.png"


def result_stems(folder: str) -> tuple[list[str], tuple[str, str]]:
    """The stems with both an output and a target picture in <folder>/images/, and those pictures' labels:
    (fake_B, real_B), or colorization's (fake_B_rgb, real_B_rgb)."""
    for fake, real in SCORED.values():
        fakes = sorted(glob.glob(os.path.join(glob.escape(folder), "images", f"*_{fake}.png")))
        stems = [os.path.basename(p)[: -len(f"_{fake}.png")] for p in fakes]
        stems = [s for s in stems if os.path.isfile(os.path.join(folder, "images", f"{s}_{real}.png"))]
        if stems:
            return stems, (fake, real)
    raise DataError(
        f"--results {folder}: no images/<stem>_fake_B.png with its <stem>_real_B.png (or colorization's "
        "_fake_B_rgb and _real_B_rgb) (expected a results folder such as results/<name>/test_latest)"
    )


def model_name(folder: str) -> str:
    """results/<name>/<phase>_<epoch> → '<name>/<phase>_<epoch>'."""
    parts = os.path.normpath(os.path.abspath(folder)).split(os.sep)
    return "/".join(parts[-2:])


def make_study(folders: list[str], out: str, cfg, names: list[str] | None = None) -> dict:
    """Write the study folder `out` for the results `folders` under the protocol `cfg` (a StudyConfig)."""
    from PIL import Image

    names = list(names) if names else [model_name(f) for f in folders]
    if len(names) != len(folders) or len(set(names)) != len(names):
        raise DataError(
            f"--names: one distinct name per --results folder (got {len(names)} names for "
            f"{len(folders)} folders: {names})"
        )
    if cfg.scored_trials < 1 or cfg.practice_trials < 0 or cfg.attention_checks < 0:
        raise DataError("--scored-trials must be at least 1, --practice-trials and --attention-checks at least 0")
    models = []
    for k, (folder, name) in enumerate(zip(folders, names)):
        stems, labels = result_stems(folder)
        target = os.path.join(out, "images", f"m{k}")
        os.makedirs(target, exist_ok=True)
        for stem in stems:
            for label, shown in zip(labels, ("fake_B", "real_B")):  # the page shows <stem>_{fake_B,real_B}.png
                shutil.copyfile(
                    os.path.join(folder, "images", f"{stem}_{label}.png"), os.path.join(target, f"{stem}_{shown}.png")
                )
        models.append({"name": name, "source": os.path.abspath(folder), "folder": f"images/m{k}", "stems": stems})
    Image.fromarray(np.full((cfg.image_size, cfg.image_size, 3), 128, dtype=np.uint8)).save(os.path.join(out, BLANK))
    protocol = dataclasses.asdict(cfg)
    content = json.dumps({"protocol": protocol, "models": models}, sort_keys=True).encode()
    study = {
        "study_id": hashlib.sha256(content).hexdigest()[:16],
        "protocol": protocol,
        "models": models,
        "blank": BLANK,
    }
    with open(os.path.join(out, STUDY_FILE), "w") as f:
        json.dump(study, f, indent=2)
    embedded = json.dumps(study).replace("<", "\\u003c")  # no "</script>" or "<!--" inside the script element
    page = PAGE.replace("__SIZE__", str(int(cfg.image_size))).replace("__STUDY__", embedded)
    with open(os.path.join(out, PAGE_FILE), "w", encoding="utf-8") as f:
        f.write(page)
    return study


def load_study(folder: str) -> dict:
    path = os.path.join(folder, STUDY_FILE)
    if not os.path.isfile(path):
        raise DataError(
            f"{folder}: no {STUDY_FILE} (make the study first: fastpix study make --results DIR --out {folder})"
        )
    with open(path) as f:
        return json.load(f)
