"""One MP-MAE optimiser step, shared by the trainer (``train/loop.py``) and the end-to-end benchmark
(``benchmarks/e2e``), so the benchmark times exactly what users run.

:class:`TrainStep` runs ``accum`` micro-batches of forward, loss and backward, then gradient clipping,
fused AdamW and ``zero_grad``, and never waits for the device: the learning rate is a device tensor,
the losses for logging stay on the device (the step returns them as one tensor), and the non-finite
guard is a device flag. Once a step's loss is non-finite, that update and every later one are skipped
(fused AdamW's ``found_inf``), so when the loop reads the flag at its next logging point the weights
are still those from before the bad step, which is what the diagnostic checkpoint should hold.

:class:`GraphedTrainStep` replays the same step from CUDA graphs: a few eager warm-up steps (Triton
autotuning, ``torch.compile``, optimiser state), then one graph for a micro-batch that only accumulates
gradients (``accum > 1``) and one for the last micro-batch with clipping and the optimiser step. Each
call copies the micro-batches into static input buffers and replays; the host issues a handful of
launches per step instead of a thousand or more.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch
import torch.distributed as dist

from mmearth_kernels.host_sync import SyncRecorder

from .phases import phase

PRECISIONS = ("fp32", "bf16")


def param_groups(model: torch.nn.Module, weight_decay: float):
    """No weight decay on biases, norms, GRN and the uncertainty weights (every tensor of dim <= 1, plus
    GRN's [1, 1, 1, C] parameters); the rest decays."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() <= 1 or ".grn." in name or name.endswith("log_vars"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, weight_decay: float = 0.05, betas=(0.9, 0.95),
                   capturable: bool = False) -> torch.optim.AdamW:
    """Fused AdamW (one kernel for all ~180 parameter tensors instead of a dozen foreach launches; on CPU
    3-4x faster than foreach) over :func:`param_groups`. ``capturable=True`` for CUDA graphs. The learning
    rate is set by :class:`TrainStep` (a device tensor)."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=0.0, betas=betas, fused=True, capturable=capturable)


def sync_counts(counts: torch.Tensor):
    """Per-task element counts summed over processes (one small all-reduce per micro-batch, on the device):
    see ``MPMAE.forward``; this is what makes a data-parallel step equal the one-process step."""
    counts = counts.clone()
    dist.all_reduce(counts)
    return counts, dist.get_world_size()


def global_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over processes (identity on one); an all-reduce on the device, nothing read on the host."""
    if not dist.is_initialized():
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def autocast_for(device: torch.device, precision: str):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    # no weight cache: a cached cast made outside a CUDA graph would be replayed stale inside it, and
    # MP-MAE uses each weight once per step, so the cache saves nothing here
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)


