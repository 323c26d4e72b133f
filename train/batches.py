"""Micro-batches for the training loop: epoch after epoch from any (epoch, position), and onto the device
without making the host wait.

* :class:`MicroBatches` yields host batches forever, rolling over epochs itself, so an optimiser step
  takes exactly ``accum`` of them wherever an epoch ends, and a resumed run continues at the very
  micro-batch where the checkpoint was written.
* :class:`DeviceBatches` moves them to the device one ahead: on CUDA the next batch is copied from pinned
  memory and normalised on a side stream while the current step runs.
"""

from __future__ import annotations

import os
import time
from typing import Iterator

import torch

from mmearth_kernels.host_sync import host_only

from .data.reader import normalize_batch


def epoch_batches(n: int, batch: int, epoch: int, seed: int, rank: int, world: int) -> list[list[int]]:
    """This rank's batches of one epoch: a permutation seeded by (seed, epoch), split across ranks,
    drop_last, so any (epoch, position) can be regenerated exactly on resume."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    per_step = batch * world
    steps = n // per_step
    return [order[s * per_step + rank * batch: s * per_step + (rank + 1) * batch] for s in range(steps)]


class BatchReads(torch.utils.data.Dataset):
    """A dataset whose items are whole batches (``ds.read_batch``): the loader's sampler yields lists of
    indices and nothing is cut into samples and stacked again (``batch_size=None`` turns collation off)."""

    def __init__(self, ds):
        self.ds = ds

    def __getitem__(self, idxs) -> dict:
        return self.ds.read_batch(idxs)


def default_workers(device: str, world: int = 1) -> int:
    """DataLoader workers when the config says -1: none on CPU (loading would compete with the step for the
    cores); on GPU, the CPUs this process may use (its share on a multi-GPU node) minus one for the
    training loop itself, at most 16. A worker reads ~2500 raw samples/s from the cache (all 12 tasks,
    crop 56; benchmarks/bench_loader.py on a 2-core EPYC), so 25,000 img/s needs about 10 of them."""
    if device != "cuda":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, cpus // max(1, world) - 1))


class MicroBatches:
    """``((epoch, position), host batch)`` forever, starting at ``start``.

    ``position`` counts the micro-batches of that epoch before this one; the loop stores the position
    after the last micro-batch a step used, which is where a resumed run starts.
    """

    def __init__(self, ds, batch_size: int, *, seed: int, rank: int = 0, world: int = 1, workers: int = 0,
                 pin_memory: bool = False, start: tuple[int, int] = (0, 0)):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if len(ds) < batch_size * world:
            raise ValueError(f"the train split has {len(ds)} samples, fewer than one global batch (batch size "
                             f"{batch_size} x {world} process(es)): lower --batch-size or use more data")
        self.ds, self.batch_size, self.seed, self.rank, self.world = ds, batch_size, seed, rank, world
        self.workers, self.pin_memory, self.start = workers, pin_memory, start

    def per_epoch(self) -> int:
        return len(self.ds) // (self.batch_size * self.world)

    def __iter__(self) -> Iterator[tuple[tuple[int, int], dict]]:
        epoch, position = self.start
        while True:
            if position >= self.per_epoch():
                epoch, position = epoch + 1, 0
            batches = epoch_batches(len(self.ds), self.batch_size, epoch, self.seed, self.rank, self.world)
            self.ds.set_epoch(epoch)  # before the workers copy the dataset: new crops each epoch
            todo = batches[position:]
            if self.workers:
                loader = torch.utils.data.DataLoader(BatchReads(self.ds), batch_size=None, sampler=todo,
                                                     num_workers=self.workers, pin_memory=self.pin_memory)
            else:
                loader = (self.ds.read_batch(b) for b in todo)
            for i, batch in enumerate(loader):
                yield (epoch, position + i), batch
            epoch, position = epoch + 1, 0


class DeviceBatches:
    """Host batches -> device batches, one ahead (see the module docstring).

    Args:
        source: an iterator of ``(tag, host batch)``.
        device: where the step runs.
        stats: when given, batches are raw (``MMEarthDataset(normalize=False)``) and are normalised on the
            device with these statistics (``train.data.reader.device_stats``), after the transfer.
        inputs, targets: the modalities, for the normalisation.
    """

    def __init__(self, source, device: torch.device | str, stats: dict | None = None, inputs=(), targets=()):
        self.source, self.device = iter(source), torch.device(device)
        self.stats, self.inputs, self.targets = stats, tuple(inputs), tuple(targets)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._next = None
        self.wait_s = 0.0  # host time spent waiting for the loader

    def _fetch(self):
        t = time.perf_counter()
        with host_only("data loading"):
            tag, batch = next(self.source)
        self.wait_s += time.perf_counter() - t
        if self.stream is None:
            return tag, self._finish(batch)
        with torch.cuda.stream(self.stream):
            return tag, self._finish(self._move(batch))

    def _move(self, batch: dict) -> dict:
        return {k: (v if v.is_pinned() else v.pin_memory()).to(self.device, non_blocking=True)
                for k, v in batch.items()}

    def to_device(self, batch: dict) -> dict:
        """One host batch on the device and normalised, on the current stream (set-up work, e.g. a held batch)."""
        return self._finish(self._move(batch) if self.stream is not None else batch)

    def _finish(self, batch: dict) -> dict:
        if self.stats is None:
            return batch
        raw = {k[4:]: v for k, v in batch.items() if k.startswith("raw_")}
        out = normalize_batch(raw, batch["l2a"], self.stats, self.inputs, self.targets)
        out["index"] = batch["index"]
        return out

    def __iter__(self):
        return self

    def __next__(self) -> tuple[tuple[int, int], dict]:
        if self.stream is None:  # on the CPU there is nothing to overlap
            return self._fetch()
        if self._next is None:
            self._next = self._fetch()
        tag, batch = self._next
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.stream)
        for v in batch.values():  # allocated on the side stream, used on this one
            v.record_stream(current)
        self._next = self._fetch()  # starts the following copy before this batch's step is queued
        return tag, batch
