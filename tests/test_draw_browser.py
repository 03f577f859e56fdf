"""The draw page in a real browser: headless Chromium driven by selenium (tests/browser.py) against `fastpix serve`'s
app with a tiny U-Net, its canvas at 64² (shown at 384 CSS px: 6 px a canvas pixel). Strokes by mouse, touch and
keys; every check reads the canvases' pixels, and the server's own answer for them."""

import base64
import io
import json
import pathlib
import re
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from browser import chromium, require_browser
from PIL import Image

from fastpix.config import ServeConfig
from fastpix.data.demo import write_demo_dataset
from fastpix.infer.predictor import Predictor
from fastpix.infer.server import BackgroundServer, create_app
from fastpix.models import define_G

require_browser()

from selenium.webdriver import ActionChains  # noqa: E402 - after require_browser(), which skips the module without selenium
from selenium.webdriver.common.actions import interaction  # noqa: E402 - after require_browser(), which skips the module without selenium
from selenium.webdriver.common.actions.action_builder import ActionBuilder  # noqa: E402 - after require_browser(), which skips the module without selenium
from selenium.webdriver.common.actions.pointer_input import PointerInput  # noqa: E402 - after require_browser(), which skips the module without selenium
from selenium.webdriver.common.by import By  # noqa: E402 - after require_browser(), which skips the module without selenium
from selenium.webdriver.common.keys import Keys  # noqa: E402 - after require_browser(), which skips the module without selenium

N = 64
TIMEOUT_S = 30
IDLE = """const done = arguments[arguments.length - 1];
const poll = () => window.draw && window.draw.info && window.draw.idle() ? done(true) : setTimeout(poll, 5);
poll();"""
PIXELS = """const canvas = document.querySelector(`[data-testid="${arguments[0]}"]`);
return Array.from(canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data);"""
# Where canvas pixel (x, y)'s centre is, in CSS px from the canvas element's centre (selenium's offsets).
OFFSET = """const [canvas, x, y] = arguments, box = canvas.getBoundingClientRect();
const s = canvas.clientWidth / canvas.width;
return [canvas.clientLeft + (x + 0.5) * s - box.width / 2, canvas.clientTop + (y + 0.5) * s - box.height / 2];"""
BLACK, RED, GREEN, BLUE = (0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)  # the demo palette's


