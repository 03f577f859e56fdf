"""The streaming path: batches equal make_loader's and the cache's; bounded ring; clean stops, never a hang."""

import os
import threading
from functools import partial

import pytest
import torch
from paired_batches import assert_same_batches, dataset, pipeline_batches, reference_batches

from fastpix.data import stream as S
from fastpix.data.cache import CachedLoader, PairCache
from fastpix.data.dataset import DataError
from fastpix.data.stream import StreamLoader, make_pipeline


def within(seconds, fn):
    """Run fn in a thread; fail (instead of hanging the suite) when it does not return in time."""
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread, which re-raises it
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not finish within {seconds} s"
    if "error" in result:
        raise result["error"]
    return result.get("value")


@pytest.mark.parametrize("direction,nc", [("AtoB", (3, 3)), ("BtoA", (1, 3)), ("AtoB", (3, 1))])
def test_stream_equals_paired_dataset_and_cache(data, tmp_path, direction, nc):
    ds = dataset(data, direction, nc)
    stream = StreamLoader(ds, 3, seed=9, threads=2, depth=2)
    cached = CachedLoader(PairCache(ds, cache_dir=str(tmp_path / "c"), progress=False), 3, seed=9)
    for epoch, start in ((1, 0), (2, 4)):
        got = within(30, partial(pipeline_batches, stream, epoch, start))
        assert_same_batches(got, reference_batches(ds, 3, 9, epoch, start))
        assert_same_batches(got, pipeline_batches(cached, epoch, start))


def test_rank_slices(data):
    ds = dataset(data)
    for rank in (0, 1):
        stream = StreamLoader(ds, 4, seed=1, rank=rank, world=2)
        assert_same_batches(
            within(30, partial(pipeline_batches, stream, 3)), reference_batches(ds, 4, 1, 3, rank=rank, world=2)
        )


def test_ring_is_bounded(data):
    stream = StreamLoader(dataset(data), 1, depth=2)
    for epoch in range(3):
        assert len(within(30, partial(pipeline_batches, stream, epoch))) == 8
        assert stream.slots_allocated <= 2


def test_early_break_stops_the_thread_and_next_epoch_works(data):
    ds = dataset(data)
    stream = StreamLoader(ds, 1, seed=2, depth=2)

    def one_then_break():
        for batch in stream:
            return batch

    within(10, one_then_break)
    within(10, lambda: stream._producer.thread.join())
    assert_same_batches(within(30, lambda: pipeline_batches(stream, 1)), reference_batches(ds, 1, 2, 1))
    assert stream.slots_allocated <= 2


def test_consumer_error_stops_the_thread(data):
    stream = StreamLoader(dataset(data), 1, depth=2)

    def fail_in_loop():
        for _ in stream:
            raise ValueError("consumer failed")

    with pytest.raises(ValueError, match="consumer failed"):
        within(10, fail_in_loop)
    within(10, lambda: stream._producer.thread.join())


