"""The shared training step (``train.step``): no host synchronisation between logging points (dense and
sparse steps and the whole trainer loop, under a recorder that is shown to catch a planted ``.item()``),
gradient accumulation over exactly ``accum`` micro-batches across epoch boundaries and resume, the
graphed step's buffer logic on CPU (replay emulated) and, on a GPU, real CUDA-graph capture."""

import copy
import os
import subprocess
import sys

import pytest
import torch

import train.loop as trainer
import train.run as run_mod
import train.step as step_mod
from mmearth_kernels.masking import num_kept
from mmearth_kernels.host_sync import SyncRecorder, host_only, sync_point
from mmearth_kernels.models import MPMAE
from mmearth_kernels.testing import training_batch
from train.batches import epoch_batches
from train.checkpoint import load_checkpoint
from train.data.synthetic import write_dataset
from train.step import GraphedTrainStep, TrainStep, make_optimizer

from _train_helpers import train_cfg

HAS_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU here: real CUDA-graph capture needs one "
                                                    "(benchmarks/gpu_check.sh runs it)")


def _model(backend, device="cpu", **kw):
    torch.manual_seed(0)
    return MPMAE("atto", img_size=16, patch_size=8, decoder_dim=32, backend=backend, init="standard", **kw).to(device)


def _micro_batches(model, n, batch=3, device="cpu", seed=0):
    out = []
    for i in range(n):
        mb = training_batch(batch, model.encoder.img_size, model.tasks, device, seed=seed + i)
        g = torch.Generator().manual_seed(100 + seed + i)
        mb["mask"] = model.random_mask(batch, generator=g)[0].to(device)
        out.append(mb)
    return out


def _stepper(model, accum=1, **kw):
    opt = make_optimizer(model, 0.05, capturable=kw.pop("capturable", False))
    st = TrainStep(model, opt, kept=num_kept(model.grid ** 2, model.mask_ratio), accum=accum, **kw)
    st.set_lr(1e-3)
    return st


# -- no host synchronisation -----------------------------------------------------------------------
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, needs_gpu])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["dense", "dense-plain", "sparse", "sparse-fused"])
def test_a_step_never_waits_for_the_device(backend, device):
    model = _model(backend, device)
    st = _stepper(model, accum=2, clip_grad=1.0)
    mbs = _micro_batches(model, 8, device=device)
    st(mbs[6:])  # one step first: Triton's autotuner synchronises once per new shape (not the step's own syncs)
    with SyncRecorder() as rec:
        for s in range(3):
            st(mbs[2 * s: 2 * s + 2])
    assert not rec.syncs, rec.report()


def test_the_recorder_catches_a_planted_item(monkeypatch):
    model = _model("sparse")
    st = _stepper(model)
    real = MPMAE.forward

    def forward_with_item(self, *a, **k):
        out = real(self, *a, **k)
        out["loss"].item()  # the classic per-step sync
        return out

    monkeypatch.setattr(MPMAE, "forward", forward_with_item)
    with SyncRecorder() as rec:
        st(_micro_batches(model, 1))
    assert [s.op for s in rec.syncs] == ["aten._local_scalar_dense.default"], rec.report()
    assert "test_step.py" in rec.syncs[0].where and "forward_with_item" in rec.syncs[0].where


def test_the_recorder_knows_the_usual_culprits():
    x = torch.randn(5)
    with SyncRecorder() as rec:
        float(x.sum())
        x[x > 0]
        torch.nonzero(x)
        x.tolist()
        torch.repeat_interleave(x, torch.tensor([1, 2, 0, 1, 1]))
        torch.repeat_interleave(x, 2)  # static repeats: no sync
        with sync_point("logging"):
            x.sum().item()
        with host_only("data loading"):
            x.tolist()
    whys = [s.why for s in rec.syncs]
    assert len(whys) == 5, rec.report()
    assert "reads a tensor value" in whys[0] and "boolean-mask" in whys[1] and "nonzero" in whys[2]
    assert "Python object" in whys[3] and "repeat_interleave" in whys[4]


def test_the_recorder_ignores_tritons_autotuning_syncs_only():
    """Triton's autotuner synchronises while it times the configs of a new shape (once per shape, in
    ``triton.testing.do_bench``); the recorder leaves those out, and still records the same call from anywhere else."""
    triton = pytest.importorskip("triton", reason="triton is not installed: nothing of it to ignore")
    inside = os.path.join(os.path.dirname(triton.__file__), "testing_probe.py")  # a frame "in the triton package"
    from_triton = compile("torch.cuda.synchronize()", inside, "exec")
    with SyncRecorder() as rec:
        for code in (from_triton, compile("torch.cuda.synchronize()", __file__, "exec")):
            try:
                exec(code, {"torch": torch})
            except (RuntimeError, AssertionError):  # no CUDA here: the call fails after the recorder saw it
                pass
    assert [s.op for s in rec.syncs] == ["torch.cuda.synchronize"] and "test_step.py" in rec.syncs[0].where, \
        rec.report()


