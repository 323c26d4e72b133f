"""One ConvNeXt V2 encoder forward + backward, the reference backend (dense-masked) vs the default (sparse), on the
same weights and data (atto and tiny, 56/8, 19 of 49 patches kept, fp32). CPU batch 32; GPU batch 64.

    cd benchmarks && python -m pytest bench_encoder.py --benchmark-only
"""

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels.models import encoder
from mmearth_kernels.models.registry import default_backend, reference_backend

from conftest import BATCH, CONTEXT, DEVICES, sync

CASES = [(dev, size, backend) for dev in DEVICES for size in ("atto", "tiny")
         for backend in (reference_backend(), default_backend())]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(c))
def test_encoder_fwdbwd(case, benchmark):
    dev, size, backend = case
    batch = min(BATCH, 32) if dev == "cpu" else BATCH
    torch.manual_seed(0)
    m = encoder(size, backend=backend).to(dev)
    x = torch.randn(batch, 12, 56, 56, device=dev)
    mask = mk.random_patch_mask(batch, 7, 0.6, generator=torch.Generator().manual_seed(0)).to(dev)
    kept = mk.num_kept(49, 0.6)

    def step():
        m.zero_grad(set_to_none=True)
        m(x, mask, kept).square().mean().backward()
        sync(dev)

    benchmark.group = f"encoder {dev} {size} 56/8 batch {batch} fp32 fwd+bwd"
    benchmark.extra_info.update(CONTEXT, kind="encoder", device=dev, model=size, backend=backend, batch=batch)
    benchmark.pedantic(step, rounds=5, warmup_rounds=1, iterations=1)
