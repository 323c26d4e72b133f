"""The extension is loaded and the dispatcher has exactly the kernels the op table and the build promise; the
public names are the table's; ``info`` runs."""

import os

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels import _extension
from mmearth_kernels.ops.registry import KINDS, OPS

# The C++ kernels the table declares: (op, dispatch key) of every impl with its own op and a dispatch key
DECLARED = {(name, KINDS[i.kind].dispatch_key) for spec in OPS.values() for i in spec.impls
            if i.fused and KINDS[i.kind].dispatch_key for name in i.torch_ops.values()}
KEYS = sorted({k.dispatch_key for k in KINDS.values() if k.dispatch_key})
CPP = [(op, key, (op, key) in DECLARED) for op in sorted({op for op, _ in DECLARED}) for key in KEYS]


def test_extension_loaded():
    if os.environ.get("MMEARTH_NO_EXT") == "1":
        pytest.skip("MMEARTH_NO_EXT=1: pure-Python install on purpose")
    assert _extension.LOADED, f"mmearth_kernels._C did not load: {_extension.LOAD_ERROR}"


@pytest.mark.parametrize("op, key, declared", CPP, ids=[f"{op}-{key}" for op, key, _ in CPP])
def test_kernels_registered_as_declared_and_built(op, key, declared):
    """A kernel for every (op, key) the table declares (CUDA ones iff built with CUDA), none for the others."""
    if not _extension.LOADED:
        pytest.skip(f"mmearth_kernels._C is not built: {_extension.LOAD_ERROR}")
    want = declared and (key == "CPU" or mk.built_with_cuda())
    assert _extension._dispatcher_has(op, key) == want
    assert _extension.has_kernel(op, key) == want  # what the table was told at registration


def test_every_op_has_its_cpu_kernel_here():
    """Fails loudly (instead of silently testing nothing) if the extension did not build."""
    if os.environ.get("MMEARTH_NO_EXT") == "1":
        pytest.skip("MMEARTH_NO_EXT=1: pure-Python install on purpose")
    missing = [spec.name for spec in OPS.values() if spec.impl("cpu") and "cpu" not in mk.available_impls(spec.name,
                                                                                                           "cpu")]
    assert not missing, f"no C++ CPU kernel for {missing}: mmearth_kernels._C failed to build or load"


def test_build_had_cuda_when_required():
    """CI sets MMEARTH_REQUIRE_CUDA_BUILD=1: torch has CUDA and nvcc is installed, so the .cu files
    must have been compiled (a .cu that does not compile must fail CI, not be skipped)."""
    if os.environ.get("MMEARTH_REQUIRE_CUDA_BUILD") != "1":
        pytest.skip("MMEARTH_REQUIRE_CUDA_BUILD is not set (only CI demands the CUDA build)")
    assert torch.version.cuda, "torch was built without CUDA"
    assert mk.built_with_cuda(), "the extension was built without its CUDA sources"


def test_public_names_are_the_tables():
    for name, spec in OPS.items():
        assert getattr(mk, name) is spec.fn and name in mk.__all__
    assert mk.IMPLS == ("auto", *KINDS)


def test_info_runs(capsys):
    from mmearth_kernels import info
    from mmearth_kernels.models.registry import BACKEND_SPECS

    info.main()
    out = capsys.readouterr().out
    assert "extension" in out
    for name in [*OPS, *BACKEND_SPECS]:
        assert f"\n{name} " in out or f"  {name} " in out, name