@pytest.fixture(scope="module")
def stem(tmp_path_factory):
    # 20 tiles at batch 4: 5 micro-batches per epoch, so accum = 2 straddles every epoch boundary
    return write_dataset(str(tmp_path_factory.mktemp("data")), tiles=20, size=64, seed=4, quiet=True,
                         splits=(1.0, 0.0, 0.0))


def _cfg(stem, out, **kw):
    # health on (4 images): the sync-free loop test then covers the health check at its logging points too
    return train_cfg(stem, out, **({"accum": 2, "log_every": 3, "decoder_dim": 32, "health_every": 1,
                                    "health_samples": 4} | kw))


@pytest.mark.parametrize("device", DEVICES)
def test_the_trainer_loop_syncs_only_at_logging_points(stem, tmp_path, device):
    with SyncRecorder() as rec:  # set-up, 7 steps, 3 logging/checkpoint points; on a GPU: workers, pinned copies
        trainer.pretrain(_cfg(stem, tmp_path, steps=7, device=device, workers=-1))
    assert not rec.syncs, rec.report()


def test_the_loop_recorder_catches_a_planted_item(stem, tmp_path, monkeypatch):
    real = step_mod.global_mean
    monkeypatch.setattr(step_mod, "global_mean", lambda t: (t.sum().item(), real(t))[1])
    with SyncRecorder() as rec:
        trainer.pretrain(_cfg(stem, tmp_path, steps=2))
    assert len(rec.syncs) == 2 and all("global_mean" in s.where or "<lambda>" in s.where for s in rec.syncs), \
        rec.report()


