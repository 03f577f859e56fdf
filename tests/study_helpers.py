"""Results folders and sessions for the perceptual-study tests (tests/test_study*.py)."""

import numpy as np
from PIL import Image


def write_results(folder, stems, size=16, seed=0):
    """A results folder as `fastpix test` writes it: images/<stem>_{real_A,fake_B,real_B}.png."""
    images = folder / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for stem in stems:
        for label in ("real_A", "fake_B", "real_B"):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(images / f"{stem}_{label}.png")
    return folder


def session(study, observer, model, answers, attention=None):
    """A complete session of `study`, as the page posts it: answers[i] is True when scored trial i names the
    generated image as fake (so False = judged real); attention[j] likewise for the attention checks."""
    p = study["protocol"]
    stems = next(m["stems"] for m in study["models"] if m["name"] == model)
    attention = [True] * p["attention_checks"] if attention is None else attention
    kinds = (
        [("practice", True)] * p["practice_trials"]
        + [("scored", a) for a in answers]
        + [("attention", a) for a in attention]
    )
    trials = []
    for i, (kind, names_fake) in enumerate(kinds):
        fake = "left" if i % 2 else "right"
        other = "right" if fake == "left" else "left"
        trials.append(
            {
                "index": i,
                "kind": kind,
                "stem": stems[i % len(stems)],
                "fake_side": fake,
                "answer": fake if names_fake else other,
                "rt_ms": 500 + i,
                "shown_ms": 1000,
            }
        )
    return {
        "study_id": study["study_id"],
        "observer": observer,
        "model": model,
        "started": "",
        "finished": "",
        "user_agent": "test",
        "trials": trials,
    }