def test_decode_thread_error_surfaces(data, monkeypatch):
    real, calls = S.decode_into, []

    def failing(*args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("decoder broke")
        return real(*args)

    monkeypatch.setattr(S, "decode_into", failing)
    stream = StreamLoader(dataset(data), 2, depth=2)
    with pytest.raises(RuntimeError, match="decoder broke"):
        within(10, lambda: pipeline_batches(stream, 0))
    within(10, lambda: stream._producer.thread.join())


def test_bad_file_named_or_skipped(data):
    with open(os.path.join(data, "train", "0006.png"), "wb") as f:
        f.write(b"\x89PNG broken")
    with pytest.raises(DataError, match="0006.png"):
        within(10, lambda: pipeline_batches(StreamLoader(dataset(data), 2), 0))
    ds = dataset(data, skip_bad_images=True)
    with pytest.warns(UserWarning, match="0006.png"):
        got = within(30, lambda: pipeline_batches(StreamLoader(ds, 2, seed=3), 0))
    with pytest.warns(UserWarning):
        assert_same_batches(got, reference_batches(ds, 2, 3, 0))


def test_make_pipeline_stream(data):
    ds = dataset(data)
    pipe = make_pipeline(ds, 4, seed=6, mode="stream", num_threads=2)
    assert pipe.mode == "stream" and len(pipe) == 2
    assert_same_batches(within(30, lambda: pipeline_batches(pipe, 5)), reference_batches(ds, 4, 6, 5))


def test_batches_do_not_depend_on_thread_count_or_depth(data):
    ds = dataset(data, seed=4)
    want = reference_batches(ds, 3, 2, 6)
    for threads, depth in ((1, 1), (2, 4)):
        stream = StreamLoader(ds, 3, seed=2, threads=threads, depth=depth)
        assert_same_batches(within(30, partial(pipeline_batches, stream, 6)), want)


def test_training_equals_the_dataloader_and_resumes_exactly(tiny_data, tmp_path):
    """Whole training runs: the cache and the stream give the DataLoader's weights bit for bit, and a streamed run
    stopped after 2 iterations and resumed equals one run of 5 (across an epoch boundary)."""
    import dataclasses

    from fastpix.config import DataConfig, ModelConfig, TrainConfig
    from fastpix.store.weights import load_train_state, load_weights
    from fastpix.train.loop import train

    def run(folder, pipeline, num_threads=0, **train_kw):
        model = ModelConfig(netG="unet_64", ngf=4, ndf=4)
        data_cfg = DataConfig(
            dataroot=tiny_data,
            load_size=72,
            crop_size=64,
            num_threads=num_threads,
            data_pipeline=pipeline,
            cache_dir=str(tmp_path / "cache"),
        )
        train_cfg = TrainConfig(
            name="run",
            checkpoints_dir=str(tmp_path / folder),
            batch_size=3,
            n_epochs=1,
            n_epochs_decay=1,
            print_freq=100,
            display_freq=100,
            seed=5,
        )
        folder = train(model, data_cfg, dataclasses.replace(train_cfg, **train_kw), progress=False)
        state = load_train_state(f"{folder}/latest_train_state.pt")
        weights = {
            **load_weights(f"{folder}/latest_net_G.safetensors"),
            **{f"D.{k}": v for k, v in load_weights(f"{folder}/latest_net_D.safetensors").items()},
        }
        return state["iteration"], state["epoch"], weights

    def assert_same(got, want):
        assert got[:2] == want[:2] and got[2].keys() == want[2].keys()
        assert all(torch.equal(got[2][k], want[2][k]) for k in want[2]), [
            k for k in want[2] if not torch.equal(got[2][k], want[2][k])
        ]

    loader = run("loader", "loader", max_iters=5)
    assert loader[:2] == (5, 2)
    assert_same(run("loader2", "loader", num_threads=2, max_iters=5), loader)
    assert_same(run("cache", "cache", max_iters=5), loader)
    run("stream", "stream", max_iters=2)
    assert_same(run("stream", "stream", num_threads=2, max_iters=5, continue_train=True), loader)


@pytest.mark.gpu
def test_stream_on_cuda_equals_paired_dataset(data):
    """Pinned ring slots, copies on a side stream, crops gathered on the GPU: the CPU DataLoader's batches bit for
    bit, channels_last, over several epochs so that every slot is reused while its last copy may be in flight."""
    ds = dataset(data, "BtoA", (1, 3))
    stream = StreamLoader(ds, 2, seed=9, device="cuda", threads=2, depth=2)
    for epoch in range(3):
        got = within(60, partial(pipeline_batches, stream, epoch))
        assert all(b["A"].is_cuda and b["A"].is_contiguous(memory_format=torch.channels_last) for b in got)
        torch.cuda.synchronize()
        assert_same_batches(
            [{k: (v.cpu() if torch.is_tensor(v) else v) for k, v in b.items()} for b in got],
            reference_batches(ds, 2, 9, epoch),
        )
    slot = stream.free.get_nowait()
    assert slot.a.is_pinned() and slot.b.is_pinned() and stream.slots_allocated <= 2
