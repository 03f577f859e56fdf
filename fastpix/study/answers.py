"""The answers file: one JSON line per observer session, checked against the study before it is appended.

A session is what the page posts at its end: {"study_id", "observer", "model", "started", "finished",
"user_agent", "trials": [{"index", "kind", "stem", "fake_side", "answer", "rt_ms", "shown_ms"}, ...]}, with kind
practice, scored or attention. Each line is written with one write(), flushed and fsync'ed before the server
answers, so an acknowledged session survives a crash. A line torn by a crash or a full disk mid-write is skipped (and
counted) on reading; before the next append it gets its newline, so that the fragment stays in the file, a line of
its own for a person to inspect, and the next session's line is whole.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from datetime import datetime, timezone

from fastpix.files import disk_full, is_disk_full

KINDS = ("practice", "scored", "attention")
SIDES = ("left", "right")
TEXT_FIELDS = {"observer": 200, "started": 64, "finished": 64, "user_agent": 500}


class SessionError(ValueError):
    """A submission that is not a complete session of this study."""


def check_trial(trial, stems: set, number: int) -> dict:
    if not isinstance(trial, dict):
        raise SessionError(f"trial {number}: expected an object, got {type(trial).__name__}")
    kind, stem = trial.get("kind"), trial.get("stem")
    if kind not in KINDS:
        raise SessionError(f"trial {number}: kind must be one of {KINDS}, got {str(kind)[:40]!r}")
    if stem not in stems:
        raise SessionError(f"trial {number}: stem {str(stem)[:80]!r} is not an image of this model")
    for key in ("fake_side", "answer"):
        if trial.get(key) not in SIDES:
            raise SessionError(f"trial {number}: {key} must be 'left' or 'right', got {str(trial.get(key))[:40]!r}")
    clean = {"index": number, "kind": kind, "stem": stem, "fake_side": trial["fake_side"], "answer": trial["answer"]}
    for key in ("rt_ms", "shown_ms"):
        value = trial.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise SessionError(f"trial {number}: {key} must be a non-negative number, got {str(value)[:40]!r}")
        clean[key] = value
    return clean


def check_session(payload, study: dict) -> dict:
    """The session as it will be stored (known fields only, plus the server's receipt time), or SessionError."""
    if not isinstance(payload, dict):
        raise SessionError(f"expected a JSON object, got {type(payload).__name__}")
    if payload.get("study_id") != study["study_id"]:
        raise SessionError(
            f"study_id {str(payload.get('study_id'))[:40]!r} is not this study's "
            f"({study['study_id']}): a page of another study?"
        )
    models = {m["name"]: set(m["stems"]) for m in study["models"]}
    if payload.get("model") not in models:
        raise SessionError(f"model {str(payload.get('model'))[:80]!r} is not one of {sorted(models)}")
    session = {"study_id": study["study_id"], "model": payload["model"]}
    for key, limit in TEXT_FIELDS.items():
        value = payload.get(key, "")
        if not isinstance(value, str) or len(value) > limit or (key == "observer" and not value):
            raise SessionError(
                f"{key} must be a string of at most {limit} characters"
                + (" (and not empty)" if key == "observer" else "")
            )
        session[key] = value
    trials = payload.get("trials")
    protocol = study["protocol"]
    expected = {
        "practice": protocol["practice_trials"],
        "scored": protocol["scored_trials"],
        "attention": protocol["attention_checks"],
    }
    if not isinstance(trials, list) or len(trials) != sum(expected.values()):
        raise SessionError(
            f"trials must be a list of {sum(expected.values())} trials (practice, scored and "
            "attention checks of one whole session)"
        )
    session["trials"] = [check_trial(t, models[payload["model"]], i) for i, t in enumerate(trials)]
    counts = {kind: sum(t["kind"] == kind for t in session["trials"]) for kind in KINDS}
    if counts != expected:
        raise SessionError(f"trial kinds {counts} do not match the protocol {expected}")
    session["received"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return session


class AnswersFile:
    """Appends sessions to a JSON-lines file, durably, one writer at a time."""

    def __init__(self, path: str):
        self.path = path
        self.lock = threading.Lock()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def append(self, session: dict):
        """Append `session` as one line, on disk (fsync'ed) when this returns. A torn last line first gets its
        newline (see the module doc). No space left: DiskFull; any other OSError is raised as it is."""
        line = (json.dumps(session, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        with self.lock:
            try:
                with open(self.path, "a+b") as f:
                    torn = ends_torn(f)
                    if torn:
                        logging.getLogger(__name__).warning(
                            "%s: its last line was torn (no newline: a crash or a full disk); it now ends there, so "
                            "that this session starts a line of its own (study report counts the fragment as "
                            "unreadable)",
                            self.path,
                        )
                    f.write((b"\n" if torn else b"") + line)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                if is_disk_full(exc):
                    raise disk_full(self.path, len(line), "; the session was not saved") from exc
                raise


def ends_torn(f) -> bool:
    """Whether the file open as f ends in a line without its newline: an append torn by a crash or a full disk."""
    size = os.fstat(f.fileno()).st_size
    if size == 0:
        return False
    f.seek(size - 1)
    return f.read(1) != b"\n"


def read_sessions(path: str) -> tuple[list[dict], int]:
    """The sessions of an answers file, and how many lines could not be read (a crash can tear the last one)."""
    sessions, bad = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(value, dict) and isinstance(value.get("trials"), list):
                sessions.append(value)
            else:
                bad += 1
    return sessions, bad
