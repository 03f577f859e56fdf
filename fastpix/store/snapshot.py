"""A checkpoint's snapshot: what one save needs (G's and D's state, the train state), copied off the live tensors on
the training thread and written later, on the background writer (checkpoint_writer.py), without touching the
networks again.

Taking it is the only part of a save the training thread waits for, so it is one copy of each tensor, the cheapest
that is safe against the next optimizer step (which changes parameters and moments in place: a reference would not
do), into host buffers kept from one save to the next: fresh buffers cost a page fault per 4 KiB, measured at ~4x
the copy itself on a CPU. On a CPU the copy is a memcpy (tensors keep their layout: channels-last weights are made
contiguous by the writer, not here). On a GPU it goes to pinned host memory with non-blocking copies, and one event
recorded after them is what the writer waits on: stream order puts the copies before the next step's kernels, so the
training thread only queues them. The buffers are reused only once the previous save is written (the writer holds
at most one save at a time).
"""

from __future__ import annotations

import dataclasses

import torch

from fastpix.store.checkpoint_set import Stream
from fastpix.store.run_folder import TRAIN_STATE
from fastpix.store.weights import safetensors_stream, train_state_stream


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Host copies of one save: the networks' state dicts by name ('G', 'D'), the train state, the tags its weights
    are also saved under (an epoch, iter_<N>), what the manifest records, and the event the copies end with (GPU)."""

    nets: dict
    train_state: dict
    tags: tuple
    info: dict  # iteration, epoch, position
    copied: torch.cuda.Event | None = None  # on a GPU; None when the copies were made synchronously

    def files(self) -> dict[str, Stream]:
        """The set's files (name -> Stream), to write once the copies have landed: latest (and each tag's) weights
        of G and D, and the train state."""
        if self.copied is not None:
            self.copied.synchronize()
        streams = {net: safetensors_stream(state, self.info) for net, state in self.nets.items()}
        files = {f"{tag}_net_{net}.safetensors": streams[net] for tag in ("latest", *self.tags) for net in streams}
        files[TRAIN_STATE] = train_state_stream(self.train_state)
        return files


class Snapshotter:
    """Takes snapshots into host buffers it keeps (see the module docstring)."""

    def __init__(self):
        self._buffers: list[torch.Tensor | None] = []
        self._used = 0
        self._gpu = None  # the device of the copies queued by the snapshot being taken, if any

    def take(self, nets: dict, train_state: dict, tags=()) -> Snapshot:
        """nets: name -> module; train_state: epoch, position, iteration, optimizers, RNG states (tensors anywhere).
        Call only once the previous snapshot is written: its buffers are overwritten."""
        self._used, self._gpu = 0, None
        copies = {name: self._copy(net.state_dict()) for name, net in nets.items()}
        state = self._copy(train_state)
        copied = None
        if self._gpu is not None:
            copied = torch.cuda.Event()
            copied.record(torch.cuda.current_stream(self._gpu))
        info = {k: train_state[k] for k in ("iteration", "epoch", "position")}
        return Snapshot(copies, state, tuple(tags), info, copied)

    def _copy(self, obj):
        """obj with every tensor replaced by its copy in a kept buffer; new containers, the same other values."""
        if isinstance(obj, torch.Tensor):
            return self._copy_tensor(obj.detach())
        if isinstance(obj, dict):
            return {k: self._copy(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._copy(v) for v in obj)
        return obj  # numbers, strings, None: immutable

    def _copy_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        if self._used == len(self._buffers):
            self._buffers.append(None)
        buffer = self._buffers[self._used]
        if (
            buffer is None
            or buffer.dtype != tensor.dtype
            or buffer.shape != tensor.shape
            or buffer.stride() != tensor.stride()
        ):
            # the tensor's own layout (preserve_format): the copy is then a plain memcpy
            buffer = torch.empty_like(tensor, device="cpu", pin_memory=tensor.is_cuda)
            self._buffers[self._used] = buffer
        self._used += 1
        if tensor.is_cuda:
            self._gpu = tensor.device
        buffer.copy_(tensor, non_blocking=tensor.is_cuda)
        return buffer
