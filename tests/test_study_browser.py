"""Whole study sessions in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by
selenium, against `fastpix study serve`'s app. Scripted observers answer by click and by key; the answers file and
the report must say what they clicked. Without a browser: see tests/browser.py."""

import json

import pytest
from browser import chromium, require_browser
from study_helpers import write_results

from fastpix.cli import main
from fastpix.study.page import load_study

require_browser()

from selenium.webdriver.common.by import By  # noqa: E402 - after require_browser(), which skips the module without selenium
from selenium.webdriver.common.keys import Keys  # noqa: E402 - after require_browser(), which skips the module without selenium

# Waits in the page for the next question (or the end) and says what the page shows: the observer cannot see
# the images any more (hidden), but their sources say which side holds the generated (or blank) one.
NEXT_QUESTION = """
const [after, done] = arguments;
const poll = () => {
  const s = window.study;
  if (s.state === "question" && s.index > after) {
    const left = document.getElementById("left"), right = document.getElementById("right");
    done({index: s.index, kind: s.plan[s.index].kind, left: left.getAttribute("src"),
          right: right.getAttribute("src"), hidden: getComputedStyle(left).visibility === "hidden"
          && getComputedStyle(right).visibility === "hidden"});
  } else if (["saved", "save_failed", "offline"].includes(s.state)) {
    done({state: s.state, message: document.getElementById("end-message").textContent});
  } else setTimeout(poll, 2);
};
poll();
"""
FEEDBACK = """
const done = arguments[0];
const poll = () => window.study.state === "feedback" ? done(document.getElementById("feedback").textContent)
                                                     : setTimeout(poll, 2);
poll();
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = chromium(tmp_path_factory.mktemp("chromium-profile"), 900, 700)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from fastpix.config import StudyServeConfig
    from fastpix.infer.server import BackgroundServer
    from fastpix.study.server import create_app

    root = tmp_path_factory.mktemp("study")
    results = write_results(root / "results" / "gan" / "test_latest", [f"{i:03d}" for i in range(12)])
    assert (
        main(
            [
                "study",
                "make",
                "--results",
                str(results),
                "--out",
                str(root / "study"),
                "--exposure-ms",
                "50",
                "--gap-ms",
                "5",
                "--feedback-ms",
                "150",
                "--image-size",
                "128",
            ]
        )
        == 0
    )
    with BackgroundServer(create_app(str(root / "study"), StudyServeConfig(port=0))) as server:
        yield root / "study", server.url


def fake_side(shown: dict) -> str:
    fake = [side for side in ("left", "right") if shown[side].endswith(("_fake_B.png", "blank.png"))]
    real = [side for side in ("left", "right") if shown[side].endswith("_real_B.png")]
    assert len(fake) == len(real) == 1, shown
    return fake[0]


def give(driver, side: str, index: int):
    """Answer `side` by clicking its image, by a key (an arrow or F/J), or by its button, by turns."""
    how = index % 3
    if how == 0:
        driver.find_element(By.ID, f"box-{side}").click()
    elif how == 1:
        key = {"left": (Keys.ARROW_LEFT, "f"), "right": (Keys.ARROW_RIGHT, "j")}[side]
        driver.find_element(By.TAG_NAME, "body").send_keys(key[index // 3 % 2])
    else:
        driver.find_element(By.ID, f"answer-{side}").click()


def run_session(driver, url: str, observer: str, names_fake) -> list[dict]:
    """One whole session; names_fake(kind, number) says whether the observer names the fake one. Returns what
    the test saw and answered, trial by trial."""
    driver.get(f"{url}/?observer={observer}")
    driver.find_element(By.ID, "start").click()
    log, after = [], -1
    while True:
        shown = driver.execute_async_script(NEXT_QUESTION, after)
        if "state" in shown:
            assert shown["state"] == "saved", shown
            return log
        assert shown["hidden"], "the images must be blanked before the question"
        fake = fake_side(shown)
        number = sum(t["kind"] == shown["kind"] for t in log)
        answer = fake if names_fake(shown["kind"], number) else {"left": "right", "right": "left"}[fake]
        give(driver, answer, shown["index"])
        if shown["kind"] == "practice":
            feedback = driver.execute_async_script(FEEDBACK)
            assert feedback.startswith("Correct" if answer == fake else "Not quite"), feedback
        log.append({"kind": shown["kind"], "fake_side": fake, "answer": answer})
        after = shown["index"]


def test_whole_sessions_answers_file_and_report_agree_with_the_clicks(browser, served, capsys):
    folder, url = served
    study = load_study(str(folder))
    alice = run_session(browser, url, "alice", lambda kind, i: kind != "scored" or i % 4 != 0)
    bob = run_session(browser, url, "bob", lambda kind, i: i == 1 if kind == "attention" else i % 2 == 0)
    for log in (alice, bob):
        assert [t["kind"] for t in log].count("practice") == 10 and [t["kind"] for t in log].count("scored") == 40
        assert [t["kind"] for t in log].count("attention") == 2 and log[10]["kind"] == "scored"
    lines = [json.loads(line) for line in (folder / "answers.jsonl").read_text().splitlines()]
    assert [s["observer"] for s in lines] == ["alice", "bob"]
    for saved, log in zip(lines, (alice, bob)):
        assert [{k: t[k] for k in ("kind", "fake_side", "answer")} for t in saved["trials"]] == log
        assert all(t["shown_ms"] >= 49 for t in saved["trials"])
    sides = [t["fake_side"] for t in alice]
    assert 10 < sides.count("left") < 42  # the sides are drawn, not fixed
    assert main(["study", "report", str(folder)]) == 0
    out = capsys.readouterr().out
    model = study["models"][0]["name"]
    report = json.loads((folder / "report.json").read_text())["models"][model]
    alice_real = sum(t["answer"] != t["fake_side"] for t in alice if t["kind"] == "scored")
    assert alice_real == 10 and report["judged_real"] == alice_real and report["n"] == 40
    assert report["excluded"] == [{"observer": "bob", "why": "missed 1 of 2 attention checks"}]
    assert "25.0%" in out and "EXCLUDED" in out


def test_the_observer_id_fixes_the_order_and_sides(browser, served):
    _, url = served
    plans = {}
    for observer in ("carol", "dave", "carol"):
        browser.get(f"{url}/?observer={observer}")
        plans.setdefault(observer, []).append(browser.execute_script("return window.study.plan"))
    assert plans["carol"][0] == plans["carol"][1] and plans["carol"][0] != plans["dave"][0]
    assert len(plans["dave"][0]) == 52
