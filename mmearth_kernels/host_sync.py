"""Find what makes the host wait for the device, on any machine.

On a GPU the host runs ahead of the device, queueing kernels; an operation whose result the host needs
(``.item()``, a data-dependent output size, a device-to-host copy) stops it until the queue drains. A
training step with such a wait between two logging points cannot be captured as a CUDA graph, and in
eager mode it leaves the GPU idle while Python catches up. :class:`SyncRecorder` is a dispatch mode that
records every operation that *would* block on a CUDA device, with the line of code that issued it. It
works on CPU tensors too (where nothing really blocks), so tests prove a step sync-free without a GPU::

    with SyncRecorder() as rec:
        step(batches)
    assert not rec.syncs, rec.report()

What it cannot see: work inside a custom op's own implementation (the op is recorded as one call; ours
read no tensor values on the host), and C++ code that reads device memory itself. What it ignores on purpose:
``torch.cuda.synchronize`` called by Triton's autotuner (``triton.testing.do_bench`` times each config of a new
shape once, synchronising between runs): a one-off of the first call per shape, not a sync of the step.

Code that syncs on purpose says so: :func:`sync_point` (logging, checkpoints: nothing inside is
recorded) and :func:`host_only` (work on host tensors, e.g. data loading: only operations that touch a
device tensor are recorded). Both are free when no recorder is active.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops whose output size or value the host must read before it can go on.
_ALWAYS = {
    "aten._local_scalar_dense": "reads a tensor value on the host (.item(), float(), int(), bool(), `if tensor`)",
    "aten.nonzero": "data-dependent output size (nonzero; torch.where(cond) with one argument)",
    "aten.masked_select": "data-dependent output size (masked_select)",
    "aten.unique_dim": "data-dependent output size (unique)",
    "aten._unique": "data-dependent output size (unique)",
    "aten._unique2": "data-dependent output size (unique)",
    "aten.unique_consecutive": "data-dependent output size (unique_consecutive)",
    "aten.unique_dim_consecutive": "data-dependent output size (unique_consecutive)",
    "aten.equal": "returns a Python bool (torch.equal)",
    "aten.bincount": "output size depends on the largest value (bincount without a static minlength)",
}
# Python-level calls that wait for the device (patched while a recorder is active).
_PY_CALLS = (("torch.cuda.synchronize", torch.cuda, "synchronize"),
             ("Tensor.tolist", torch.Tensor, "tolist"),
             ("Tensor.numpy", torch.Tensor, "numpy"),
             ("torch.cuda.Event.synchronize", torch.cuda.Event, "synchronize"),
             ("torch.cuda.Stream.synchronize", torch.cuda.Stream, "synchronize"))

_HERE = os.path.abspath(__file__)
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))


def _triton_dir() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return os.path.dirname(os.path.abspath(triton.__file__)) + os.sep


def _called_by_triton() -> bool:
    """Whether the current call comes from inside the triton package (its autotuner benchmarking a config)."""
    root = _triton_dir()
    return root is not None and any(os.path.abspath(f.filename).startswith(root) for f in traceback.extract_stack())
_state = {"sync_point": 0, "host_only": 0}


@contextlib.contextmanager
def _marked(key: str):
    _state[key] += 1
    try:
        yield
    finally:
        _state[key] -= 1


def sync_point(reason: str):
    """A deliberate host synchronisation (reading logged losses, writing a checkpoint): not recorded."""
    return _marked("sync_point")


def host_only(reason: str):
    """Work on host tensors only (data loading, mask drawing): recorded only where a device tensor is involved."""
    return _marked("host_only")


@dataclass(frozen=True)
class Sync:
    op: str
    why: str
    where: str  # file:line (function) of the innermost frame outside torch and this module

    def __str__(self) -> str:
        return f"{self.op} at {self.where}: {self.why}"


def _tensors(args, kwargs):
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (t for t in a if isinstance(t, torch.Tensor))


def _copy_blocks(src: torch.Tensor, dst_device: torch.device, non_blocking: bool) -> str | None:
    if src.device == dst_device:
        return None
    if dst_device.type == "cpu":
        return f"device-to-host copy ({src.device} -> cpu)"
    if src.device.type == "cpu" and not (non_blocking and src.is_pinned()):
        return ("host-to-device copy from " + ("pageable memory" if not src.is_pinned() else "pinned memory without "
                "non_blocking=True") + " (waits for the stream)")
    return None


def blocking_reason(func, args, kwargs) -> str | None:
    """Why this aten call would block the host on a CUDA device, or None."""
    name = func._overloadpacket._qualified_op_name.replace("::", ".") if hasattr(func, "_overloadpacket") else str(func)
    if name in _ALWAYS:
        return _ALWAYS[name]
    if name == "aten.repeat_interleave" and func._overloadname.startswith("Tensor") \
            and kwargs.get("output_size") is None:
        return "data-dependent output size (repeat_interleave with tensor repeats and no output_size)"
    if name in ("aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"):
        idx = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in idx or ()):
            return "boolean-mask indexing (a nonzero inside: data-dependent size)"
    if name == "aten._to_copy":
        dev = kwargs.get("device")
        if dev is not None:
            return _copy_blocks(args[0], torch.device(dev), bool(kwargs.get("non_blocking", False)))
    if name == "aten.copy_":
        non_blocking = bool(args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
        return _copy_blocks(args[1], args[0].device, non_blocking)
    return None


def _caller() -> str:
    """The innermost frame outside torch and this module: the line of user code that caused the op."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = os.path.abspath(frame.filename)
        if path != _HERE and not path.startswith(_TORCH_DIR):
            return f"{os.path.relpath(path)}:{frame.lineno} ({frame.name})"
    return "<unknown>"


