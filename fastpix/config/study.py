"""The perceptual study's configs: the study page (`fastpix study make`) and its server (`fastpix study serve`)."""

from __future__ import annotations

from dataclasses import dataclass

from fastpix.config.fields import opt
from fastpix.config.http import HttpServerConfig


@dataclass
class StudyConfig:
    """The real-vs-fake perceptual study of the paper (§4.1): `fastpix study make` writes these into the page."""

    practice_trials: int = opt(10, "practice trials at the start of a session, with feedback")
    scored_trials: int = opt(40, "scored trials that follow, without feedback")
    attention_checks: int = opt(
        2,
        "extra trials among the scored ones pitting a real image against a blank one "
        "(not scored; an observer who misses one is flagged and left out of the pooled score)",
    )
    exposure_ms: int = opt(1000, "how long each pair is shown before it is blanked")
    feedback_ms: int = opt(1000, "how long practice feedback stays on screen")
    gap_ms: int = opt(500, "blank pause (a fixation cross) before each pair")
    image_size: int = opt(256, "images are shown at this many CSS pixels square (the paper: 256)")
    seed: int = opt(0, "study seed: with the observer id it fixes the model, the image order and the sides")


@dataclass
class StudyServeConfig(HttpServerConfig):
    port: int = opt(8100, "TCP port to listen on (0: any free port)")
    answers: str = opt(None, "JSON-lines file the sessions are appended to (default: <study>/answers.jsonl)")
    max_bytes: int = opt(256 * 2**10, "largest answers submission accepted (bigger: 413)")