def tiny_predictor(input_nc=3):
    torch.manual_seed(0)
    return Predictor(define_G(input_nc, 3, 4, "unet_32", "batch", False, backend="eager"), device="cpu")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The page with the demo palette and examples; one without a palette whose --max-bytes a drawing can exceed;
    one of a 1-channel model."""
    split = write_demo_dataset(str(tmp_path_factory.mktemp("demo")), 32, {"val": 4}) + "/val"
    configs = {
        "labels": (ServeConfig(canvas_size=N, palette="demo", examples=split), 3),
        "small": (ServeConfig(canvas_size=N, max_bytes=1500), 3),
        "grey": (ServeConfig(canvas_size=N), 1),
    }
    started = {
        name: BackgroundServer(create_app(tiny_predictor(nc), cfg)).start() for name, (cfg, nc) in configs.items()
    }
    yield {name: server.url for name, server in started.items()}
    for server in started.values():
        server.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = chromium(tmp_path_factory.mktemp("chromium-profile"), 1280, 800, logs=True)
    yield driver
    driver.quit()


def open_page(driver, url):
    driver.get(f"{url}/")
    idle(driver)


def idle(driver):
    """Wait until the page has sent its newest drawing and has the answer."""
    driver.execute_async_script(IDLE)


def pixels(driver, hook="input-canvas") -> np.ndarray:
    return np.array(driver.execute_script(PIXELS, hook), np.uint8).reshape(N, N, 4)


def hook(driver, name):
    return driver.find_element(By.CSS_SELECTOR, f'[data-testid="{name}"]')


def offset(driver, x, y):
    return [round(v) for v in driver.execute_script(OFFSET, hook(driver, "input-canvas"), x, y)]


def drag(driver, points):
    """A mouse stroke through canvas pixels `points`."""
    canvas, actions = hook(driver, "input-canvas"), ActionChains(driver)
    actions.move_to_element_with_offset(canvas, *offset(driver, *points[0])).click_and_hold()
    for point in points[1:]:
        actions.move_to_element_with_offset(canvas, *offset(driver, *point))
    actions.release().perform()
    idle(driver)


def wait_for_new_drawing(driver, action):
    """Run action() (an upload, a drop, an example) and wait until its drawing is in place and translated."""
    epoch = driver.execute_script("return window.draw.epoch")
    action()
    driver.execute_async_script(
        """const [epoch, done] = arguments;
        const poll = () => window.draw.epoch > epoch && window.draw.idle() ? done() : setTimeout(poll, 5);
        poll();""",
        epoch,
    )


def server_answer(url, image: np.ndarray) -> np.ndarray:
    """/v1/translate's answer for these pixels, as another client gets it."""
    buffer = io.BytesIO()
    Image.fromarray(image[..., :3]).save(buffer, format="PNG")
    request = urllib.request.Request(f"{url}/v1/translate", buffer.getvalue(), {"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


def assert_output_is_the_servers_answer(driver, url):
    state = driver.execute_script("return [window.draw.version, window.draw.shownVersion]")
    assert state[0] == state[1], f"the output is not of the newest drawing: {state}"
    expected = server_answer(url, pixels(driver))
    diff = np.abs(pixels(driver, "output")[..., :3].astype(int) - expected)
    assert diff.max() <= 1, diff.max()  # rounding only: the same model, the same pixels


def is_colour(region: np.ndarray, rgb) -> bool:
    return bool((region[..., :3] == rgb).all() and (region[..., 3] == 255).all())


def test_strokes_change_the_input_and_the_output_is_the_servers_answer_for_it(browser, servers):
    open_page(browser, servers["labels"])
    hook(browser, "clear").click()
    idle(browser)
    blank = pixels(browser)
    assert is_colour(blank, BLACK)  # the palette's clear class
    hook(browser, "palette-1").click()
    hook(browser, "pen").click()
    drag(browser, [(5, 5), (30, 20), (58, 50), (20, 60)])
    drawn = pixels(browser)
    red = (drawn[..., :3] == RED).all(-1)
    assert red.sum() > 100 and red[5, 5] and red[20, 30] and red[50, 58] and red[60, 20]
    assert ((drawn[..., :3] == RED).all(-1) | (drawn[..., :3] == BLACK).all(-1)).all()  # no blended colour
    assert_output_is_the_servers_answer(browser, servers["labels"])
    latency = hook(browser, "latency").text
    assert re.fullmatch(r"\d+ ms", latency), latency


# Counts the page's translate requests (those sent mid-stroke too) and the most in flight at once; while
# window.held is set, their answers wait (window.release() lets them go).
SPY = """const send = window.fetch, spy = window.spy = {sent: 0, midStroke: 0, active: 0, most: 0};
let release = null, gate = Promise.resolve();
window.hold = () => { gate = new Promise((resolve) => { release = resolve; }); };
window.release = () => release();
window.fetch = async (url, options) => {
  if (!String(url).endsWith("v1/translate")) return send(url, options);
  spy.sent++; spy.midStroke += window.draw.stroke !== null; spy.active++; spy.most = Math.max(spy.most, spy.active);
  try { const answer = await send(url, options); await gate; return answer; } finally { spy.active--; }
};"""


def test_long_strokes_translate_as_they_go_one_request_at_a_time(browser, servers):
    open_page(browser, servers["labels"])
    browser.execute_script(SPY)
    hook(browser, "pen").click()
    drag(browser, [(4, 4 + 4 * i) for i in range(14)])  # selenium moves the pointer over 250 ms a segment
    spy = browser.execute_script("return window.spy")
    assert spy["midStroke"] >= 5 and spy["most"] == 1, spy
    assert_output_is_the_servers_answer(browser, servers["labels"])


def test_an_answer_for_a_replaced_drawing_is_dropped_and_the_newest_sent(browser, servers):
    open_page(browser, servers["labels"])
    browser.execute_script(SPY + "window.hold();")
    hook(browser, "pen").click()
    before = pixels(browser)
    canvas, actions = hook(browser, "input-canvas"), ActionChains(browser)
    actions.move_to_element_with_offset(canvas, *offset(browser, 10, 10)).click_and_hold()
    actions.move_to_element_with_offset(canvas, *offset(browser, 50, 50)).release().perform()
    state = browser.execute_script("return [window.spy.sent, window.draw.inFlight, window.draw.dropped]")
    assert state[:2] == [1, True], state  # the stroke's answer is held: nothing else was sent
    hook(browser, "undo").click()
    assert np.array_equal(pixels(browser), before)
    browser.execute_script("window.release()")
    idle(browser)
    spy = browser.execute_script("return [window.spy.sent, window.spy.most, window.draw.dropped]")
    assert spy == [2, 1, state[2] + 1], spy  # the stroke's answer dropped, the undone drawing's shown
    assert_output_is_the_servers_answer(browser, servers["labels"])


def test_undo_and_redo_restore_the_exact_canvases(browser, servers):
    open_page(browser, servers["labels"])
    hook(browser, "pen").click()
    hook(browser, "palette-2").click()
    before = pixels(browser)
    drag(browser, [(10, 10), (50, 12)])
    first = pixels(browser)
    hook(browser, "palette-4").click()
    drag(browser, [(12, 40), (40, 55), (60, 30)])
    second = pixels(browser)
    assert not np.array_equal(before, first) and not np.array_equal(first, second)
    ActionChains(browser).key_down(Keys.CONTROL).send_keys("z").key_up(Keys.CONTROL).perform()
    idle(browser)
    assert np.array_equal(pixels(browser), first)
    hook(browser, "undo").click()
    idle(browser)
    assert np.array_equal(pixels(browser), before)
    assert_output_is_the_servers_answer(browser, servers["labels"])
    ActionChains(browser).key_down(Keys.CONTROL).key_down(Keys.SHIFT).send_keys("z").key_up(Keys.SHIFT).key_up(
        Keys.CONTROL
    ).perform()
    idle(browser)
    assert np.array_equal(pixels(browser), first)
    hook(browser, "redo").click()
    idle(browser)
    assert np.array_equal(pixels(browser), second)
    assert_output_is_the_servers_answer(browser, servers["labels"])


def test_a_palette_rectangle_and_a_fill_paint_the_exact_palette_colour(browser, servers):
    open_page(browser, servers["labels"])
    hook(browser, "clear").click()
    hook(browser, "palette-3").click()
    hook(browser, "rect").click()
    before = pixels(browser)
    drag(browser, [(10, 12), (25, 20), (40, 30)])  # the corner moves on: the rectangle follows it
    after = pixels(browser)
    inside = np.zeros((N, N), bool)
    inside[12:31, 10:41] = True
    assert is_colour(after[inside], BLUE)  # to its edges, corners included: no anti-aliasing
    assert np.array_equal(after[~inside], before[~inside])
    hook(browser, "palette-2").click()
    hook(browser, "fill").click()
    canvas = hook(browser, "input-canvas")
    ActionChains(browser).move_to_element_with_offset(canvas, *offset(browser, 20, 20)).click().perform()
    idle(browser)
    filled = pixels(browser)
    assert is_colour(filled[inside], GREEN) and np.array_equal(filled[~inside], before[~inside])
    assert_output_is_the_servers_answer(browser, servers["labels"])


def test_a_random_example_loads_its_input_and_shows_its_real_target(browser, servers):
    open_page(browser, servers["labels"])
    shown = browser.execute_script("return window.draw.example.index")
    wait_for_new_drawing(browser, hook(browser, "random").click)
    index = browser.execute_script("return window.draw.example.index")
    assert index != shown
    with urllib.request.urlopen(f"{servers['labels']}/v1/examples/{index}", timeout=TIMEOUT_S) as response:
        pair = np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))
    assert np.array_equal(pixels(browser)[..., :3], pair[:, :N])
    assert hook(browser, "target").is_displayed() and np.array_equal(pixels(browser, "target")[..., :3], pair[:, N:])
    assert_output_is_the_servers_answer(browser, servers["labels"])


