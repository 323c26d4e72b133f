"""Sample inputs shared by the tests and the benchmarks (one source for both).

Shapes are small and odd on purpose (odd channel counts exercise the vector tails, odd
resolutions the image borders), masks cover every ratio including the edges: nothing masked,
one sample with everything masked, and a whole batch masked (N = 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .layout import SparseLayout, build_layout
from .masking import num_kept, random_patch_mask

LOW_PRECISION = (torch.float16, torch.bfloat16)
# fp32/fp64 tolerances against the fp64 reference (values are O(1)-O(10) sums of products).
TOLERANCES = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}


@dataclass
class MaskCase:
    batch: int
    grid: int        # mask grid gh = gw
    block: int       # b: stage resolution = grid * block
    ratio: float     # FCMAE mask ratio (kept = int(L * (1 - ratio)) per sample)
    all_masked_sample: bool = False  # additionally mask every patch of sample 0
    seed: int = 0
    name: str = ""   # what the case is for, in test ids ("batch_masked")

    @property
    def resolution(self) -> int:
        return self.grid * self.block

    def __str__(self) -> str:
        extra = "-empty0" if self.all_masked_sample else ""
        return f"B{self.batch}g{self.grid}b{self.block}r{self.ratio}{extra}"


def case_mask(case: MaskCase, device="cpu") -> tuple[torch.Tensor, int | None]:
    """The case's patch mask and kept count (None where samples keep different counts)."""
    g = torch.Generator().manual_seed(case.seed)
    mask = random_patch_mask(case.batch, case.grid, case.ratio, generator=g)
    kept = num_kept(case.grid * case.grid, case.ratio)
    if case.all_masked_sample:
        mask[0] = True
        kept = None  # counts now differ between samples: the data-dependent builder path
    return mask.to(device), kept


def make_layout(case: MaskCase, device="cpu") -> SparseLayout:
    mask, kept = case_mask(case, device)
    return build_layout(mask, case.resolution, kept)


# Every mask ratio incl. the edges; odd grids/blocks; b = 1, 2, 3, 4 (stage 4..1 style).
MASK_CASES = [
    MaskCase(2, 3, 3, 0.0, seed=1, name="nothing_masked"),
    MaskCase(3, 5, 1, 0.6, seed=2, name="block1"),                                  # 7x7-stage style
    MaskCase(2, 3, 2, 0.4, seed=3, name="ratio0.4"),
    MaskCase(2, 4, 3, 0.75, seed=4, name="ratio0.75"),
    MaskCase(3, 3, 4, 0.612, all_masked_sample=True, seed=5, name="sample_masked"),  # one sample all masked
    MaskCase(2, 3, 1, 1.0, seed=6, name="batch_masked"),                            # N = 0
]


@dataclass
class DwconvSample:
    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    layout: SparseLayout
    name: str
    case: MaskCase | None = None

    def args(self):
        return self.x, self.weight, self.bias, self.layout


def dwconv_samples(device="cpu", dtype=torch.float32, requires_grad=False, cases=None) -> list[DwconvSample]:
    """(C, K, bias) combinations crossed with the mask cases; C odd and > one vector width."""
    configs = [(5, 3, True), (13, 5, False), (37, 7, True), (3, 1, True)]
    out = []
    for case in cases or MASK_CASES:  # keyed by the case's seed: the same samples however cases are passed
        for j, (C, K, has_bias) in enumerate(configs):
            if (case.seed + j) % 2:  # a balanced half of the cross product keeps the suite quick
                continue
            g = torch.Generator().manual_seed(100 * case.seed + j)
            lay = make_layout(case, device)
            x = torch.randn(lay.num_rows, C, generator=g).to(device, dtype)
            w = torch.randn(C, 1, K, K, generator=g).div(K).to(device, dtype)
            b = torch.randn(C, generator=g).to(device, dtype) if has_bias else None
            for t in (x, w, b):
                if t is not None:
                    t.requires_grad_(requires_grad)
            out.append(DwconvSample(x, w, b, lay, f"{case}-C{C}K{K}{'b' if has_bias else ''}", case))
    return out


@dataclass
class GrnSample:
    x: torch.Tensor
    gamma: torch.Tensor
    beta: torch.Tensor
    layout: SparseLayout
    name: str
    case: MaskCase | None = None


def grn_samples(device="cpu", dtype=torch.float32, requires_grad=False, cases=None) -> list[GrnSample]:
    out = []
    for case in cases or MASK_CASES:  # keyed by the case's seed: the same samples however cases are passed
        for C in (7, 45):
            g = torch.Generator().manual_seed(10 * case.seed + C)
            lay = make_layout(case, device)
            # non-zero gamma/beta; x of both signs (GRN follows a GELU or a conv)
            x = torch.randn(lay.num_rows, C, generator=g).to(device, dtype)
            gamma = torch.randn(C, generator=g).to(device, dtype)
            beta = torch.randn(C, generator=g).to(device, dtype)
            for t in (x, gamma, beta):
                t.requires_grad_(requires_grad)
            out.append(GrnSample(x, gamma, beta, lay, f"{case}-C{C}", case))
    return out


def atto_stage_shapes(batch: int = 64):
    """(resolution, channels) of ConvNeXt V2 atto's four stages at 224/32 (56/8 in MMEarth): 56..7 px."""
    return [(56, 40), (28, 80), (14, 160), (7, 320)]


def tiny_stage_shapes(batch: int = 64):
    return [(56, 96), (28, 192), (14, 384), (7, 768)]


def training_batch(batch: int, img: int, tasks, device="cpu", seed: int = 0) -> dict[str, torch.Tensor]:
    """An MP-MAE micro-batch in the shapes and dtypes ``train.data`` yields (``input`` and every task's
    target, some pixel targets no-data), for tests and the end-to-end benchmark; add a ``mask`` to step."""
    from .tasks import CLASS_TASKS, IMAGE_TASKS, PIXEL_TASKS

    g = torch.Generator().manual_seed(seed)
    out = {"input": torch.randn(batch, 12, img, img, generator=g)}
    for name in tasks:
        if name in CLASS_TASKS and name in PIXEL_TASKS:
            out[name] = torch.randint(-1, PIXEL_TASKS[name], (batch, img, img), generator=g)
        elif name in PIXEL_TASKS:
            v = torch.randn(batch, PIXEL_TASKS[name], img, img, generator=g)
            v[:, :, : img // 8] = float("nan")
            out[name] = v
        elif name in CLASS_TASKS:
            out[name] = torch.randint(0, IMAGE_TASKS[name], (batch,), generator=g)
        else:
            out[name] = torch.randn(batch, IMAGE_TASKS[name], generator=g)
    return {k: v.to(device) for k, v in out.items()}
