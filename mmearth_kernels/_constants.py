"""The numbers every implementation must share, mirrored once from ``csrc/sparse_index.h`` for the Python
side (the Triton kernels, the public checks). ``tests/test_constants.py`` reads the header and fails if the
two disagree: change both together."""

MAX_KERNEL_SIZE = 15        # kMaxKernelSize: largest odd depthwise kernel
DWCONV_ROWS_PER_PART = 64   # kDwconvRowsPerPart: rows per weight-gradient partial
DWCONV_MAX_PARTS = 256      # kDwconvMaxParts
GRN_ROWS_PER_PART = 256     # kGrnRowsPerPart: rows per GRN statistics part


def dwconv_parts(n: int) -> int:
    """index::dwconv_parts: weight-gradient parts for n rows (a function of n only: deterministic sums)."""
    return min(max(1, -(-n // DWCONV_ROWS_PER_PART)), DWCONV_MAX_PARTS)


def parts_per_group(n: int, groups: int, rows_per_part: int) -> int:
    """index::parts_per_group."""
    per_group = -(-n // groups) if groups > 0 else 0
    return max(1, -(-per_group // rows_per_part))
