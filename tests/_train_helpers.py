"""One small trainer configuration for the tests that run the trainer; each test overrides what it is about.

``device="cpu"``: these tests state CPU properties (bit-identical resumes, fp32 gradients, counts of host syncs),
and "auto" would mean CUDA with bf16 on a GPU machine. Tiny crops and decoders keep a step in the tens of ms; the
health check is off unless a test turns it on (its held batch costs a forward)."""

from train.config import TrainConfig

BASE = dict(batch_size=4, steps=6, lr=1e-3, warmup_steps=1, log_every=2, ckpt_every=3, png_every=0, progress=False,
            seed=3, init="standard", crop=16, decoder_dim=16, workers=0, device="cpu", health_every=0)


def train_cfg(stem: str, out, **overrides) -> TrainConfig:
    return TrainConfig(**({"data": stem, "out": str(out)} | BASE | overrides))
