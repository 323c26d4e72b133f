"""``python -m mmearth_kernels.info``: versions, what was built, the ops, and which impls each has here."""

import platform

import torch

from . import _extension
from .models.registry import BACKEND_SPECS
from .ops.registry import IMPL_KINDS, KINDS, OPS


def main() -> None:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    print(f"mmearth_kernels  python {platform.python_version()}, torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}), triton {triton_version}")
    print(f"extension        {'loaded' if _extension.LOADED else 'NOT loaded: ' + str(_extension.LOAD_ERROR)}")
    print(f"CUDA kernels     {'built' if _extension.built_with_cuda() else 'not built'}")
    if _extension.LOADED:
        print(f"CPU kernels      {_extension.cpu_threads_used()} threads per kernel "
              f"(torch.get_num_threads() = {torch.get_num_threads()})")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"GPU              {gpu}")
    print("impls            auto: the first available one in the device's order of preference")
    for k in IMPL_KINDS:
        print(f"{'':<17}{k.name}: {k.description}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for spec in OPS.values():
        print(f"{spec.name:<18} {spec.summary}")
        for dev in devices:
            have = spec.available_impls(dev)
            # what could run on this device but does not (a kernel for the other device type is no news)
            missing = "; ".join(f"no {k}: {spec.why_unavailable(k, dev)}" for k in spec.kinds
                                if k not in have and KINDS[k].dispatch_key in (None, dev.upper()))
            print(f"{'':<18} {dev:<5} impls: {', '.join(have)}" + (f"  ({missing})" if missing else ""))
    print("encoder backends (--backend)")
    for b in BACKEND_SPECS.values():
        missing = "; ".join(f"not on {dev}: {b.why_unavailable(dev)}" for dev in devices if b.why_unavailable(dev))
        print(f"  {b.name:<16} {b.summary}" + (f"  ({missing})" if missing else ""))


if __name__ == "__main__":
    main()
