"""MP-MAE test helpers shared by the MP-MAE and backend-parity tests: targets, a non-trivial model, a step."""

import torch

from mmearth_kernels.models import MPMAE
from mmearth_kernels.models.mpmae import IMAGE_TASKS, PIXEL_TASKS

IMPL = "auto"  # the kernels impl="auto" picks on CPU: C++ where built, else the reference


def targets(B, img=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = {}
    for name, C in PIXEL_TASKS.items():
        if name in ("dynamic_world", "esa_worldcover"):
            v = torch.randint(-1, C, (B, img, img), generator=g)
        else:
            v = torch.randn(B, C, img, img, generator=g)
            v[:, :, :5, :5] = float("nan")  # some no-data
        t[name] = v
    for name, C in IMAGE_TASKS.items():
        if name in ("biome", "eco_region"):
            t[name] = torch.randint(0, C, (B,), generator=g)
        else:
            t[name] = torch.randn(B, C, generator=g)
    t["era5"][0] = float("nan")
    return t


def mpmae_model(impl=IMPL, **kw):
    torch.manual_seed(0)
    m = MPMAE("atto", impl=impl, init="standard", **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def loss_and_grads(m, x, t, mask, kept):
    m.zero_grad()
    out = m(x, t, mask, kept)
    out["loss"].backward()
    return out, {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
