"""A wheel of fastpix built from a copy of the source tree (tests/test_bench.py, tests/test_decode.py): what a user's
`pip install` would package, built without pkg-config's libjpeg/libpng, so without the C++ decoder (seconds)."""

import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def build_wheel(tmp_path: pathlib.Path, folders: tuple[str, ...]) -> pathlib.Path:
    """The wheel built from setup.py, pyproject.toml, README.md and `folders` of the checkout, in tmp_path/wheel."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in folders:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    env = {**os.environ, "PKG_CONFIG_LIBDIR": str(tmp_path / "none"), "PKG_CONFIG_PATH": ""}
    command = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w"]
    build = subprocess.run([*command, str(tmp_path / "wheel")], env=env, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    [wheel] = (tmp_path / "wheel").glob("fastpix-*.whl")
    return wheel