class TrainStep:
    """``step(micro_batches)``: one optimiser step over exactly ``accum`` micro-batches; returns a device
    tensor ``[1 + T]``: the step's loss and per-task losses (means over the micro-batches and processes).

    Args:
        model: the :class:`MPMAE` (its parameters are what the optimiser holds).
        optimizer: from :func:`make_optimizer` (fused AdamW; its learning rate becomes ``self.lr``).
        kept: patches kept per sample (static shapes: no host sync in the layouts).
        net: what to call for the forward (``model``, its ``torch.compile``d or DDP wrapper).
        accum: micro-batches per optimiser step.
        clip_grad: gradient-norm clipping (0 = off).
        precision: ``"fp32"`` or ``"bf16"`` (autocast).
        data_parallel: the loss counts and logged losses are all-reduced over processes, and the
            gradient all-reduce happens once per step (``net`` must then be the DDP wrapper).
    Each micro-batch is a dict with ``input``, ``mask`` and every task's target (as ``train.data`` gives them).
    """

    def __init__(self, model, optimizer: torch.optim.Optimizer, kept: int, *, net=None, accum: int = 1,
                 clip_grad: float = 0.0, precision: str = "fp32", data_parallel: bool = False):
        if isinstance(accum, bool) or not isinstance(accum, int) or accum < 1:
            raise ValueError(f"accum must be a positive int, got {accum!r}")
        self.model, self.optimizer, self.kept = model, optimizer, kept
        self.net = model if net is None else net
        self.accum, self.clip_grad, self.data_parallel = accum, float(clip_grad), data_parallel
        self.device = next(model.parameters()).device
        self.autocast = autocast_for(self.device, precision)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        dev = self.device
        self.lr = torch.zeros((), dtype=torch.float32, device=dev)
        for g in optimizer.param_groups:  # after any load_state_dict, which would replace these
            g["lr"] = self.lr
        # 1.0 from the first non-finite step on: fused AdamW then skips the update (and its step count)
        self.bad = torch.zeros((), dtype=torch.float32, device=dev)
        optimizer.found_inf = self.bad
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=dev)
        self.bad_tasks = torch.zeros(len(model.tasks), dtype=torch.bool, device=dev)
        self.steps_done = torch.zeros((), dtype=torch.int64, device=dev)  # the device's copy of the step counter
        self.seen_sum = torch.zeros(1 + len(model.tasks), dtype=torch.float32, device=dev)
        self.static_grads = False  # GraphedTrainStep: gradients zeroed in place, never set to None
        self.before_optimizer: Callable[[], None] | None = None

    def set_step(self, step: int) -> None:
        """The optimiser step about to run (at start and on resume): names the first bad step."""
        self.steps_done.fill_(step)

    def set_lr(self, lr: float) -> None:
        """A kernel launch with the value as its argument: no copy, no sync."""
        self.lr.fill_(lr)

    def micro(self, mb: dict, last: bool) -> torch.Tensor | None:
        """Forward + backward of one micro-batch; on the ``last`` one also the optimiser step, whose logged
        losses it returns."""
        cuda = self.device.type == "cuda"
        with phase("forward", cuda), self.autocast:
            out = self.net(mb["input"], mb, mb["mask"], self.kept, sync_counts if self.data_parallel else None)
        loss = out["loss"]
        self.seen_sum.add_(torch.cat([loss.detach().float()[None], torch.stack(list(out["losses"].values())).detach()]))
        no_sync = self.data_parallel and not last
        with phase("backward", cuda), self.net.no_sync() if no_sync else contextlib.nullcontext():
            (loss / self.accum).backward()  # one gradient all-reduce per step (DDP)
        if not last:
            return None
        with phase("optimiser", cuda):
            return self._optimiser_step()

    def _optimiser_step(self) -> torch.Tensor:
        seen = global_mean(self.seen_sum / self.accum)
        self.seen_sum.zero_()
        finite = torch.isfinite(seen)
        bad_now = ~finite.all()
        first = bad_now & (self.first_bad < 0)
        self.first_bad.copy_(torch.where(first, self.steps_done, self.first_bad))
        self.bad_tasks.copy_(torch.where(first, ~finite[1:], self.bad_tasks))
        self.bad.copy_(torch.maximum(self.bad, bad_now.float()))
        if self.before_optimizer is not None:
            self.before_optimizer()
        if self.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=not self.static_grads)
        self.steps_done.add_(1)
        return seen

    def __call__(self, micro_batches: Sequence[dict]) -> torch.Tensor:
        if len(micro_batches) != self.accum:
            raise ValueError(f"a step takes exactly accum = {self.accum} micro-batches, got {len(micro_batches)}")
        for i, mb in enumerate(micro_batches):
            seen = self.micro(mb, last=i == self.accum - 1)
        return seen

    # -- read on the host, at logging points only ---------------------------------------------
    def nonfinite(self) -> tuple[int, list[str]] | None:
        """``(first bad step, its non-finite tasks)`` or None. Reads the device: call at logging points."""
        first = int(self.first_bad)
        if first < 0:
            return None
        return first, [t for t, b in zip(self.model.tasks, self.bad_tasks.tolist()) if b]


class CaptureError(RuntimeError):
    """CUDA graph capture of the training step failed; the message names the op or sync that broke it."""


class _CudaGraphs:
    """What :class:`GraphedTrainStep` needs from CUDA graphs (a stand-in replays on CPU in the tests)."""

    def __init__(self, device):
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()
        self.side = torch.cuda.Stream(device)

    @contextlib.contextmanager
    def warmup(self):
        """Eager warm-up steps on a side stream, as the CUDA-graph recipe asks (lazy initialisation there)."""
        self.side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.side):
            yield
        torch.cuda.current_stream(self.device).wait_stream(self.side)

    def capture(self, fn):
        graph = torch.cuda.CUDAGraph()
        # thread_local: DataLoader's pin-memory thread may call CUDA (cudaHostAlloc) during the capture
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            out = fn()
        graph.output = out
        return graph


