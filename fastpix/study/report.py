"""`fastpix study report`: "% judged real" per model, per observer and pooled, from the answers file.

A scored trial counts as "judged real" when the observer named the real image as the fake one, i.e. took the
generated image for the real one (the paper's score; 50% = indistinguishable from real, at chance). Only scored
trials count: practice and attention-check trials do not. An observer who misses an attention check (names the real
photo rather than the blank image as fake) is flagged and left out of the pooled number, as is a second session of
the same observer on the same model. Intervals are 95% Wilson score intervals for a binomial proportion; the pooled
one treats every trial as independent, so the report also gives the paper's form, the mean over observers ± its
standard error, which accounts for observers differing.
"""

from __future__ import annotations

import json
import math

from fastpix.study.answers import SessionError, check_session

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of k successes in n trials (None for n = 0)."""
    if n == 0:
        return None
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def observer_row(session: dict) -> dict:
    scored = [t for t in session["trials"] if t["kind"] == "scored"]
    checks = [t for t in session["trials"] if t["kind"] == "attention"]
    practice = [t for t in session["trials"] if t["kind"] == "practice"]
    judged_real = sum(t["answer"] != t["fake_side"] for t in scored)
    missed = sum(t["answer"] != t["fake_side"] for t in checks)
    return {
        "observer": session["observer"],
        "model": session["model"],
        "n": len(scored),
        "judged_real": judged_real,
        "judged_real_pct": 100 * judged_real / len(scored) if scored else None,
        "ci95_pct": percent(wilson(judged_real, len(scored))),
        "practice_correct": sum(t["answer"] == t["fake_side"] for t in practice),
        "practice": len(practice),
        "attention_missed": missed,
        "attention_checks": len(checks),
        "excluded": None,
    }


def percent(interval):
    return None if interval is None else [100 * interval[0], 100 * interval[1]]


def model_summary(rows: list[dict]) -> dict:
    kept = [r for r in rows if r["excluded"] is None]
    k, n = sum(r["judged_real"] for r in kept), sum(r["n"] for r in kept)
    rates = [100 * r["judged_real"] / r["n"] for r in kept if r["n"]]
    mean = sum(rates) / len(rates) if rates else None
    sem = math.sqrt(sum((x - mean) ** 2 for x in rates) / (len(rates) - 1) / len(rates)) if len(rates) > 1 else None
    return {
        "observers": len(kept),
        "excluded": [{"observer": r["observer"], "why": r["excluded"]} for r in rows if r["excluded"]],
        "n": n,
        "judged_real": k,
        "judged_real_pct": 100 * k / n if n else None,
        "ci95_pct": percent(wilson(k, n)),
        "observer_mean_pct": mean,
        "observer_sem_pct": sem,
        "per_observer": rows,
    }


def build_report(study: dict, sessions: list[dict], unreadable: int = 0) -> dict:
    """The report of every session of `study` found in `sessions` (others are counted and left out)."""
    by_model: dict[str, list[dict]] = {m["name"]: [] for m in study["models"]}
    seen, foreign, invalid = set(), 0, 0
    for session in sessions:
        if session.get("study_id") != study["study_id"] or session.get("model") not in by_model:
            foreign += 1
            continue
        try:  # a downloaded session (the page opened from a file) never went through the server's check
            row = observer_row(check_session(session, study))
        except SessionError:
            invalid += 1
            continue
        if row["attention_missed"]:
            row["excluded"] = f"missed {row['attention_missed']} of {row['attention_checks']} attention checks"
        elif (row["observer"], row["model"]) in seen:
            row["excluded"] = "a repeated session (only the observer's first one counts)"
        seen.add((row["observer"], row["model"]))
        by_model[row["model"]].append(row)
    return {
        "study_id": study["study_id"],
        "protocol": study["protocol"],
        "sessions": len(sessions),
        "other_studies": foreign,
        "invalid_sessions": invalid,
        "unreadable_lines": unreadable,
        "models": {name: model_summary(rows) for name, rows in by_model.items()},
    }


def printable(text) -> str:
    """text with every character a terminal would act on (escape sequences, newlines, bidirectional overrides …)
    written as a Python repr writes it (\\x1b, \\n, \\u202e), and backslashes doubled: whatever an observer id
    holds, it prints as itself, on one line."""
    return "".join(
        c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii") for c in str(text)
    )


def fmt_pct(value, interval=None) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.1f}%"
    return text + (f" [{interval[0]:.1f}, {interval[1]:.1f}]" if interval else "")


def format_report(report: dict) -> str:
    p = report["protocol"]
    lines = [
        f"Real vs fake study {printable(report['study_id'])}: {report['sessions']} sessions; "
        f"{p['practice_trials']} practice + {p['scored_trials']} scored trials, {p['exposure_ms']} ms exposure",
        "% judged real = scored trials in which the generated image was taken for the real one "
        "(50% = at chance); [95% Wilson interval]",
    ]
    if report["unreadable_lines"] or report["other_studies"] or report["invalid_sessions"]:
        lines.append(
            f"skipped: {report['unreadable_lines']} unreadable lines, {report['other_studies']} sessions "
            f"of another study, {report['invalid_sessions']} incomplete or malformed sessions"
        )
    for name, m in report["models"].items():
        sem = "" if m["observer_sem_pct"] is None else f" ± {m['observer_sem_pct']:.1f}"
        lines.append(
            f"\n{printable(name)}: pooled {fmt_pct(m['judged_real_pct'], m['ci95_pct'])} of {m['n']} trials, "
            f"{m['observers']} observers; mean over observers {fmt_pct(m['observer_mean_pct'])}{sem} (s.e.)"
        )
        for r in m["per_observer"]:
            flag = f"  EXCLUDED: {r['excluded']}" if r["excluded"] else ""
            lines.append(
                f"  {printable(r['observer'])[:40]:<40} {r['judged_real']:>3}/{r['n']:<3} "
                f"{fmt_pct(r['judged_real_pct'], r['ci95_pct']):<22} practice {r['practice_correct']}/"
                f"{r['practice']}{flag}"
            )
        if m["excluded"]:
            lines.append(
                f"  ({len(m['excluded'])} observers excluded from the pooled number: attention check "
                "missed or session repeated)"
            )
    return "\n".join(lines)


def write_report(report: dict, path: str):
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
