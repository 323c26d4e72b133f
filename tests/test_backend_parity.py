"""Every backend of the registry (``mmearth_kernels.models.registry``), generated: each exact backend computes what
the reference backend computes on the same weights (encoder features and every gradient, the MP-MAE loss and every
gradient; fp32 and fp64; mask edge cases; each kernel impl), changing masked pixels changes nothing, bf16 autocast
stays close to fp32, and every name round-trips through the end-to-end benchmark. A new backend gets every check
by being registered."""

import pytest
import torch

from mmearth_kernels.models.registry import BACKEND_SPECS, BACKENDS, default_backend, reference_backend

from _compare import assert_grads_close
from _encoder_helpers import mask_of, model, plain_convnextv2, run
from _mpmae_helpers import loss_and_grads, mpmae_model, targets
from conftest import NO_INTERPRETER

REFERENCE = reference_backend()
# (size, img, patch, stem, mask ratio, a sample all masked, grn_stats): both stems and geometries, every mask edge
CONFIGS = {
    "atto-56-0.6": ("atto", 56, 8, "mmearth", 0.6, False, "per_sample"),
    "atto-56-nothing_masked": ("atto", 56, 8, "mmearth", 0.0, False, "per_sample"),
    "atto-56-sample_masked-batch": ("atto", 56, 8, "mmearth", 0.75, True, "batch"),
    "atto-112-batch": ("atto", 112, 16, "mmearth", 0.6, False, "batch"),
    "atto-56-original-sample_masked": ("atto", 56, 8, "original", 0.4, True, "per_sample"),
    "pico-56-batch_masked": ("pico", 56, 8, "mmearth", 1.0, False, "per_sample"),
}
# A slow backend (a correctness reference: an engine's Python loop over offsets) on a small model, marked slow
SMALL = dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 40))
SMALL_CONFIGS = ("atto-56-0.6", "atto-56-sample_masked-batch", "atto-56-original-sample_masked")
# impl="ref" on two configs of the small model: the backend's own plumbing with the reference ops
REF_CONFIGS = ("atto-56-sample_masked-batch", "atto-56-original-sample_masked")


def _marks(spec):
    why = spec.why_unavailable("cpu")
    return ([pytest.mark.skip(reason=f"backend {spec.name!r}: {why}")] if why else []) + \
        ([pytest.mark.slow] if spec.slow else [])


def _params(grid, which=lambda spec: spec.exact and not spec.reference):
    """(backend, impl, *grid entry) for every backend ``which`` selects (the exact ones but the reference)."""
    out = []
    for spec in BACKEND_SPECS.values():
        if not which(spec):
            continue
        for impl in ("auto", "ref") if spec.kernels else ("auto",):
            for extra in grid(spec, impl):
                out.append(pytest.param(spec.name, impl, *extra, marks=_marks(spec),
                                        id="-".join([spec.name, impl, *map(str, extra)])))
    return out


def _auto(spec, impl):
    return [()] if impl == "auto" else []


ENCODER = _params(lambda spec, impl: [(c,) for c in (REF_CONFIGS if impl == "ref" else SMALL_CONFIGS if spec.slow
                                                     else CONFIGS)])
FP64 = _params(_auto)
MPMAE = _params(lambda spec, impl: [] if spec.slow or impl != "auto" else [(e,) for e in ("sample_masked", "0.6")])
EXACT = _params(_auto, which=lambda spec: spec.exact)  # the reference too
FAST = _params(_auto, which=lambda spec: spec.exact and not spec.slow)  # the reference too


def _small(backend, impl="auto") -> dict:
    return SMALL if BACKEND_SPECS[backend].slow or impl == "ref" else {}


def _model(backend, config, impl="auto", small=False):
    size, img, patch, stem, _, _, stats = CONFIGS[config]
    return model(size, img_size=img, patch_size=patch, stem=stem, grn_stats=stats, impl=impl,
                 **(SMALL if small else _small(backend, impl)))