# -- gradient accumulation ----------------------------------------------------------------------------
class _RecordingStep(TrainStep):
    """Checks every step's gradient against a fresh copy of the model run on exactly its micro-batches."""

    log: list = []

    def __call__(self, micro_batches):
        ref = copy.deepcopy(self.model)
        for mb in micro_batches:
            out = ref(mb["input"], mb, mb["mask"], self.kept)
            (out["loss"] / self.accum).backward()
        want = [p.grad for p in ref.parameters()]
        got = []
        self.before_optimizer = lambda: got.extend(p.grad.clone() for p in self.model.parameters())
        seen = super().__call__(micro_batches)
        self.before_optimizer = None
        for (name, _), g, w in zip(self.model.named_parameters(), got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")
        _RecordingStep.log.append([mb["index"].tolist() for mb in micro_batches])
        return seen


def test_each_step_is_exactly_accum_micro_batches_across_epochs(stem, tmp_path, monkeypatch):
    monkeypatch.setattr(run_mod, "TrainStep", _RecordingStep)
    _RecordingStep.log = []
    trainer.pretrain(_cfg(stem, tmp_path, steps=6))  # 12 micro-batches: 2 epochs and 2 of the third
    steps = _RecordingStep.log
    assert len(steps) == 6 and all(len(s) == 2 for s in steps)
    # the micro-batches, in order, are the epochs' batches with none skipped or repeated
    expected = [b for e in range(3) for b in epoch_batches(20, 4, e, 3, 0, 1)][:12]
    assert [b for s in steps for b in s] == expected
    assert steps[2] == [expected[4], expected[5]]  # the last batch of epoch 0 and the first of epoch 1


def test_resume_mid_epoch_with_accumulation_reproduces_the_run(stem, tmp_path):
    full = trainer.pretrain(_cfg(stem, tmp_path / "a", steps=6))["losses"]
    first = trainer.pretrain(_cfg(stem, tmp_path / "b", steps=6, stop_after=4))["losses"]  # stops at epoch 1, batch 3
    ck = load_checkpoint(str(tmp_path / "b" / "last.pt"))
    assert (ck["step"], ck["epoch"], ck["position"]) == (4, 1, 3)
    rest = trainer.pretrain(_cfg(stem, tmp_path / "b", steps=6, resume="auto"))["losses"]
    assert first + rest == full  # bit-identical on CPU


def test_non_finite_step_and_later_ones_are_not_applied(tmp_path):
    model = _model("sparse")
    st = _stepper(model)
    mbs = _micro_batches(model, 3)
    st(mbs[:1])
    before = copy.deepcopy(model.state_dict())
    bad = dict(mbs[1])
    bad["sentinel1"] = torch.full_like(bad["sentinel1"], 1e30)  # finite target, squared error overflows
    st.set_step(1)
    st([bad])
    st(mbs[2:])
    assert st.nonfinite() == (1, ["sentinel1"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


# -- CUDA graphs -------------------------------------------------------------------------------------
class _EmulatedGraphs:
    """CPU stand-in for CUDA graphs: 'capture' records the function, 'replay' runs it again on the static
    buffers. Checks GraphedTrainStep's own logic (static inputs and gradients, the two graphs, outputs)."""

    def warmup(self):
        import contextlib

        return contextlib.nullcontext()

    def capture(self, fn):
        class Replay:
            output = None

            def replay(self):
                self.output = fn()

        return Replay()


@pytest.mark.parametrize("accum", [1, 3])
def test_graphed_step_logic_equals_the_eager_step(accum):
    mbs = _micro_batches(_model("sparse"), 6 * accum)
    eager_model, graph_model = _model("sparse"), _model("sparse")
    eager = _stepper(eager_model, accum=accum, clip_grad=0.5)
    graphed = GraphedTrainStep(_stepper(graph_model, accum=accum, clip_grad=0.5, capturable=True),
                               warmup_steps=2, graphs=_EmulatedGraphs())
    for s in range(6):
        chunk = mbs[s * accum:(s + 1) * accum]
        a, b = eager(chunk), graphed(chunk)
        assert torch.equal(a, b), f"step {s}: {a} vs {b}"
    assert graphed.captured
    for (k, v), w in zip(eager_model.state_dict().items(), graph_model.state_dict().values()):
        assert torch.equal(v, w), k


def test_graphed_step_refuses_what_it_cannot_capture():
    model = _model("sparse")
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedTrainStep(_stepper(model, capturable=True))
    with pytest.raises(ValueError, match="capturable"):
        GraphedTrainStep(_stepper(model), graphs=_EmulatedGraphs())


def test_cuda_graphs_on_cpu_skip_with_a_message(stem, tmp_path, capsys):
    res = trainer.pretrain(_cfg(stem, tmp_path, steps=2, accum=1, cuda_graphs=True))
    assert res["step"] == 2
    assert "--cuda-graphs skipped: CUDA graphs need a CUDA device" in capsys.readouterr().err


@needs_gpu
@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["dense", "sparse", "sparse-fused"])
@pytest.mark.parametrize("accum", [1, 2])
def test_cuda_graphs_replay_the_eager_step(backend, accum):
    mbs = _micro_batches(_model(backend), 6 * accum, device="cuda")
    eager_model, graph_model = _model(backend, "cuda"), _model(backend, "cuda")
    eager = _stepper(eager_model, accum=accum)
    graphed = GraphedTrainStep(_stepper(graph_model, accum=accum, capturable=True), warmup_steps=2)
    # Not bit-identical: CUDA's gather/index backward and cuDNN's weight gradients accumulate with atomics, so
    # the two runs differ by rounding, and Adam can amplify that on near-zero gradients. A graph that replayed
    # stale inputs or lost an accumulation would miss by orders of magnitude more (each step has new data).
    for s in range(6):
        chunk = mbs[s * accum:(s + 1) * accum]
        torch.testing.assert_close(graphed(chunk), eager(chunk), rtol=1e-4, atol=1e-5, msg=lambda m: f"step {s}: {m}")
    assert graphed.captured
    for (k, v), w in zip(eager_model.state_dict().items(), graph_model.state_dict().values()):
        torch.testing.assert_close(w, v, rtol=1e-3, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


@needs_gpu
@pytest.mark.cuda
def test_a_sync_in_the_step_gives_a_clear_capture_error():
    """In its own process: a failed capture can leave the CUDA context unusable for later captures (under torch
    2.11 the allocator keeps routing to the dead capture's pool), which would fail the next graph test for nothing."""
    proc = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "_planted_sync_capture.py")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "capture of the training step failed" in proc.stdout and "_local_scalar_dense" in proc.stdout


def test_trainer_checkpoint_keeps_a_tensor_learning_rate(stem, tmp_path):
    trainer.pretrain(_cfg(stem, tmp_path, steps=3))
    ck = load_checkpoint(os.path.join(tmp_path, "last.pt"))
    assert all(isinstance(g["lr"], torch.Tensor) for g in ck["optimizer"]["param_groups"])


@needs_gpu
@pytest.mark.cuda
def test_cuda_graph_trainer_resumes_exactly(stem, tmp_path):
    kw = dict(device="cuda", cuda_graphs=True, precision="fp32")
    full = trainer.pretrain(_cfg(stem, tmp_path / "a", steps=8, **kw))["losses"]
    first = trainer.pretrain(_cfg(stem, tmp_path / "b", steps=8, stop_after=5, **kw))["losses"]
    rest = trainer.pretrain(_cfg(stem, tmp_path / "b", steps=8, resume="auto", **kw))["losses"]
    assert len(first) == 5 and len(rest) == 3
    torch.testing.assert_close(torch.tensor(first + rest), torch.tensor(full), rtol=1e-4, atol=1e-5)  # atomics
