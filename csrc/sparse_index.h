// Index arithmetic shared by the C++ CPU kernels and the CUDA kernels.
//
// Everything here is pure integer arithmetic on the packed sparse layout, so the CPU tests
// exercise exactly the code the GPU kernels run.
//
// Packed layout (see mmearth_kernels/layout.py):
//   * features x: [N, C], one row per active site, rows sample-major then raster order;
//   * row_pos:  [N] int32, flat position b*H*W + h*W + w of each row;
//   * inv_map:  [B, H, W] int32, the row of each site or -1 when the site is inactive;
//   * offsets:  [B + 1] int32, rows of sample b are [offsets[b], offsets[b+1]).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define MMK_HD __host__ __device__ __forceinline__
#else
#define MMK_HD inline
#endif

namespace mmearth_kernels {
namespace index {

// The numbers every implementation must share for identical, deterministic results. Python mirrors them
// once in mmearth_kernels/_constants.py (for the Triton kernels); tests/test_constants.py reads this file
// and checks that the two agree.
// Largest odd kernel size the kernels accept; bounds the per-row neighbour lists.
constexpr int kMaxKernelSize = 15;
constexpr int kMaxTaps = kMaxKernelSize * kMaxKernelSize;
// Depthwise weight gradient: per-part partials over ~kDwconvRowsPerPart rows, at most kDwconvMaxParts parts,
// summed in part order.
constexpr int64_t kDwconvRowsPerPart = 64;
constexpr int64_t kDwconvMaxParts = 256;
// GRN statistics: parts of ~kGrnRowsPerPart rows per group.
constexpr int64_t kGrnRowsPerPart = 256;

struct Site {
  int64_t b, h, w;
};

// A position outside the layout's B*H*W sites (only a corrupt, hand-made layout has one) decodes to
// b = -1, a site with no neighbours: the kernels then never index inv_map with it. On CPU tensors
// such layouts are refused before the kernels run (checks.h); on CUDA this is the safety net.
MMK_HD Site decode(int64_t pos, int64_t B, int64_t H, int64_t W) {
  const int64_t hw = H * W;
  if (pos < 0 || pos >= B * hw) return Site{-1, 0, 0};
  const int64_t b = pos / hw;
  const int64_t r = pos - b * hw;
  return Site{b, r / W, r - (r / W) * W};
}

// Row of the site (s.h + dh, s.w + dw) of the same sample, or -1 when it lies outside the image
// (zero padding) or is inactive (masked). This is the whole of the submanifold semantics. An entry
// of inv_map that is not a row in [0, N) reads as inactive, so no kernel reads outside x.
MMK_HD int32_t neighbour_row(const int32_t* inv_map, const Site& s, int64_t H, int64_t W, int64_t N, int64_t dh,
                             int64_t dw) {
  if (s.b < 0) return -1;
  const int64_t h = s.h + dh;
  const int64_t w = s.w + dw;
  if (h < 0 || h >= H || w < 0 || w >= W) return -1;
  const int32_t q = inv_map[(s.b * H + h) * W + w];
  return q >= 0 && q < N ? q : -1;
}

// Tap t of a K x K kernel (row-major, as nn.Conv2d) reads the input at offset (dh, dw).
MMK_HD int64_t tap_dh(int64_t t, int64_t K) { return t / K - K / 2; }
MMK_HD int64_t tap_dw(int64_t t, int64_t K) { return t % K - K / 2; }

// Part s of S of the half-open row range [begin, end): contiguous, balanced, and depends only on
// the range and S, never on the number of threads, so reductions over parts are deterministic.
MMK_HD void split_range(int64_t begin, int64_t end, int64_t s, int64_t S, int64_t* lo, int64_t* hi) {
  const int64_t n = end - begin;
  *lo = begin + (n * s) / S;
  *hi = begin + (n * (s + 1)) / S;
}

// Number of parts per group so that a part holds about `rows_per_part` rows when the N rows are
// spread evenly over `groups` groups (FCMAE: every sample keeps the same number of rows).
MMK_HD int64_t parts_per_group(int64_t N, int64_t groups, int64_t rows_per_part) {
  const int64_t per_group = groups > 0 ? (N + groups - 1) / groups : 0;
  const int64_t S = (per_group + rows_per_part - 1) / rows_per_part;
  return S > 0 ? S : 1;
}

// Parts of the depthwise weight gradient for N rows: depends on N only (never on threads or the device).
MMK_HD int64_t dwconv_parts(int64_t N) {
  const int64_t S = parts_per_group(N, 1, kDwconvRowsPerPart);
  return S < kDwconvMaxParts ? S : kDwconvMaxParts;
}

}  // namespace index
}  // namespace mmearth_kernels
