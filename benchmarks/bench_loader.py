"""Loader throughput: gzip HDF5 vs the uncompressed cache, on a generated MMEarth64-format file
with all 12 tasks (64 px tiles, random crop 56, shuffled batches of 64), one process and one torch
thread, i.e. samples/s per worker (per core).

    cd benchmarks && python -m pytest bench_loader.py --benchmark-only
"""

import os

import numpy as np
import pytest
import torch

from train.data import MMEarthDataset
from train.data.cache import build_cache
from train.data.synthetic import write_dataset

from conftest import BATCH, CONTEXT

TILES = 1024 if BATCH >= 16 else 64


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmearth64")
    stem = write_dataset(str(root), tiles=TILES, size=64, seed=0, quiet=True, splits=(1.0, 0.0, 0.0))
    return stem, build_cache(stem, str(root / "cache"))


@pytest.mark.parametrize("source", ["hdf5-gzip", "cache"])
def test_loader(source, data, benchmark):
    stem, cache = data
    ds = MMEarthDataset(stem, split="train", crop=56, cache=cache if source == "cache" else None)
    rng = np.random.default_rng(0)
    batch = 64

    def setup():
        return (sorted(rng.choice(len(ds), batch, replace=False).tolist()),), {}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        benchmark.group = "loader MMEarth64, 12 tasks, batch 64"
        benchmark.extra_info.update(CONTEXT, kind="loader", source=source, samples=batch, tiles=TILES,
                                    workers=1, torch_threads=1, pid=os.getpid())
        benchmark.pedantic(ds.read_batch, setup=setup, rounds=10, warmup_rounds=1, iterations=1)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("normalize", [True, False], ids=["normalised-in-worker", "raw-for-gpu"])
@pytest.mark.parametrize("workers", sorted({1, os.cpu_count() or 1}), ids=lambda w: f"{w}-workers")
def test_loader_workers(workers, normalize, data, benchmark):
    """The trainer's GPU data path: DataLoader workers reading the cache (all 12 tasks, crop 56, shuffled
    batches of 64), with the batch normalised in the worker (the CPU trainer) or left raw for the device
    (``normalize=False``; the GPU trainer normalises after the copy). samples/s = 64 * batches / time."""
    stem, cache = data
    ds = MMEarthDataset(stem, split="train", crop=56, cache=cache, normalize=normalize)
    rng = np.random.default_rng(0)
    batches = [sorted(rng.choice(len(ds), 64, replace=False).tolist()) for _ in range(400)]
    from train.batches import BatchReads  # the trainer's loader: whole batches, nothing restacked

    loader = torch.utils.data.DataLoader(BatchReads(ds), batch_size=None, sampler=batches, num_workers=workers,
                                         persistent_workers=True, prefetch_factor=4)
    it = iter(loader)
    for _ in range(2 * workers):  # workers started and their first batches made
        next(it)
    per_round = 4 * workers
    benchmark.group = "loader MMEarth64 from the cache, DataLoader workers, 12 tasks, batch 64"
    benchmark.extra_info.update(CONTEXT, kind="loader-workers", source="cache", samples=64 * per_round,
                                tiles=TILES, workers=workers, normalize=normalize)
    rounds = max(1, min(5, (len(batches) - 2 * workers) // per_round - 1))
    benchmark.pedantic(lambda: [next(it) for _ in range(per_round)], rounds=rounds, warmup_rounds=0, iterations=1)

