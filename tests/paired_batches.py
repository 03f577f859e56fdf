"""What the cache and stream tests share: a small PairedDataset, the DataLoader path's batches for a position, a
pipeline's batches for a position, and the bit-for-bit comparison of the two."""

import torch

from fastpix.data.dataset import PairedDataset, make_loader

KEYS = ("A", "B", "A_paths", "B_paths", "index")  # the DataLoader path's order


def dataset(root, direction="AtoB", nc=(3, 3), flip=True, seed=5, load=40, crop=32, **kw):
    return PairedDataset(
        root, "train", direction, nc[0], nc[1], load_size=load, crop_size=crop, flip=flip, seed=seed, **kw
    )


def reference_batches(ds, batch_size, seed, epoch, start=0, rank=0, world=1):
    loader, sampler = make_loader(ds, batch_size, True, 0, seed, rank, world)
    sampler.set_position(epoch, start)
    ds.set_epoch(epoch)
    return list(loader)


def pipeline_batches(pipe, epoch, start=0):
    pipe.set_position(epoch, start)
    return list(pipe)


def assert_same_batches(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if w is None:
            assert g is None
            continue
        assert list(g) == list(w) == list(KEYS) and g["index"].dtype == torch.long
        for key in KEYS:
            assert torch.equal(g[key], w[key]) if key in ("A", "B", "index") else g[key] == w[key], key
