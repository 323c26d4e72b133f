"""The numbers that decide identical, deterministic results are the same in C++ (csrc/sparse_index.h, used by
the CPU and CUDA kernels) and Python (mmearth_kernels/_constants.py, used by the Triton kernels)."""

import os
import re

import pytest

from mmearth_kernels import _constants as K

HEADER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "sparse_index.h")
PAIRS = {"kMaxKernelSize": "MAX_KERNEL_SIZE", "kDwconvRowsPerPart": "DWCONV_ROWS_PER_PART",
         "kDwconvMaxParts": "DWCONV_MAX_PARTS", "kGrnRowsPerPart": "GRN_ROWS_PER_PART"}


def _header_constants():
    text = open(HEADER).read()
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"constexpr\s+\w+\s+(k\w+)\s*=\s*(\d+)\s*;", text)}


@pytest.mark.parametrize("cpp, py", sorted(PAIRS.items()))
def test_python_mirrors_the_header(cpp, py):
    consts = _header_constants()
    assert cpp in consts, f"{cpp} is no longer a literal constexpr in {HEADER}"
    assert consts[cpp] == getattr(K, py), f"{cpp} = {consts[cpp]} in C++ but {py} = {getattr(K, py)} in Python"


def test_part_rules_match_the_header_formula():
    # the C++ rule, written out: ceil(N / rows) clamped to [1, max]
    for n in (0, 1, 63, 64, 65, 1000, 16384, 10**6):
        assert K.dwconv_parts(n) == min(max(1, (n + 63) // 64), 256)
    assert K.parts_per_group(1000, 4, 256) == 1 and K.parts_per_group(2049, 1, 256) == 9