def upload_image(tmp_path) -> str:
    """An 80×40 image: red, with a green right half; the page fits it into 64×32, centred."""
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, :40] = RED
    image[:, 40:] = GREEN
    Image.fromarray(image).save(tmp_path / "wide.png")
    return str(tmp_path / "wide.png")


def assert_fitted(image: np.ndarray):
    assert is_colour(image[:16], BLACK) and is_colour(image[48:], BLACK)  # the clear colour above and below
    assert is_colour(image[16:48, :32], RED) and is_colour(image[16:48, 32:], GREEN)  # no blend: labels stay exact


def test_upload_by_file_picker_and_by_drop_fits_the_image_to_the_canvas(browser, servers, tmp_path):
    open_page(browser, servers["labels"])
    wait_for_new_drawing(browser, lambda: hook(browser, "upload").send_keys(upload_image(tmp_path)))
    assert_fitted(pixels(browser))
    assert_output_is_the_servers_answer(browser, servers["labels"])
    hook(browser, "clear").click()
    data = base64.b64encode(pathlib.Path(upload_image(tmp_path)).read_bytes()).decode()
    wait_for_new_drawing(
        browser,
        lambda: browser.execute_script(
            """
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const files = new DataTransfer();
        files.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
        document.querySelector('[data-testid="input-canvas"]').dispatchEvent(
            new DragEvent("drop", {dataTransfer: files, bubbles: true, cancelable: true}));""",
            data,
        ),
    )
    assert_fitted(pixels(browser))


