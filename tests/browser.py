"""What the real-browser tests share (tests/test_study_browser.py, tests/test_draw_browser.py): headless Chromium
(Debian's chromium + chromium-driver) driven by selenium. Nothing downloads a browser or a driver.

Without Chromium a browser test module skips, naming the command that installs it; with FASTPIX_REQUIRE_BROWSER=1
(set by .ci/run) it fails instead, so that CI cannot pass without running it."""

import os

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
INSTALL = "apt-get update && apt-get install -y chromium chromium-driver; pip install -e '.[test]' (selenium)"


def missing() -> str | None:
    absent = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    try:
        import selenium  # noqa: F401 - imported only to learn whether it is installed
    except ImportError:
        absent.append("the selenium package")
    try:
        import fastapi  # noqa: F401 - imported only to learn whether it is installed
        import uvicorn  # noqa: F401 - imported only to learn whether it is installed
    except ImportError:
        absent.append("fastapi/uvicorn (the 'serve' extra)")
    return f"the browser tests need {', '.join(absent)}: {INSTALL}" if absent else None


def require_browser():
    """Call at a browser test module's top: skips it (or, in CI, fails it) where the browser cannot run."""
    if missing():
        if os.environ.get("FASTPIX_REQUIRE_BROWSER") == "1":
            raise RuntimeError(missing())
        pytest.skip(missing(), allow_module_level=True)


def chromium(profile_dir, width: int, height: int, logs: bool = False):
    """A headless Chromium of that window size; logs: keep its console and network (performance) logs."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile_dir}",
    ):
        options.add_argument(flag)
    if logs:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(20)
    return driver
