"""The draw page's server side, without a browser: the page and its assets under a Content-Security-Policy of the
server's own origin, /v1/info, the examples endpoint, the canvas size's sources, palettes (built-in and loaded,
errors in one line), and `fastpix demo`'s closing command. The page itself runs in tests/test_draw_browser.py."""

import dataclasses
import io
import json
import os
import shlex
import urllib.error
import urllib.request
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra: pip install fastpix[serve]")
pytest.importorskip("uvicorn", reason="the server needs the 'serve' extra: pip install fastpix[serve]")

from fastpix.cli import main
from fastpix.config import DataConfig, ModelConfig, ServeConfig
from fastpix.data.demo import write_demo_dataset
from fastpix.errors import ConfigError, DataError
from fastpix.files import atomic_write_json
from fastpix.infer.predictor import Predictor
from fastpix.infer.server import BackgroundServer, create_app
from fastpix.models import define_G
from fastpix.palette import built_in, load_palette
from fastpix.store.generator import locate_generator
from fastpix.store.weights import save_weights

TIMEOUT_S = 30
HOOKS = (
    "input-canvas",
    "output",
    "pen",
    "eraser",
    "rect",
    "fill",
    "undo",
    "redo",
    "clear",
    "upload",
    "random",
    "save",
    "latency",
)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_generator():
    torch.manual_seed(0)
    return define_G(3, 3, 4, "unet_32", "batch", False, backend="eager")


