"""Encoder test helpers shared by the encoder, backend-parity, interop and timm tests."""

import torch
import torch.nn.functional as F

import mmearth_kernels as mk
from mmearth_kernels.models import ConvNeXtV2Encoder, encoder
from mmearth_kernels.reference import grn_dense

SPARSE_IMPL = "auto"  # the kernels impl="auto" picks on CPU: C++ where built, else the reference


def model(size="atto", seed=0, **kw):
    torch.manual_seed(seed)
    m = encoder(size, **kw)
    with torch.no_grad():
        for name, p in m.named_parameters():  # non-zero everywhere (GRN starts at zero otherwise)
            p.add_(0.1 * torch.randn_like(p))
    return m


def mask_of(batch, ratio, seed, all_masked_sample=False):
    m = mk.random_patch_mask(batch, 7, ratio, generator=torch.Generator().manual_seed(seed))
    kept = mk.num_kept(49, ratio)
    if all_masked_sample:
        m[0] = True
        kept = None
    return m, kept


def run(m, backend, x, mask, kept, **kw):
    m.backend = backend
    for k, v in kw.items():
        setattr(m, k, v)
    m.zero_grad()
    y = m(x, mask, kept)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    return y.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}


def plain_convnextv2(m: ConvNeXtV2Encoder, x):
    """Upstream's dense ConvNeXt V2 forward (no mask anywhere), written independently."""
    def ln_cf(t, norm):
        return F.layer_norm(t.permute(0, 2, 3, 1), norm.normalized_shape, norm.weight, norm.bias, norm.eps)\
            .permute(0, 3, 1, 2)
    st = m.stem
    if st.kind == "mmearth":
        x = F.gelu(ln_cf(st.conv(x), st.norm1))
        x = ln_cf(st.dwconv(x), st.norm2)
    else:
        x = ln_cf(st.conv(x), st.norm)
    for i in range(4):
        if i:
            x = m.downsample[i].conv(ln_cf(x, m.downsample[i].norm))
        for blk in m.stages[i]:
            y = blk.dwconv(x).permute(0, 2, 3, 1)
            y = F.gelu(blk.pwconv1(blk.norm(y)))
            y = blk.pwconv2(grn_dense(y, blk.grn.gamma, blk.grn.beta))
            x = x + y.permute(0, 3, 1, 2)
    return x
