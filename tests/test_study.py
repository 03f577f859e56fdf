"""The perceptual study without a browser: the study folder, the answers server and file, the report.
(tests/test_study_browser.py runs whole sessions in headless Chromium.)"""

import json
import os
import re
import urllib.error
import urllib.request

import pytest
from study_helpers import session, write_results

from fastpix.cli import main
from fastpix.config import StudyConfig, StudyServeConfig
from fastpix.study.answers import read_sessions
from fastpix.study.page import load_study, make_study
from fastpix.study.report import build_report, format_report, wilson

fastapi = pytest.importorskip("fastapi", reason="the study server needs the 'serve' extra: pip install fastpix[serve]")


@pytest.fixture
def study_dir(tmp_path):
    a = write_results(tmp_path / "results" / "facades" / "test_latest", [f"{i:03d}" for i in range(6)])
    b = write_results(tmp_path / "results" / "facades_l1" / "test_latest", ["x 1", "x#2", "x3"], seed=1)
    out = tmp_path / "study"
    assert main(["study", "make", "--results", str(a), str(b), "--out", str(out), "--exposure-ms", "50"]) == 0
    return out


def post(url, body: bytes, content_type="application/json"):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_study_folder_is_self_contained(study_dir):
    study = load_study(str(study_dir))
    assert [m["name"] for m in study["models"]] == ["facades/test_latest", "facades_l1/test_latest"]
    assert study["models"][1]["stems"] == ["x 1", "x#2", "x3"]
    assert study["protocol"] == {**StudyConfig().__dict__, "exposure_ms": 50}
    for m in study["models"]:
        for stem in m["stems"]:
            assert (study_dir / m["folder"] / f"{stem}_fake_B.png").is_file()
            assert (study_dir / m["folder"] / f"{stem}_real_B.png").is_file()
    assert (study_dir / study["blank"]).is_file()
    page = (study_dir / "index.html").read_text()
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page) and "@import" not in page
    embedded = re.search(r'<script id="study-data" type="application/json">(.*?)</script>', page, re.S).group(1)
    assert json.loads(embedded) == study


def test_make_names_the_bad_folder(tmp_path, capsys):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    assert main(["study", "make", "--results", str(tmp_path / "empty"), "--out", str(tmp_path / "s")]) == 2
    assert "empty" in capsys.readouterr().err
    with pytest.raises(Exception, match="--names"):
        make_study([str(write_results(tmp_path / "r", ["a"]))], str(tmp_path / "s"), StudyConfig(), ["x", "y"])


def test_wilson_interval_matches_published_values():
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(40, 40)[1] == pytest.approx(1.0) and wilson(40, 40)[0] == pytest.approx(0.9124, abs=1e-4)
    assert wilson(0, 0) is None


def test_report_pools_observers_who_pass_and_flags_the_others(study_dir, capsys):
    study = load_study(str(study_dir))
    model = study["models"][0]["name"]
    alice = session(study, "alice", model, [i % 4 != 0 for i in range(40)])  # 10 of 40 judged real
    bob = session(study, "bob", model, [i % 2 == 0 for i in range(40)])  # 20 of 40
    carol = session(study, "carol", model, [False] * 40, attention=[True, False])  # missed a check
    again = session(study, "alice", model, [False] * 40)  # alice's second session
    report = build_report(study, [alice, bob, carol, again])
    m = report["models"][model]
    assert (m["judged_real"], m["n"], m["observers"]) == (30, 80, 2)
    assert m["judged_real_pct"] == pytest.approx(37.5)
    assert m["ci95_pct"] == pytest.approx([100 * v for v in wilson(30, 80)])
    assert m["observer_mean_pct"] == pytest.approx(37.5) and m["observer_sem_pct"] == pytest.approx(12.5)
    assert [(e["observer"], e["why"].split()[0]) for e in m["excluded"]] == [("carol", "missed"), ("alice", "a")]
    rows = {(r["observer"], r["excluded"] is None): r for r in m["per_observer"]}
    assert rows[("carol", False)]["judged_real"] == 40 and rows[("alice", True)]["judged_real_pct"] == 25
    assert report["models"][study["models"][1]["name"]]["n"] == 0
    text = format_report(report)
    assert "EXCLUDED: missed 1 of 2 attention checks" in text and "37.5%" in text and "2 observers excluded" in text