def test_save_downloads_one_png_of_input_and_output(browser, servers, tmp_path):
    open_page(browser, servers["labels"])
    browser.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
    hook(browser, "save").click()
    deadline = time.monotonic() + TIMEOUT_S
    while not list(tmp_path.glob("fastpix-*.png")):
        assert time.monotonic() < deadline, "no download"
        time.sleep(0.05)
    time.sleep(0.2)  # Chrome renames the finished file into place: it is whole once it has its name
    saved = np.asarray(Image.open(next(tmp_path.glob("fastpix-*.png"))).convert("RGBA"))
    assert saved.shape == (N, 2 * N, 4)
    assert np.array_equal(saved[:, :N], pixels(browser)) and np.array_equal(saved[:, N:], pixels(browser, "output"))


def test_a_refused_drawing_shows_why_and_the_servers_own_message(browser, servers, tmp_path):
    open_page(browser, servers["small"])  # a blank canvas is ~100 bytes of PNG: translated
    assert browser.execute_script("return window.draw.shownVersion") >= 0
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (N, N, 3), dtype=np.uint8)).save(tmp_path / "n.png")
    browser.execute_script("window.draw.info.max_bytes = 1e9")  # as if the page did not know the limit
    wait_for_new_drawing(browser, lambda: hook(browser, "upload").send_keys(str(tmp_path / "n.png")))  # ~12 KB
    message = hook(browser, "message").text
    assert "the server refused (413): request body is" in message and "accepts at most 1500" in message, message
    browser.execute_script("window.draw.info.max_bytes = 1500")
    hook(browser, "pen").click()
    drag(browser, [(3, 3), (4, 3)])
    message = hook(browser, "message").text
    assert re.fullmatch(
        r"the drawing is \d+ bytes as PNG; this server accepts at most 1500 \(--max-bytes\)", message
    ), message


def test_a_one_channel_model_gets_a_grey_canvas(browser, servers, tmp_path):
    open_page(browser, servers["grey"])
    assert "grey input" in hook(browser, "model").text
    wait_for_new_drawing(browser, lambda: hook(browser, "upload").send_keys(upload_image(tmp_path)))
    image = pixels(browser)
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    # PIL's L of red and green; a photo is resized smoothly, so the edges between are left out
    assert set(np.unique(image[18:46, 2:30, 0])) == {76} and set(np.unique(image[18:46, 34:62, 0])) == {150}
    assert_output_is_the_servers_answer(browser, servers["grey"])


def test_on_a_phone_the_canvases_stack_and_a_finger_draws(browser, servers):
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
    )
    browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 5})
    try:
        open_page(browser, servers["labels"])
        layout = browser.execute_script("""const box = (hook) =>
            document.querySelector(`[data-testid="${hook}"]`).getBoundingClientRect();
            return {width: document.documentElement.scrollWidth, input: box("input-canvas").toJSON(),
                    output: box("output").toJSON()};""")
        assert layout["width"] <= 390  # nothing wider than the screen
        assert layout["output"]["top"] >= layout["input"]["bottom"] and layout["input"]["right"] <= 390
        hook(browser, "clear").click()
        hook(browser, "palette-5").click()
        hook(browser, "pen").click()
        finger = ActionBuilder(browser, mouse=PointerInput(interaction.POINTER_TOUCH, "finger"))
        canvas = hook(browser, "input-canvas")
        finger.pointer_action.move_to(canvas, *offset(browser, 8, 32)).pointer_down()
        finger.pointer_action.move_to(canvas, *offset(browser, 56, 32)).pointer_up()
        finger.perform()
        idle(browser)
        row = pixels(browser)[32, 8:57, :3]
        assert (row == (0, 255, 255)).all()
        assert_output_is_the_servers_answer(browser, servers["labels"])
    finally:
        browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": False})
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_the_page_fetches_nothing_from_another_origin(browser, servers):
    browser.get_log("performance")  # what earlier tests left
    browser.get_log("browser")
    url = servers["labels"]
    open_page(browser, url)
    hook(browser, "random").click()
    drag(browser, [(3, 3), (60, 60)])
    hook(browser, "save").click()
    requested = [
        json.loads(entry["message"])["message"]["params"]["request"]["url"]
        for entry in browser.get_log("performance")
        if json.loads(entry["message"])["message"]["method"] == "Network.requestWillBeSent"
    ]
    assert {f"{url}/", f"{url}/draw.js", f"{url}/draw.css", f"{url}/v1/info", f"{url}/v1/translate"} <= set(requested)
    foreign = [u for u in requested if not (u.startswith(f"{url}/") or u.startswith(f"blob:{url}/"))]
    assert not foreign, foreign
    console = [entry["message"] for entry in browser.get_log("browser")]
    assert not [m for m in console if "Content Security Policy" in m or "Refused" in m], console
