"""Released checkpoints as upstream saves them load with weights_only=True and one allowlisted global
(argparse.Namespace); any other pickled global is refused, naming it and the file."""

import datetime
import pathlib

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels.interop import ALLOWED_GLOBALS, UnsafeCheckpointError, load_file, load_sparse_checkpoint
from mmearth_kernels.models import encoder

from _checkpoints import save_as_upstream, upstream_args
from _encoder_helpers import model


def test_a_file_saved_as_upstreams_save_model_loads(tmp_path):
    src = model()
    path = tmp_path / "checkpoint-199.pth"
    save_as_upstream(path, src)
    dst = encoder("atto")
    unused = load_sparse_checkpoint(dst, str(path))
    assert sorted(unused) == ["mask_token", "proj.weight"]
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert torch.equal(a, b), k
    ck = load_file(path)
    assert ck["args"].model == "convnextv2_atto" and ck["epoch"] == 199 and "state" in ck["optimizer"]
    x = torch.randn(2, 12, 56, 56)
    mask = mk.random_patch_mask(2, 7, 0.6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(dst(x, mask, 19), src(x, mask, 19))


def test_plain_weights_only_refuses_the_namespace_we_allowlist(tmp_path):
    """The reason for the allowlist: torch's default refuses upstream's files outright."""
    path = tmp_path / "checkpoint-199.pth"
    save_as_upstream(path, model())
    with pytest.raises(Exception, match="argparse.Namespace"):
        torch.load(path, weights_only=True)
    assert list(ALLOWED_GLOBALS) == [__import__("argparse").Namespace]


@pytest.mark.parametrize("extra, name", [
    (pathlib.PurePosixPath("/data"), "pathlib.PurePosixPath"),
    (datetime.date(2024, 5, 1), "datetime.date"),
], ids=["path-in-args", "date-in-args"])
def test_any_other_global_is_refused_with_its_name_and_the_file(tmp_path, extra, name):
    path = tmp_path / "checkpoint-199.pth"
    save_as_upstream(path, model(), data_path=extra)
    with pytest.raises(UnsafeCheckpointError, match=rf"{path}: refused: the file pickles {name}"):
        load_sparse_checkpoint(encoder("atto"), str(path))


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "x.pth"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint"):
        load_file(bad)
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_file(tmp_path / "missing.pth")
    (tmp_path / "y.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="not a readable .safetensors"):
        load_file(tmp_path / "y.safetensors")
    assert upstream_args().blr == 1.5e-4