@pytest.fixture(scope="module")
def predictor():
    return Predictor(tiny_generator(), device="cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder trained (so its config.json says) at crop 64, BtoA."""
    folder = tmp_path_factory.mktemp("run")
    save_weights(str(folder / "latest_net_G.safetensors"), tiny_generator())
    model = dataclasses.asdict(ModelConfig(netG="unet_32", ngf=4, norm="batch", no_dropout=True))
    data = dataclasses.asdict(DataConfig(crop_size=64, load_size=72, direction="BtoA"))
    atomic_write_json(str(folder / "config.json"), {"model": model, "data": data, "train": {}})
    return folder


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """An aligned split of 3 demo pairs, 32×32 halves."""
    return os.path.join(write_demo_dataset(str(tmp_path_factory.mktemp("demo")), 32, {"val": 3}), "val")


def get(url):
    """(status, headers, body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def served(predictor, checkpoint=None, **options):
    return BackgroundServer(create_app(predictor, ServeConfig(graph_size=0, **options), checkpoint))


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


# ---- the page --------------------------------------------------------------------------------------------------------


def test_the_page_is_self_contained_under_a_policy_of_this_origin_only(predictor):
    with served(predictor) as server:
        status, headers, body = get(f"{server.url}/")
        assets = {name: get(f"{server.url}/{name}") for name in ("draw.js", "draw.css")}
        favicon = get(f"{server.url}/favicon.ico")[0]
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    policy = headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "unsafe" not in policy and "http" not in policy
    parser = Tags()
    parser.feed(body.decode())
    for tag, attrs in parser.tags:
        # Under that policy inline script, inline style and event-handler attributes would not run: there are none.
        assert tag != "style" and "style" not in attrs and not any(a.startswith("on") for a in attrs), (tag, attrs)
        assert tag != "script" or attrs.get("src") == "draw.js"
        for link in (attrs.get("src"), attrs.get("href")):
            assert link is None or "//" not in link and ":" not in link, link  # same origin: relative links only
    hooks = {attrs["data-testid"] for _, attrs in parser.tags if "data-testid" in attrs}
    assert set(HOOKS) <= hooks
    assert assets["draw.js"][1]["Content-Type"].startswith("text/javascript")
    assert assets["draw.css"][1]["Content-Type"].startswith("text/css")
    for _, asset_headers, text in assets.values():
        assert asset_headers["Content-Security-Policy"] == policy and b"http" not in text and b"@import" not in text
    assert b"palette-${c.id}" in assets["draw.js"][2]  # the palette's hooks are made from /v1/info's classes
    assert favicon == 204


def test_info_gives_the_model_its_runtime_the_canvas_and_the_limits(predictor, run):
    source = locate_generator(str(run))
    with served(predictor, source, max_bytes=123_456, max_pixels=300_000) as server:
        info = json.loads(get(f"{server.url}/v1/info")[2])
    assert info["model"] == f"{os.path.basename(run)}/latest_net_G (unet_32)"
    assert info["description"] == predictor.description and info["runtime"] == predictor.runtime
    assert (info["device"], info["precision"], info["input_nc"], info["multiple"]) == ("cpu", "fp32", 3, 32)
    assert info["canvas_size"] == 64  # the crop the run was trained at
    assert (info["max_bytes"], info["max_pixels"], info["palette"], info["examples"]) == (123_456, 300_000, None, 0)


@pytest.mark.parametrize(
    "checkpoint, options, expected",
    [
        (False, {}, 256),
        (True, {"canvas_size": 96}, 96),
        (False, {"canvas_size": 48}, 48),
        (False, {"max_pixels": 200 * 200}, 192),  # a default canvas shrinks to what the server accepts, whole multiples
    ],
)
def test_the_canvas_is_the_flags_else_the_runs_crop_else_256(predictor, run, checkpoint, options, expected):
    with served(predictor, locate_generator(str(run)) if checkpoint else None, **options) as server:
        assert json.loads(get(f"{server.url}/v1/info")[2])["canvas_size"] == expected


def test_a_canvas_the_server_would_refuse_is_a_config_error(predictor):
    with pytest.raises(
        ConfigError,
        match=r"--canvas-size 100: the generator pads the canvas to 128x128 = 16384 "
        r"pixels, over --max-pixels 10000",
    ):
        create_app(predictor, ServeConfig(canvas_size=100, max_pixels=10_000))


# ---- examples --------------------------------------------------------------------------------------------------------


def halves(png: bytes) -> tuple[np.ndarray, np.ndarray]:
    pair = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert pair.shape[1] == 2 * pair.shape[0]
    return pair[:, : pair.shape[0]], pair[:, pair.shape[0] :]


def test_an_example_is_its_pair_at_the_canvas_size_labels_resized_to_exact_palette_colours(predictor, split):
    with served(predictor, canvas_size=64, palette="demo", examples=split) as server:
        info = json.loads(get(f"{server.url}/v1/info")[2])
        status, headers, body = get(f"{server.url}/v1/examples/1")
        missing = get(f"{server.url}/v1/examples/3")
    assert info["examples"] == 3 and info["palette"]["classes"][1] == {"id": 1, "name": "red", "rgb": [255, 0, 0]}
    assert status == 200 and headers["Content-Type"] == "image/png" and headers["X-Fastpix-Example"] == "0001.png"
    a, b = halves(body)
    ab = Image.open(os.path.join(split, "0001.png")).convert("RGB")
    expected_a = np.asarray(ab.crop((0, 0, 32, 32)))
    assert np.array_equal(a, expected_a.repeat(2, 0).repeat(2, 1))  # nearest: each label pixel becomes 2×2
    colours = {tuple(c["rgb"]) for c in info["palette"]["classes"]}
    assert {tuple(p) for p in a.reshape(-1, 3)} <= colours
    assert np.array_equal(b, np.asarray(ab.crop((32, 0, 64, 32)).resize((64, 64), Image.BICUBIC)))
    assert missing[0] == 404 and json.loads(missing[2])["error"] == "example 3 does not exist: there are 3 (0 to 2)"


def test_examples_follow_the_runs_direction_and_read_a_and_b_folders(predictor, run, split, tmp_path):
    for side in ("A", "B"):
        (tmp_path / "two" / side).mkdir(parents=True)
    ab = Image.open(os.path.join(split, "0002.png")).convert("RGB")
    ab.crop((0, 0, 32, 32)).save(tmp_path / "two" / "A" / "x.png")
    ab.crop((32, 0, 64, 32)).save(tmp_path / "two" / "B" / "x.png")
    with served(predictor, locate_generator(str(run)), canvas_size=32, examples=split) as server:  # BtoA
        input_half, target_half = halves(get(f"{server.url}/v1/examples/2")[2])
    assert np.array_equal(input_half, np.asarray(ab)[:, 32:]) and np.array_equal(target_half, np.asarray(ab)[:, :32])
    with served(predictor, canvas_size=32, examples=str(tmp_path / "two")) as server:
        status, headers, body = get(f"{server.url}/v1/examples/0")
    assert status == 200 and headers["X-Fastpix-Example"] == "x.png"
    assert np.array_equal(np.concatenate(halves(body), axis=1), np.asarray(ab))


def test_examples_errors_are_named(predictor, tmp_path):
    with pytest.raises(DataError, match=r"--examples .*nowhere: no such folder"):
        create_app(predictor, ServeConfig(examples=str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        create_app(predictor, ServeConfig(examples=str(tmp_path / "empty")))
    with served(predictor) as server:
        status, _, body = get(f"{server.url}/v1/examples/0")
    assert status == 404 and "--examples DIR" in json.loads(body)["error"]


# ---- palettes --------------------------------------------------------------------------------------------------------


def test_the_built_in_palettes_are_hesses_facades_labels_and_the_demo_datas_colours():
    from fastpix.data.demo import PALETTE

    assert built_in() == ["demo", "facades"]
    facades = load_palette("facades")
    hesse = {
        "background": "#0006d9",
        "wall": "#0d3dfb",
        "door": "#a50000",
        "window": "#0075ff",
        "window sill": "#68f898",
        "window head": "#1dffdd",
        "shutter": "#eeed28",
        "balcony": "#b8ff38",
        "trim": "#ff9204",
        "cornice": "#ff4401",
        "column": "#f60001",
        "entrance": "#00c9ff",
    }
    assert [(c.name, "#{:02x}{:02x}{:02x}".format(*c.rgb)) for c in facades.classes] == list(hesse.items())
    assert facades.names[facades.clear_id] == "wall"  # Hesse's editor clears to wall
    demo = load_palette("demo")
    assert [c.rgb for c in demo.classes] == [tuple(c) for c in PALETTE.tolist()] and demo.clear_id == 0


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", '--palette {path}: expected {{"classes"'),
        ('{"classes": [{"id": 0, "rgb": [0, 0, 256]}]}', "rgb [0, 0, 256] is not three integers in 0..255"),
        ('{"classes": [{"id": 0, "rgb": [1, 2]}]}', "rgb [1, 2] is not three integers"),
        ('{"classes": [{"id": 0, "rgb": [1, 2, 3]}, {"id": 0, "rgb": [4, 5, 6]}]}', "distinct class ids"),
        ('{"classes": [{"id": 0, "rgb": [1, 2, 3]}], "clear_id": 4}', "clear_id 4 is not one of its class ids"),
        ("[1, 2]", "got JSON that is not an object"),
    ],
)
def test_a_bad_palette_is_one_line_naming_the_flag_and_the_file(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(DataError) as caught:
        load_palette(str(path))
    assert message.format(path=path) in str(caught.value) and "\n" not in str(caught.value)


def test_serve_refuses_a_missing_palette_in_one_line_naming_the_built_ins(run, capsys):
    status = main(
        ["serve", "--checkpoint", str(run), "--runtime", "eager", "--precision", "fp32", "--palette", "facade"]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert err == "fastpix serve: error: --palette facade: no such file, nor a built-in palette (demo, facades)\n"


# ---- fastpix demo ----------------------------------------------------------------------------------------------------


def test_demo_ends_with_the_command_that_serves_the_draw_page_on_its_model(monkeypatch, tmp_path, capsys):
    """The training itself is `make demo`'s; here its steps are stood in for, and the command printed last must
    parse, and serve the demo's run with its palette and its val split."""
    import fastpix.data.demo
    import fastpix.evaluate
    import fastpix.store.generator
    import fastpix.train.loop
    from fastpix.cli import build_parser

    out = tmp_path / "my demo"
    monkeypatch.setattr(fastpix.data.demo, "write_demo_dataset", lambda root, size: root)
    monkeypatch.setattr(fastpix.train.loop, "train", lambda *a, **k: str(out / "checkpoints" / "demo"))
    monkeypatch.setattr(fastpix.store.generator, "locate_generator", lambda run: type("S", (), {"weights": ""}))
    monkeypatch.setattr(fastpix.evaluate, "run_test", lambda *a, **k: str(out / "results"))
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("fastpix demo: draw and see live: fastpix serve ")
    command, url = last.removeprefix("fastpix demo: draw and see live: ").split("  # then open ")
    assert url == "http://127.0.0.1:8000/"
    words = shlex.split(command)
    args = build_parser().parse_args(words[1:])
    assert words[:2] == ["fastpix", "serve"] and args.func.__name__ == "cmd_serve"
    assert (args.checkpoint, args.palette, args.examples) == (
        str(out / "checkpoints" / "demo"),
        "demo",
        str(out / "data" / "val"),
    )
