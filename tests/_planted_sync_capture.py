"""Run by tests/test_step.py in its own process (GPU only): a training step with a planted ``.item()`` must fail
its CUDA-graph capture with a CaptureError naming the sync. Prints the error; exits 0 if it is the expected one."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmearth_kernels.masking import num_kept  # noqa: E402
from mmearth_kernels.models import MPMAE  # noqa: E402
from mmearth_kernels.testing import training_batch  # noqa: E402
from train.step import CaptureError, GraphedTrainStep, TrainStep, make_optimizer  # noqa: E402


def main() -> int:
    torch.manual_seed(0)
    model = MPMAE("atto", img_size=16, patch_size=8, decoder_dim=32, backend="sparse", init="standard").to("cuda")
    step = TrainStep(model, make_optimizer(model, 0.05, capturable=True), num_kept(model.grid ** 2, model.mask_ratio))
    step.set_lr(1e-3)
    graphed = GraphedTrainStep(step, warmup_steps=1)
    mbs = []
    for i in range(2):
        mb = training_batch(3, 16, model.tasks, "cuda", seed=i)
        mb["mask"] = model.random_mask(3, generator=torch.Generator().manual_seed(100 + i))[0].to("cuda")
        mbs.append(mb)
    graphed(mbs[:1])
    real = MPMAE.forward

    def forward_with_item(self, *a, **k):
        out = real(self, *a, **k)
        out["loss"].item()  # the classic per-step sync
        return out

    MPMAE.forward = forward_with_item
    try:
        graphed(mbs[1:])
    except CaptureError as e:
        print(e)
        return 0
    print("no CaptureError was raised")
    return 1


if __name__ == "__main__":
    sys.exit(main())