class GraphedTrainStep:
    """:class:`TrainStep` replayed from CUDA graphs (see the module docstring). Same call, same result.

    Needs a CUDA device, a capturable optimiser (``make_optimizer(..., capturable=True)``), static shapes
    (the same batch size and ``kept`` every step) and one process (DDP capture is not supported). If the
    capture fails, :class:`CaptureError` says why: the step is re-run eagerly under a
    :class:`SyncRecorder` to name any host synchronisation in it.
    """

    def __init__(self, step: TrainStep, warmup_steps: int = 3, graphs=None):
        if graphs is None:
            if step.device.type != "cuda":
                raise ValueError(f"CUDA graphs need a CUDA device; the model is on {step.device}")
            graphs = _CudaGraphs(step.device)
        if step.data_parallel:
            raise ValueError("CUDA graphs with several processes (DDP) are not supported; run without --cuda-graphs")
        if not all(g.get("capturable") for g in step.optimizer.param_groups):
            raise ValueError("CUDA graphs need a capturable optimiser: make_optimizer(..., capturable=True)")
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be >= 1 (autotuning and compilation must finish before capture), "
                             f"got {warmup_steps}")
        self.step, self.graphs, self.warmup_steps = step, graphs, warmup_steps
        self.calls = 0
        self.static: dict[str, torch.Tensor] | None = None
        self.g_micro = self.g_last = None
        self.grad_params: list[torch.Tensor] = []

    @property
    def captured(self) -> bool:
        return self.g_last is not None

    def __call__(self, micro_batches: Sequence[dict]) -> torch.Tensor:
        st = self.step
        if not self.captured and self.calls < self.warmup_steps:
            self.calls += 1
            if self.calls == self.warmup_steps:  # the parameters that get gradients keep static ones
                st.before_optimizer = lambda: self.grad_params.extend(p for p in st.params if p.grad is not None)
            try:
                with self.graphs.warmup():
                    return st(micro_batches)
            finally:
                st.before_optimizer = None
        if len(micro_batches) != st.accum:
            raise ValueError(f"a step takes exactly accum = {st.accum} micro-batches, got {len(micro_batches)}")
        if not self.captured:
            self._capture(micro_batches[0])
        with phase("replay", st.device.type == "cuda"):  # NVTX inside a capture is not replayed: mark the replays
            for i, mb in enumerate(micro_batches):
                self._load(mb)
                (self.g_last if i == st.accum - 1 else self.g_micro).replay()
        return self.g_last.output.clone()  # the next replay overwrites the static output

    def _load(self, mb: dict) -> None:
        for k, buf in self.static.items():
            v = mb[k]
            if v.shape != buf.shape or v.dtype != buf.dtype:
                raise ValueError(f"CUDA graphs replay static shapes: micro-batch {k!r} is {tuple(v.shape)} {v.dtype}, "
                                 f"captured {tuple(buf.shape)} {buf.dtype}")
            buf.copy_(v, non_blocking=True)

    def _capture(self, example: dict) -> None:
        st = self.step
        self.static = {k: torch.empty_like(v) for k, v in example.items() if isinstance(v, torch.Tensor)}
        self._load(example)
        for p in self.grad_params:  # accumulate in place from zero: the same sums as set_to_none
            p.grad = torch.zeros_like(p)
        st.static_grads = True
        try:
            if st.accum > 1:
                self.g_micro = self.graphs.capture(lambda: st.micro(self.static, last=False))
            self.g_last = self.graphs.capture(lambda: st.micro(self.static, last=True))
        except Exception as e:
            self.g_micro = self.g_last = None
            raise CaptureError(f"CUDA graph capture of the training step failed: {type(e).__name__}: {e}\n"
                               f"{self._diagnose()}") from e

    def _diagnose(self) -> str:
        """Re-run one micro-batch eagerly under a SyncRecorder (the run is stopping anyway)."""
        try:
            with SyncRecorder() as rec:
                self.step.micro(self.static, last=False)
        except Exception as e:  # the device may be unusable after a failed capture
            return f"(could not re-run the step to look for host syncs: {type(e).__name__}: {e})"
        if rec.syncs:
            return "The step synchronises with the host, which a graph cannot hold: " + rec.report()
        return ("No host synchronisation found in an eager re-run; the op named above cannot be captured "
                "(rerun with CUDA_LAUNCH_BLOCKING=1 to see where it was launched).")
