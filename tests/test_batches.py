"""The loop's micro-batches (``train.batches``): epochs roll over by themselves from any (epoch, position),
DataLoader workers give the same batches as the main process, the device path (raw batches normalised
after the transfer) equals normalising in the loader, and a split smaller than one batch is a clear error."""

import pytest
import torch

from train.batches import DeviceBatches, MicroBatches, default_workers, epoch_batches
from train.data import MMEarthDataset
from train.data.reader import device_stats
from train.data.synthetic import write_dataset


@pytest.fixture(scope="module")
def stem(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("data")), tiles=14, size=64, seed=6, quiet=True,
                         splits=(1.0, 0.0, 0.0))


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_micro_batches_roll_over_epochs_and_start_anywhere(stem):
    ds = MMEarthDataset(stem, crop=32, seed=1)
    src = MicroBatches(ds, 4, seed=2)  # 14 tiles: 3 batches per epoch, 2 tiles dropped
    got = _take(iter(src), 7)
    assert [tag for tag, _ in got] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]
    want = [b for e in range(3) for b in epoch_batches(14, 4, e, 2, 0, 1)][:7]
    assert [ds.rows[b].tolist() for b in want] == [batch["index"].tolist() for _, batch in got]
    src2 = MicroBatches(ds, 4, seed=2, start=(1, 1))
    again = _take(iter(src2), 3)
    assert [t for t, _ in again] == [(1, 1), (1, 2), (2, 0)]
    for (_, a), (_, b) in zip(again, got[4:]):  # a restart reads the same crops of the same rows
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, equal_nan=True, msg=lambda m, k=k: f"{k}: {m}")
    assert [t for t, _ in _take(iter(MicroBatches(ds, 4, seed=2, start=(0, 3))), 1)] == [(1, 0)]


def test_workers_give_the_same_batches(stem):
    ds = MMEarthDataset(stem, crop=32, seed=1)
    main = _take(iter(MicroBatches(ds, 4, seed=2)), 4)
    workers = _take(iter(MicroBatches(ds, 4, seed=2, workers=2)), 4)
    for (ta, a), (tb, b) in zip(main, workers):
        assert ta == tb
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, equal_nan=True, msg=lambda m, k=k: f"{k}: {m}")


def test_device_path_normalises_after_the_transfer(stem):
    ref = _take(iter(MicroBatches(MMEarthDataset(stem, crop=32, seed=1), 4, seed=2)), 2)
    raw_ds = MMEarthDataset(stem, crop=32, seed=1, normalize=False)
    dev = DeviceBatches(MicroBatches(raw_ds, 4, seed=2), "cpu", stats=device_stats(raw_ds.stats, "cpu"),
                        inputs=raw_ds.inputs, targets=raw_ds.targets)
    for (ta, a), (tb, b) in zip(ref, _take(dev, 2)):
        assert ta == tb and a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], equal_nan=True, msg=lambda m, k=k: f"{k}: {m}")
    assert dev.wait_s > 0


def test_a_split_smaller_than_a_batch_is_a_clear_error(stem):
    ds = MMEarthDataset(stem, crop=32)
    with pytest.raises(ValueError, match=r"train split has 14 samples, fewer than one global batch \(batch size 8 x 2"):
        MicroBatches(ds, 8, seed=0, world=2)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        MicroBatches(ds, 0, seed=0)


def test_default_workers():
    assert default_workers("cpu") == 0
    assert 1 <= default_workers("cuda") <= 16
