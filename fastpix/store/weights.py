"""Weight and train-state files: safetensors (fastpix's) and the reference's .pth (a torch.save'd state_dict), read
and written on the CPU; the train state; and the one strict load of a state_dict into a network, whose error names
the file and the mismatching keys in one short line.

Reading goes through the checkpoint transaction (checkpoint_set.committed_bytes), so a reader of a run folder sees
the newest committed save even before its renames are finished. Nothing here unpickles Python objects: .pth files
and the train state are read with torch.load(weights_only=True).
"""

from __future__ import annotations

import functools
import io
import json
import os
import threading

import torch
from safetensors.torch import load, load_file, save

from fastpix.errors import CheckpointError
from fastpix.files import atomic_write_bytes
from fastpix.store.checkpoint_set import Stream, committed_bytes

_CRC32_SWITCH = threading.Lock()
TRAIN_STATE_KEYS = ("epoch", "position", "iteration", "optimizers", "torch_rng")
KEYS_NAMED = 3  # per kind of mismatch, in a strict load's error: the counts say the rest
SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def unreadable(exc: Exception) -> str:
    """One line of why a file could not be read (torch's unpickler appends a page of advice to its errors)."""
    text = str(exc)
    if "weights_only" in text:
        return "it holds pickled Python objects beyond tensors, which fastpix does not unpickle"
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def weights_bytes(net_or_state, metadata: dict | None = None, fmt: str = ".safetensors") -> bytes:
    """A state_dict as safetensors, or as the reference's torch.save'd dict (.pth), on CPU."""
    state = net_or_state.state_dict() if isinstance(net_or_state, torch.nn.Module) else net_or_state
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    if fmt == ".pth":
        return torch_bytes(state)
    return save(state, metadata={k: str(v) for k, v in (metadata or {}).items()})


def safetensors_stream(state: dict, metadata: dict | None = None) -> Stream:
    """A CPU state_dict as a safetensors file written straight from its tensors. safetensors' own save() first copies
    every tensor into one bytes object (for unet_256's G and D, 229 MB: half a second and as much memory again);
    the format is short enough to write here: 8 bytes of header length, the JSON header padded with spaces to a
    multiple of 8, then each tensor's bytes, C-contiguous, where the header's data_offsets say; widest elements
    first, as safetensors orders them, so that every tensor of a memory-mapped file is aligned to its element."""
    header: dict[str, dict] = {"__metadata__": {k: str(v) for k, v in metadata.items()}} if metadata else {}
    offset = 0
    order = sorted(state, key=lambda name: -state[name].element_size())
    for name in order:
        nbytes = state[name].numel() * state[name].element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[state[name].dtype],
            "shape": list(state[name].shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)

    def write(f):
        f.write(len(head).to_bytes(8, "little") + head)
        for name in order:  # .contiguous() copies only a channels-last tensor, one at a time
            f.write(state[name].detach().contiguous().reshape(-1).view(torch.uint8).numpy())

    return Stream(8 + len(head) + offset, write)


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_weights(path: str, net_or_state, metadata: dict | None = None):
    """One weights file, written atomically: .pth as the reference's state_dict, anything else as safetensors."""
    fmt = ".pth" if path.endswith(".pth") else ".safetensors"
    atomic_write_bytes(path, weights_bytes(net_or_state, metadata, fmt))


def load_weights(path: str) -> dict:
    """A state_dict; from a run folder, the newest committed one (committed_bytes)."""
    data = committed_bytes(path)
    if data is None and not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        if path.endswith(".pth"):
            state = torch.load(path if data is None else io.BytesIO(data), map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise CheckpointError(f"{path}: not a state_dict of tensors")
            # Reference checkpoints saved from DataParallel carry "module."; its loader strips it too.
            return {k.removeprefix("module."): v for k, v in state.items()}
        return load_file(path) if data is None else load(data)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({unreadable(exc)})") from exc


def weights_metadata(path: str) -> dict:
    """A safetensors file's metadata (fastpix records the iteration, epoch and position); {} for a .pth."""
    if not path.endswith(".safetensors"):
        return {}
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({unreadable(exc)})") from exc


def train_state_stream(state: dict) -> Stream:
    """The train state file of a save, written by the background writer (store/snapshot.py)."""
    return Stream(_nbytes(state), functools.partial(_save_without_crc32, state))


def _save_without_crc32(obj, f):
    """torch.save(obj, f) without its zip records' CRC-32 (records say 0; torch.load reads them, `unzip -t` would
    not): the checkpoint manifest hashes the whole file already (checkpoint_set.HASHES), and the CRC took 110 ms of
    the background writer's CPU a save at unet_256. torch's switch is process-wide, so it is off only around this
    call, under a lock: another thread's torch.save meanwhile may also go without it, and is still loadable."""
    with _CRC32_SWITCH:
        before = torch.serialization.get_crc32_options()
        torch.serialization.set_crc32_options(False)
        try:
            torch.save(obj, f)
        finally:
            torch.serialization.set_crc32_options(before)


def _nbytes(obj) -> int:
    """The tensor bytes in a nested structure: what torch.save writes, less its few KiB of pickle and zip framing."""
    if isinstance(obj, torch.Tensor):
        return obj.untyped_storage().nbytes()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def load_train_state(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no train state to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read train state ({unreadable(exc)})") from exc
    missing = [k for k in TRAIN_STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a fastpix train state (no {', '.join(missing)})")
    return state


def _some(keys: list[str]) -> str:
    return ", ".join(keys[:KEYS_NAMED]) + (", …" if len(keys) > KEYS_NAMED else "")


def mismatch(net: torch.nn.Module, state: dict) -> str:
    """Why `state` did not load strictly into `net`, in one line: the counts of missing, unexpected and differently
    shaped keys, with the first few of each."""
    own = net.state_dict()
    # BatchNorm fills in a missing num_batches_tracked (old reference checkpoints have none): not a mismatch.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shaped = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the network's {len(own)} keys missing ({_some(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} keys it does not have ({_some(unexpected)})")
    if shaped:
        first = shaped[0]
        parts.append(
            f"{len(shaped)} keys of other shapes ({first}: {list(state[first].shape)} in the file, "
            f"{list(own[first].shape)} in the network{', …' if len(shaped) > 1 else ''})"
        )
    return "; ".join(parts)


def load_into(
    net: torch.nn.Module,
    path: str,
    state: dict | None = None,
    network: str = "this network (check --netG/--netD/--ngf/--ndf/--norm or config.json)",
):
    """Strict load of `state` (default: the file's) into net; a mismatch is one CheckpointError naming the file,
    the network it was loaded into and the mismatching keys."""
    state = load_weights(path) if state is None else state
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # torch lists every key, one per line: kilobytes for a wrong architecture
        problem = mismatch(net, state) or " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{path} does not fit {network}: {problem}") from exc