def test_server_appends_valid_sessions_and_refuses_the_rest(study_dir):
    from fastpix.infer.server import BackgroundServer
    from fastpix.study.server import create_app

    study = load_study(str(study_dir))
    model = study["models"][1]["name"]
    good = session(study, "dana", model, [True] * 40)
    wrong_study = {**good, "study_id": "0" * 16}
    bad_side = json.loads(json.dumps(good))
    bad_side["trials"][3]["answer"] = "up"
    short = {**good, "trials": good["trials"][:-1]}
    foreign_stem = json.loads(json.dumps(good))
    foreign_stem["trials"][0]["stem"] = "../../etc/passwd"
    cfg = StudyServeConfig(port=0, max_bytes=64 * 1024)
    with BackgroundServer(create_app(str(study_dir), cfg)) as server:
        with urllib.request.urlopen(server.url + "/", timeout=10) as page:
            assert b"study-data" in page.read()
        with urllib.request.urlopen(server.url + "/images/m1/x%232_fake_B.png", timeout=10) as image:
            assert image.read()[:4] == b"\x89PNG"
        assert post(server.url + "/api/answers", json.dumps(good).encode()) == (200, {"saved": True, "trials": 52})
        refused = (
            (b"{not json", 400, "not JSON"),
            (json.dumps(wrong_study).encode(), 400, "study_id"),
            (json.dumps(bad_side).encode(), 400, "answer"),
            (json.dumps(short).encode(), 400, "52"),
            (json.dumps(foreign_stem).encode(), 400, "stem"),
            (b"[" * 70000, 413, "65536"),
        )
        for body, status, words in refused:
            code, answer = post(server.url + "/api/answers", body)
            assert code == status and words in answer["error"], (code, answer)
        assert post(server.url + "/api/answers", json.dumps(good).encode())[0] == 200
        with urllib.request.urlopen(server.url + "/healthz", timeout=10) as health:
            assert json.loads(health.read()) == {"status": "ok", "sessions": 2}
    lines = (study_dir / "answers.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["trials"] == good["trials"]
    assert json.loads(lines[0])["received"]


def test_torn_last_line_is_skipped_and_counted(study_dir, capsys):
    study = load_study(str(study_dir))
    model = study["models"][0]["name"]
    line = json.dumps(session(study, "erin", model, [False] * 40))
    (study_dir / "answers.jsonl").write_text(line + "\n" + line[: len(line) // 2])
    sessions, bad = read_sessions(str(study_dir / "answers.jsonl"))
    assert len(sessions) == 1 and bad == 1
    downloaded = session(study, "fay", model, [True] * 40)  # a session saved from the page opened as a file
    del downloaded["trials"][12]["answer"]
    (study_dir / "fay.json").write_text(json.dumps(downloaded))
    assert (
        main(
            [
                "study",
                "report",
                str(study_dir),
                "--answers",
                str(study_dir / "answers.jsonl"),
                str(study_dir / "fay.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "1 unreadable lines" in out and "1 incomplete or malformed" in out
    assert "100.0% [91.2, 100.0] of 40 trials" in out
    assert json.loads((study_dir / "report.json").read_text())["models"][model]["judged_real"] == 40


def test_a_torn_last_line_is_ended_before_the_next_session_is_appended(study_dir):
    from fastpix.infer.server import BackgroundServer
    from fastpix.study.server import create_app

    study = load_study(str(study_dir))
    model = study["models"][0]["name"]
    line = json.dumps(session(study, "gus", model, [True] * 40))
    answers = study_dir / "answers.jsonl"
    answers.write_text(line + "\n" + line[:100])  # a crash (or a full disk) tore the second append
    with BackgroundServer(create_app(str(study_dir), StudyServeConfig(port=0))) as server:
        hana = json.dumps(session(study, "hana", model, [False] * 40)).encode()
        assert post(server.url + "/api/answers", hana) == (200, {"saved": True, "trials": 52})
    sessions, bad = read_sessions(str(answers))
    assert [s["observer"] for s in sessions] == ["gus", "hana"] and bad == 1  # the acknowledged session is whole
    assert answers.read_text().split("\n")[1] == line[:100]  # and the fragment is kept, on a line of its own


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="/dev/full (Linux) answers every write with ENOSPC")
def test_a_failed_write_answers_a_json_error_and_acknowledges_nothing(study_dir, tmp_path):
    from fastpix.infer.server import BackgroundServer
    from fastpix.study.server import create_app

    study = load_study(str(study_dir))
    body = json.dumps(session(study, "ian", study["models"][0]["name"], [True] * 40)).encode()
    (tmp_path / "a folder").mkdir()
    for answers, status, words in [
        ("/dev/full", 507, "no space left"),  # a full disk
        (str(tmp_path / "a folder"), 500, "internal server error"),
    ]:  # any other OSError
        with BackgroundServer(create_app(str(study_dir), StudyServeConfig(port=0, answers=answers))) as server:
            code, answer = post(server.url + "/api/answers", body)
            assert code == status and words in answer["error"] and "saved" not in answer, (code, answer)
            with urllib.request.urlopen(server.url + "/healthz", timeout=10) as health:
                assert json.loads(health.read())["sessions"] == 0


@pytest.mark.parametrize(
    "body", [b"[" * 100_000 + b"]" * 100_000, b'{"observer": "\xff\xfe"}', b"[1, 2]", b"null", b'"a string"', b"1e999"]
)
def test_a_body_that_is_no_json_object_answers_400(study_dir, body):
    from fastpix.infer.server import BackgroundServer
    from fastpix.study.server import create_app

    with BackgroundServer(create_app(str(study_dir), StudyServeConfig(port=0, max_bytes=2**20))) as server:
        code, answer = post(server.url + "/api/answers", body)
    assert code == 400 and "JSON" in answer["error"], (code, answer)


def test_report_prints_hostile_observer_ids_escaped_on_one_line_each(study_dir):
    study = load_study(str(study_dir))
    model = study["models"][0]["name"]
    ids = ["\x1b[2J\x1b[1;31mmallory", "eve\nfacades: pooled 100.0%", "\u202etrudy", "back\\slash", "ok\r"]
    text = format_report(build_report(study, [session(study, o, model, [True] * 40) for o in ids]))
    assert all(c.isprintable() for line in text.splitlines() for c in line)  # no escape, no bidi override, no CR
    rows = [line for line in text.splitlines() if " 0/40 " in line]
    assert len(rows) == len(ids)  # one line per observer: no forged lines
    for escaped in (
        "\\x1b[2J\\x1b[1;31mmallory",
        "eve\\nfacades: pooled 100.0%",
        "\\u202etrudy",
        "back\\\\slash",
        "ok\\r",
    ):
        assert sum(escaped in row for row in rows) == 1, escaped
