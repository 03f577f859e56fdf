"""An AOTInductor package of the inference network: built for one input shape, dtype and layout, with frozen weights,
and loaded with what it was built for (its own metadata), so that a file is never run on inputs it does not take.

Building: torch.export, then AOTInductor with freezing (weights become constants: oneDNN prepacks them once and
fuses conv + bias + activation), into one .pt2 file written whole then renamed; Inductor's build files go to a
temporary folder removed when the build ends. Loading: AOTInductor's loader class (~0.1 s at unet_256).
`fastpix export --format pt2` writes the same file for shipping.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn as nn

from fastpix.files import atomic_write
from fastpix.infer.compiled_cache import build_folder


def package_metadata(shape, dtype: torch.dtype, key: str | None = None) -> dict:
    """What a package records about the inputs it takes (and the cache key it was built for), checked on load."""
    return {
        "fastpix.shape": "x".join(map(str, shape)),
        "fastpix.dtype": str(dtype),
        "fastpix.layout": "channels_last",
        **({"fastpix.key": key} if key else {}),
    }


def build_package(
    net: nn.Module, example: torch.Tensor, path: str, build_parent: str | None = None, key: str | None = None
) -> str:
    """Export `net` on `example`'s shape, dtype and layout and compile it ahead of time with frozen weights into the
    AOTInductor package `path` (written whole, then renamed: fastpix.files.atomic_write, whose temporary keeps the
    .pt2 suffix the packager wants), recording that shape, dtype and `key` in its metadata. Inductor's build files go
    to a temporary folder under build_parent (default: path's folder), removed when the build ends."""
    with torch.no_grad():
        exported = torch.export.export(net, (example,))
    options = {"aot_inductor.metadata": package_metadata(example.shape, example.dtype, key)}

    def package(tmp: str):
        with (
            build_folder(build_parent or os.path.dirname(os.path.abspath(path))) as folder,
            inductor_build(folder),
            torch.no_grad(),
        ):  # freezing
            torch._inductor.aoti_compile_and_package(exported, package_path=tmp, inductor_configs=options)

    atomic_write(path, package)
    return path


# AOTInductor's package loader class (torch 2.6 and later); load_package falls back to the public loader without it.
PACKAGE_LOADER: Any = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)


class Package:
    """A loaded package: package(x) runs it on one input tensor; .metadata is what it was built for."""

    def __init__(self, run, metadata: dict):
        self.run, self.metadata = run, metadata

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)

    def mismatch(self, shape, dtype: torch.dtype, key: str | None = None) -> str | None:
        """Why this package cannot take channels-last inputs of that shape and dtype (or was built for another key);
        None if it can. A package fed another shape reads out of bounds: a black image or NaNs, never an error."""
        want = package_metadata(shape, dtype, key)
        got = {k: self.metadata.get(k) for k in want}
        if got == want:
            return None
        if got["fastpix.shape"] is None:
            return "it records no input shape (built by an older fastpix)"
        return (
            f"it was built for {got['fastpix.shape']} {got['fastpix.dtype']} (key {got.get('fastpix.key')}), "
            f"not {want['fastpix.shape']} {want['fastpix.dtype']} (key {key})"
        )


def load_package(path: str) -> Package:
    """The package at path. Through the loader class where this torch has it, rather than
    torch._inductor.aoti_load_package, whose import of the compiler costs ~1.3 s against a ~0.1 s load."""
    try:
        loader = PACKAGE_LOADER(path, "model", False, 1, -1)
    except TypeError:  # no such class, or another signature: the public loader
        model = torch._inductor.aoti_load_package(path)
        return Package(model, dict(model.get_metadata()))
    return Package(lambda x: loader.boxed_run([x])[0], dict(loader.get_metadata()))


class inductor_build:
    """While building: inductor's build files in `directory` (it reads the variable at each lookup), and freezing
    on in inductor's global config (the freezing pass reads it there; without it every conv would reorder its weights
    on each call, nearly twice as slow at unet_256 batch 1, bf16: docs/benchmarks.md, "CPU at real size: unet_256")."""

    def __init__(self, directory: str):
        self.directory = directory
        self.freezing = torch._inductor.config.patch(freezing=True)

    def __enter__(self):
        self.previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = self.directory
        self.freezing.__enter__()

    def __exit__(self, *exc):
        self.freezing.__exit__(*exc)
        if self.previous is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = self.previous
