"""`fastpix study`: the paper's real-vs-fake perceptual study (make a study folder, serve it, report the answers)."""

from __future__ import annotations

import os

from fastpix.cli.flags import build_config, subcommand
from fastpix.config import StudyConfig, StudyServeConfig
from fastpix.errors import DataError, MissingDependency


def cmd_study_make(args):
    """Write a self-contained real-vs-fake study (index.html, study.json, images/) from results folders."""
    from fastpix.study.page import make_study

    cfg = build_config(StudyConfig, vars(args))
    study = make_study(args.results, args.out, cfg, args.names)
    for m in study["models"]:
        print(f"fastpix study: {m['name']}: {len(m['stems'])} image pairs from {m['source']}")
    print(f"fastpix study: written to {args.out}; run it with: fastpix study serve {args.out}")


def cmd_study_serve(args):
    """Serve a study folder: observers open http://HOST:PORT/?observer=ID; each finished session is appended to
    the answers file (fsync'ed before it is acknowledged). SIGTERM / Ctrl-C: stop and finish the submissions
    received."""
    try:
        from fastpix.study.server import create_app, run
    except ImportError as exc:
        raise MissingDependency(exc.name or "fastapi", "serve", "fastpix study serve") from exc
    cfg = build_config(StudyServeConfig, vars(args))
    app = create_app(args.folder, cfg)
    print(
        f"fastpix study: serving {args.folder} at http://{cfg.host}:{cfg.port}/?observer=ID; answers go to "
        f"{app.state.answers.path}",
        flush=True,
    )
    run(app, cfg.host, cfg.port)


def cmd_study_report(args):
    """'% judged real' per model with 95% Wilson intervals, per observer and pooled; observers who miss an
    attention check are flagged and left out of the pooled number."""
    from fastpix.study.answers import read_sessions
    from fastpix.study.page import ANSWERS_FILE, load_study
    from fastpix.study.report import build_report, format_report, write_report

    study = load_study(args.folder)
    sessions, unreadable = [], 0
    for path in args.answers or [os.path.join(args.folder, ANSWERS_FILE)]:
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such answers file (no session saved yet?)")
        found, bad = read_sessions(path)
        sessions, unreadable = sessions + found, unreadable + bad
    report = build_report(study, sessions, unreadable)
    print(format_report(report))
    target = args.json or os.path.join(args.folder, "report.json")
    write_report(report, target)
    print(f"fastpix study report: written to {target}")


def register(sub):
    p = sub.add_parser(
        "study", help="the paper's real-vs-fake perceptual study: make, serve, report", allow_abbrev=False
    )
    study_sub = p.add_subparsers(dest="study_command", required=True, metavar="WHAT")
    s = subcommand(
        study_sub, "make", cmd_study_make, "write a study folder from results folders", (StudyConfig, "protocol")
    )
    s.add_argument(
        "--results",
        nargs="+",
        required=True,
        metavar="DIR",
        help="results folders (results/<name>/<phase>_<epoch>), one per model to compare (required)",
    )
    s.add_argument("--out", required=True, metavar="DIR", help="the study folder to write (required)")
    s.add_argument(
        "--names",
        nargs="+",
        default=None,
        metavar="NAME",
        help="one name per results folder (default: <name>/<phase>_<epoch> of each)",
    )
    s = subcommand(
        study_sub,
        "serve",
        cmd_study_serve,
        "serve a study folder and collect the answers",
        (StudyServeConfig, "server"),
    )
    s.add_argument("folder", metavar="DIR", help="a folder written by fastpix study make")
    s = subcommand(study_sub, "report", cmd_study_report, "%% judged real per model, per observer and pooled")
    s.add_argument("folder", metavar="DIR", help="a folder written by fastpix study make")
    s.add_argument(
        "--answers",
        nargs="+",
        default=None,
        metavar="FILE",
        help="answers files (JSON lines; downloaded sessions too) (default: DIR/answers.jsonl)",
    )
    s.add_argument("--json", default=None, metavar="FILE", help="where to write the report (default: DIR/report.json)")
