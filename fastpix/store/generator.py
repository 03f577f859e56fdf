"""The generator of a checkpoint: where it is (one resolver for every command and the Python API) and loading it.

A checkpoint is given as a run folder (config.json + <tag>_net_G.{safetensors,pth}), as a weights file (.safetensors
or a reference .pth, perhaps beside a config.json), or as --name under --checkpoints_dir. Its architecture is the
run's config.json, else what the weights' keys and shapes tell (architecture.infer_architecture); flags or keyword
arguments override either.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import torch

from fastpix.errors import CheckpointError, ConfigError
from fastpix.store.architecture import ARCH_FIELDS, build_generator, infer_architecture, resolve_architecture
from fastpix.store.run_config import saved_config
from fastpix.store.run_folder import find_weights
from fastpix.store.weights import load_weights


@dataclasses.dataclass(frozen=True)
class GeneratorSource:
    """Where a generator is: its weights file, the run folder holding it (a weights file's own folder) and that
    folder's saved configuration (config.json's model and data sections; {} without one)."""

    weights: str
    run_dir: str
    config: dict
    given_file: bool  # named as a weights file, not found in a folder

    @property
    def run_name(self) -> str:
        return os.path.basename(os.path.normpath(self.run_dir))

    @property
    def stem(self) -> str:
        """The weights file's name less its suffix (latest_net_G, or a given file's own name)."""
        return os.path.splitext(os.path.basename(self.weights))[0]

    @functools.cached_property
    def state(self) -> dict:
        return load_weights(self.weights)

    def architecture(self) -> dict:
        """The architecture fields the checkpoint records: config.json's, else those its keys and shapes tell."""
        if self.config:
            return {k: v for k, v in self.config.items() if k in ARCH_FIELDS}
        return infer_architecture(self.state)

    def load(self, backend=None, **arch) -> torch.nn.Module:
        """The generator, its architecture overridden by `arch` (None values are not given)."""
        return build_generator(
            self.state, resolve_architecture(self.architecture(), arch, self.weights), self.weights, backend
        )


def locate_generator(
    checkpoint=None, checkpoints_dir: str | None = None, name: str | None = None, tag: str = "latest"
) -> GeneratorSource:
    """The generator of `checkpoint` (--checkpoint: a run folder or a weights file), else of the run
    <checkpoints_dir>/<name>; in a folder, the weights <tag>_net_G.safetensors, else the reference's .pth."""
    path = os.fspath(checkpoint) if checkpoint else None
    if path is not None and os.path.isfile(path):
        run_dir = os.path.dirname(os.path.abspath(path))
        return GeneratorSource(path, run_dir, saved_config(run_dir), given_file=True)
    if path is not None and not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such run folder or weights file (--checkpoint)")
    if path is None and not name:
        raise ConfigError(
            "give --name (a run under --checkpoints_dir) or --checkpoint (a run folder or a weights file)"
        )
    run_dir = path if path is not None else os.path.join(checkpoints_dir or ".", name or "")
    return GeneratorSource(find_weights(run_dir, tag, "G"), run_dir, saved_config(run_dir), given_file=False)


def load_generator(path_or_dir, epoch: str = "latest", backend=None, **arch) -> torch.nn.Module:
    """The generator of a run folder (config.json + <epoch>_net_G.*) or a weights file (.safetensors / reference
    .pth). Architecture: the run's config.json, else inferred from the keys and shapes; keyword arguments (netG,
    ngf, norm, input_nc, output_nc, no_dropout) override both."""
    return locate_generator(path_or_dir, tag=epoch).load(backend, **arch)
