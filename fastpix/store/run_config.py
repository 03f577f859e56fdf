"""config.json: what a run was trained with, as the CLI and `fastpix test`/`eval` read it back. Also the one way
the store reads its JSON files (config.json, checkpoint.json): a damaged one is a one-line CheckpointError."""

from __future__ import annotations

import dataclasses
import json
import os

from fastpix.errors import CheckpointError
from fastpix.files import atomic_write_json

CONFIG = "config.json"


def read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix or remove it") from exc
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: not a text file ({exc.reason})") from exc


def saved_config(run_dir: str) -> dict:
    """The model and data sections of a run's config.json, as one dict of option values; {} for a folder without
    one (a reference checkpoints folder, or a weights file's folder)."""
    path = os.path.join(run_dir, CONFIG)
    if not os.path.isfile(path):
        return {}
    saved = read_json(path)
    sections = [saved.get(k, {}) for k in ("data", "model")] if isinstance(saved, dict) else None
    if sections is None or not all(isinstance(s, dict) for s in sections):
        raise CheckpointError(f"{path}: not a fastpix run configuration (expected model and data sections)")
    return {**sections[0], **sections[1]}


def write_run_config(run_dir: str, model_cfg, data_cfg, train_cfg):
    """config.json of a run: the values it runs with (the caller puts decided values, such as the precision, in)."""
    atomic_write_json(
        os.path.join(run_dir, CONFIG),
        {
            "model": dataclasses.asdict(model_cfg),
            "data": dataclasses.asdict(data_cfg),
            "train": dataclasses.asdict(train_cfg),
        },
    )