class SyncRecorder(TorchDispatchMode):
    """Records every operation that would make the host wait for a CUDA device (see the module docstring).

    ``raise_on_sync=True`` raises at the first one instead (its traceback then points at the culprit).
    """

    def __init__(self, raise_on_sync: bool = False):
        super().__init__()
        self.raise_on_sync = raise_on_sync
        self.syncs: list[Sync] = []
        self._saved = []

    def _record(self, op: str, why: str) -> None:
        s = Sync(op, why, _caller())
        self.syncs.append(s)
        if self.raise_on_sync:
            raise RuntimeError(f"host synchronisation: {s}")

    def _flag(self, tensors) -> bool:
        if _state["sync_point"]:
            return False
        if _state["host_only"]:  # host work is fine unless it touches the device
            return any(t.device.type != "cpu" for t in tensors)
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        why = blocking_reason(func, args, kwargs)
        if why and self._flag(list(_tensors(args, kwargs))):
            self._record(str(func), why)
        return func(*args, **kwargs)

    def _patch(self):
        for label, owner, attr in _PY_CALLS:
            original = getattr(owner, attr)

            def wrapper(*a, _orig=original, _label=label, **k):
                tensors = [x for x in a if isinstance(x, torch.Tensor)]
                if self._flag(tensors) and not (_label == "torch.cuda.synchronize" and _called_by_triton()):
                    self._record(_label, "waits for the device" if "synchronize" in _label
                                 else "copies a tensor to a Python object on the host")
                return _orig(*a, **k)

            self._saved.append((owner, attr, original))
            setattr(owner, attr, wrapper)

    def __enter__(self):
        self._patch()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for owner, attr, original in reversed(self._saved):
                setattr(owner, attr, original)
            self._saved.clear()

    def report(self, limit: int = 10) -> str:
        """One line per distinct (op, place), most frequent first."""
        if not self.syncs:
            return "no host synchronisation"
        counts: dict[Sync, int] = {}
        for s in self.syncs:
            counts[s] = counts.get(s, 0) + 1
        lines = [f"{n} x {s}" for s, n in sorted(counts.items(), key=lambda kv: -kv[1])[:limit]]
        return f"{len(self.syncs)} host synchronisation(s):\n  " + "\n  ".join(lines)