@pytest.mark.parametrize("backend, impl, config", ENCODER)
def test_encoder_matches_the_reference(backend, impl, config):
    size, img, patch, stem, ratio, empty0, stats = CONFIGS[config]
    m = _model(backend, config, impl)
    x = torch.randn(3, 12, img, img)
    mask, kept = mask_of(3, ratio, seed=len(size) + img, all_masked_sample=empty0)
    want, want_g = run(m, REFERENCE, x, mask, kept)
    got, got_g = run(m, backend, x, mask, kept)
    assert got.shape == (3, m.dims[-1], img // patch, img // patch)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)
    # Gradients are sums over thousands of sites in another order: compared by each parameter's relative error
    # (fp64 below shows the two are the same function)
    assert_grads_close(got_g, want_g, what=f"{backend} {impl}")
    if empty0:
        assert got[0].abs().sum() == 0 and want[0].abs().sum() == 0


@pytest.mark.parametrize("backend, impl", FP64)
def test_encoder_matches_the_reference_in_fp64(backend, impl):
    """The same function to rounding: fp64 on the small model (the exactness of the plumbing, not of the sizes)."""
    m = _model(backend, "atto-56-sample_masked-batch", impl, small=True).double()
    x = torch.randn(2, 12, 56, 56, dtype=torch.float64)
    mask, kept = mask_of(2, 0.6, seed=11)
    want, want_g = run(m, REFERENCE, x, mask, kept)
    got, got_g = run(m, backend, x, mask, kept)
    torch.testing.assert_close(got, want, atol=1e-11, rtol=1e-11)
    for name in want_g:
        torch.testing.assert_close(got_g[name], want_g[name], atol=1e-9, rtol=1e-9, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend, impl, masks", MPMAE)
def test_mpmae_loss_and_gradients_match_the_reference(backend, impl, masks):
    m = mpmae_model(impl=impl)
    x, t = torch.randn(3, 12, 56, 56), targets(3)
    mask, kept = m.random_mask(3, generator=torch.Generator().manual_seed(2))
    if masks == "sample_masked":
        mask[0], kept = True, None
    m.encoder.backend = REFERENCE
    want, want_g = loss_and_grads(m, x, t, mask, kept)
    m.encoder.backend = backend
    got, got_g = loss_and_grads(m, x, t, mask, kept)
    assert torch.isfinite(got["loss"])
    torch.testing.assert_close(got["loss"], want["loss"], rtol=1e-5, atol=1e-5)
    assert_grads_close(got_g, want_g, what=f"{backend} {impl}")


@pytest.mark.parametrize("backend, impl", FAST)
def test_bf16_autocast_step_stays_close_to_fp32(backend, impl):
    """The trainer's GPU default: activations in bf16, parameters (GRN, depthwise weights) in fp32."""
    m = mpmae_model()
    m.encoder.backend = backend
    x, t = torch.randn(2, 12, 56, 56), targets(2)
    mask, kept = m.random_mask(2, generator=torch.Generator().manual_seed(2))
    o32, g32 = loss_and_grads(m, x, t, mask, kept)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o16 = m(x, t, mask, kept)
    m.zero_grad()
    o16["loss"].backward()
    assert torch.isfinite(o16["loss"])
    torch.testing.assert_close(o16["loss"].float(), o32["loss"], rtol=3e-2, atol=3e-2)
    for name, p in m.named_parameters():
        if name in g32:
            assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
    w, w32 = m.encoder.stages[0][0].dwconv.weight.grad, g32["encoder.stages.0.0.dwconv.weight"]
    assert (w - w32).norm() < 0.1 * w32.norm()


@pytest.mark.parametrize("backend, impl", EXACT)
def test_masked_pixels_change_nothing(backend, impl):
    m = model(impl=impl, backend=backend, **_small(backend))
    mask, kept = mask_of(2, 0.6, seed=5)
    x = torch.randn(2, 12, 56, 56)
    hidden = mask.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, None].expand_as(x)
    x2 = x.clone()
    x2[hidden] = 1e3 * torch.randn(int(hidden.sum()))
    with torch.no_grad():
        out = m(x, mask, kept)
        if BACKEND_SPECS[backend].reproducible:
            # bit-equal: the masked pixels are never read, and nothing else changes between the two calls
            torch.testing.assert_close(m(x, mask, kept), out, atol=0, rtol=0)
            torch.testing.assert_close(m(x2, mask, kept), out, atol=0, rtol=0)
        else:
            # equal but for the call-to-call rounding of the engine's site order (~1e-6 here); a masked pixel
            # read anywhere would move outputs by orders of magnitude more (they are 1e3 x randn)
            torch.testing.assert_close(m(x2, mask, kept), out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stem", ["mmearth", "original"])
@pytest.mark.parametrize("backend, impl", EXACT)
def test_nothing_masked_is_a_plain_convnextv2(backend, impl, stem):
    m = model(stem=stem, backend=backend, **_small(backend))
    x = torch.randn(2, 12, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(m(x), plain_convnextv2(m, x), atol=2e-4, rtol=2e-4)


@pytest.mark.triton
@pytest.mark.parametrize("backend", [s.name for s in BACKEND_SPECS.values() if s.kernels])
def test_triton_kernels_in_the_encoder(backend):
    """The Triton kernels inside the encoder (a small encoder: the interpreter is slow)."""
    from mmearth_kernels import triton_kernels as _triton

    if not _triton.usable("cpu"):
        pytest.skip(NO_INTERPRETER)
    m = model(depths=(1, 1, 1, 1), dims=(8, 16, 8, 16), img_size=16, patch_size=8, impl="triton")
    x = torch.randn(2, 12, 16, 16)
    mask = torch.tensor([[[0, 1], [1, 0]], [[1, 1], [1, 0]]], dtype=torch.bool)
    want, want_g = run(m, REFERENCE, x, mask, None)
    got, got_g = run(m, backend, x, mask, None)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)
    assert_grads_close(got_g, want_g)


def test_the_registry():
    """One default and one reference backend; the reference is exact and needs nothing; every backend is the
    encoder's choice, and an unknown one is refused naming them."""
    from mmearth_kernels.models import encoder

    assert BACKEND_SPECS[REFERENCE].exact and BACKEND_SPECS[REFERENCE].why_unavailable("cpu") is None
    assert BACKEND_SPECS[default_backend()].exact
    assert list(BACKENDS) == list(BACKEND_SPECS)
    with pytest.raises(ValueError, match="backend must be one of") as e:
        encoder("atto", backend="nope")
    assert all(name in str(e.value) for name in BACKENDS)


@pytest.mark.parametrize("backend", list(BACKEND_SPECS))
def test_names_round_trip_through_the_e2e_benchmark(backend):
    from benchmarks.e2e import parse_backend
    from mmearth_kernels.ops.registry import KINDS

    assert tuple(parse_backend(backend)) == (backend, "auto", False, False)
    assert tuple(parse_backend(f"{backend}-compiled-graphed")) == (backend, "auto", True, True)
    for kind in KINDS if BACKEND_SPECS[backend].kernels else ():
        assert tuple(parse_backend(f"{backend}-{kind}-graphed")) == (backend, kind, False, True)
