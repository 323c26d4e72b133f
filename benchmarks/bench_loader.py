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
        benchmark.pedantic(ds.__getitems__, setup=setup, rounds=10, warmup_rounds=1, iterations=1)
    finally:
        torch.set_num_threads(threads)
