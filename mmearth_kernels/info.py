"""``python -m mmearth_kernels.info``: versions, what was built, and which impls each op has here."""

import platform

import torch

from . import _extension
from .ops import available_impls

OPS = ("sparse_dwconv2d", "sparse_dwconv2d_ln", "grn", "gelu_grn")


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
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for op in OPS:
        for dev in devices:
            print(f"{op:<16} {dev:<5} impls: {', '.join(available_impls(op, dev))}")


if __name__ == "__main__":
    main()
