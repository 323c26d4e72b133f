// Sparse (submanifold) masked depthwise conv2d on packed rows: CUDA kernels (twin of
// csrc/cpu/sparse_dwconv.cpp: same checks, same order).
//
// Output-stationary: one thread per (active row, VEC channels) computes all taps with 16-byte loads
// along channels (VEC = 16 / sizeof(T) when C and the pointers allow it, else 1); inactive
// neighbours read as zero; no atomics. The input gradient is the same gather with the flipped
// kernel. The weight gradient is per-part partials [parts, K*K, C]: a block per (part, 32 channels), its
// warps splitting the part's rows, each thread with its K*K accumulators in registers (K = 3, 5, 7
// compiled; other odd K take a generic kernel), the warps' sums added in a fixed order in shared
// memory, then a fixed-order reduction over parts. Corrupt layouts (positions outside B*H*W, inv_map entries that are not
// rows) read as inactive sites: never an access outside the tensors (sparse_index.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>

#include "../checks.h"
#include "../sparse_index.h"
#include "launch.cuh"

namespace mmearth_kernels {
namespace cuda {
namespace {

// VEC values of T moved as one 16-byte (or smaller) access.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, typename A, int VEC>
__global__ void dwconv_gather_kernel(const T* __restrict__ x, const A* __restrict__ w, const A* __restrict__ bias,
                                     const int32_t* __restrict__ row_pos, const int32_t* __restrict__ inv_map,
                                     int64_t B, int64_t N, int64_t H, int64_t W, int64_t K, int64_t C,
                                     T* __restrict__ y) {
  const int64_t CV = C / VEC;  // the host guarantees C % VEC == 0
  const int64_t total = N * CV;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = i / CV, c0 = (i - p * CV) * VEC;
    const index::Site s = index::decode(row_pos[p], B, H, W);
    A acc[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) acc[j] = bias ? bias[c0 + j] : A(0);
    for (int64_t t = 0; t < K * K; ++t) {
      const int32_t q = index::neighbour_row(inv_map, s, H, W, N, index::tap_dh(t, K), index::tap_dw(t, K));
      if (q < 0) continue;
      const Pack<T, VEC> xv = *reinterpret_cast<const Pack<T, VEC>*>(x + int64_t(q) * C + c0);
      const A* wt = w + t * C + c0;
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] += wt[j] * static_cast<A>(xv.v[j]);
    }
    Pack<T, VEC> out;
#pragma unroll
    for (int j = 0; j < VEC; ++j) out.v[j] = static_cast<T>(acc[j]);
    *reinterpret_cast<Pack<T, VEC>*>(y + p * C + c0) = out;
  }
}

// Channels per thread for 16-byte accesses, or 1 when C or a pointer does not allow it.
template <typename T>
int vec_width(int64_t C, std::initializer_list<const void*> ptrs) {
  constexpr int V = static_cast<int>(16 / sizeof(T));
  if (C % V != 0) return 1;
  for (const void* ptr : ptrs) {
    if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return 1;
  }
  return V;
}

template <typename T, typename A>
void launch_gather(const T* x, const A* w, const A* bias, const int32_t* row_pos, const int32_t* inv_map, int64_t B,
                   int64_t N, int64_t H, int64_t W, int64_t K, int64_t C, T* y, cudaStream_t stream) {
  constexpr int V = static_cast<int>(16 / sizeof(T));
  if (vec_width<T>(C, {x, y}) == V) {
    dwconv_gather_kernel<T, A, V><<<blocks_for(N * (C / V)), kThreads, 0, stream>>>(x, w, bias, row_pos, inv_map, B,
                                                                                   N, H, W, K, C, y);
  } else {
    dwconv_gather_kernel<T, A, 1><<<blocks_for(N * C), kThreads, 0, stream>>>(x, w, bias, row_pos, inv_map, B, N, H,
                                                                             W, K, C, y);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Weight/bias-gradient partials dw_part[part, t, c] = sum_p dy[p, c] * x[p + o_t, c] and db_part[part, c] =
// sum_p dy[p, c] over the rows p of one part. A block owns one part and kWarpSize channels, walked in channel
// blocks cb = blockIdx.y, + gridDim.y, ...: lane l owns channel cb * kWarpSize + l (loads coalesced across the
// warp) and warp w the rows lo + w, lo + w + kWgradWarps, ... of the part (neighbouring rows in flight together,
// so their overlapping windows share L1). Every thread sums its rows in row order; the warps' sums of each (tap,
// channel) are then added in warp order through shared memory (reduce_taps). Rows per thread, the summation order
// and the parts (index::dwconv_parts) depend only on N and kThreads: deterministic, no atomics. At C = 40 a block
// of 256 threads keeps 8 x 32 lanes busy where one thread per channel kept 40.
constexpr int kWarpSize = 32;
constexpr int kWgradWarps = kThreads / kWarpSize;
static_assert(kThreads % kWarpSize == 0, "a block is whole warps");
// Tap index K*K stands for the bias (the sum of dy) in reduce_taps.

// One round of the block reduction: `vals[j]` is this thread's sum for tap t0 + j of its channel. Afterwards thread
// (warp w, lane l) adds the kWgradWarps warps' values of tap t0 + w, channel c (its own lane's), in warp order and
// writes it. Every thread of the block must call it (it has barriers), with the same t0.
template <typename A>
__device__ __forceinline__ void reduce_taps(const A (&vals)[kWgradWarps], int64_t t0, int64_t KK, int64_t part,
                                            int64_t c, int64_t C, A (*shared)[kWgradWarps][kWarpSize],
                                            A* __restrict__ dw_part, A* __restrict__ db_part) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
#pragma unroll
  for (int j = 0; j < kWgradWarps; ++j) shared[warp][j][lane] = vals[j];
  __syncthreads();
  A sum = 0;
#pragma unroll
  for (int w = 0; w < kWgradWarps; ++w) sum += shared[w][warp][lane];
  const int64_t t = t0 + warp;
  if (c < C) {
    if (t < KK) {
      dw_part[(part * KK + t) * C + c] = sum;
    } else if (t == KK) {
      db_part[part * C + c] = sum;
    }
  }
  __syncthreads();  // the next round overwrites `shared`
}

// Blocks per SM the weight-gradient kernels ask ptxas to fit (__launch_bounds__'s second argument): 2 with fp32
// sums (at most 128 registers: K = 7 takes ~126, 16 warps per SM), 1 with fp64 ones (K = 7 needs ~190). Without it
// ptxas spilled 16-28 bytes on sm_80 chasing a third block; with 1 everywhere it took 168 registers for fp32 K = 7,
// halving the warps per SM (benchmarks/kernel_resources, sm_90a and sm_80).
template <typename A>
constexpr int kWgradMinBlocks = sizeof(A) == 8 ? 1 : 2;

// K known at compile time (3, 5, 7): the K*K sums of a thread stay in registers (compile-time indices only).
template <typename T, typename A, int K>
__global__ void __launch_bounds__(kThreads, kWgradMinBlocks<A>)
    dwconv_wgrad_partial_kernel_k(const T* __restrict__ dy, const T* __restrict__ x,
                                  const int32_t* __restrict__ row_pos, const int32_t* __restrict__ inv_map, int64_t B,
                                  int64_t N, int64_t H, int64_t W, int64_t C, int64_t parts, A* __restrict__ dw_part,
                                  A* __restrict__ db_part) {
  constexpr int KK = K * K;
  constexpr int kRounds = (KK + 1 + kWgradWarps - 1) / kWgradWarps;  // the taps and the bias
  __shared__ A shared[kWgradWarps][kWgradWarps][kWarpSize];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t part = blockIdx.x;
  int64_t lo, hi;
  index::split_range(0, N, part, parts, &lo, &hi);
  const int64_t channel_blocks = (C + kWarpSize - 1) / kWarpSize;
  for (int64_t cb = blockIdx.y; cb < channel_blocks; cb += gridDim.y) {  // the same cb in every thread: barriers ok
    const int64_t c = cb * kWarpSize + lane;
    A acc[kRounds * kWgradWarps];  // taps 0..KK-1, the bias at KK, zero padding to whole rounds
#pragma unroll
    for (int t = 0; t < kRounds * kWgradWarps; ++t) acc[t] = A(0);
    if (c < C) {
      for (int64_t p = lo + warp; p < hi; p += kWgradWarps) {
        const index::Site s = index::decode(row_pos[p], B, H, W);
        const A g = static_cast<A>(dy[p * C + c]);
        acc[KK] += g;
#pragma unroll
        for (int t = 0; t < KK; ++t) {
          const int32_t q = index::neighbour_row(inv_map, s, H, W, N, index::tap_dh(t, K), index::tap_dw(t, K));
          if (q >= 0) acc[t] += g * static_cast<A>(x[int64_t(q) * C + c]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRounds; ++r) {
      A vals[kWgradWarps];
#pragma unroll
      for (int j = 0; j < kWgradWarps; ++j) vals[j] = acc[r * kWgradWarps + j];
      reduce_taps(vals, r * kWgradWarps, KK, part, c, C, shared, dw_part, db_part);
    }
  }
}

// Any odd K (1, 9, ..., 15): the same blocks and reduction, kWgradWarps taps per pass over the part's rows.
template <typename T, typename A>
__global__ void __launch_bounds__(kThreads, kWgradMinBlocks<A>)
    dwconv_wgrad_partial_kernel(const T* __restrict__ dy, const T* __restrict__ x, const int32_t* __restrict__ row_pos,
                                const int32_t* __restrict__ inv_map, int64_t B, int64_t N, int64_t H, int64_t W,
                                int64_t K, int64_t C, int64_t parts, A* __restrict__ dw_part,
                                A* __restrict__ db_part) {
  __shared__ A shared[kWgradWarps][kWgradWarps][kWarpSize];
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t part = blockIdx.x, KK = K * K;
  int64_t lo, hi;
  index::split_range(0, N, part, parts, &lo, &hi);
  const int64_t channel_blocks = (C + kWarpSize - 1) / kWarpSize;
  for (int64_t cb = blockIdx.y; cb < channel_blocks; cb += gridDim.y) {
    const int64_t c = cb * kWarpSize + lane;
    for (int64_t t0 = 0; t0 <= KK; t0 += kWgradWarps) {  // taps t0 .. t0 + kWgradWarps - 1 (KK: the bias)
      A acc[kWgradWarps];
#pragma unroll
      for (int j = 0; j < kWgradWarps; ++j) acc[j] = A(0);
      if (c < C) {
        for (int64_t p = lo + warp; p < hi; p += kWgradWarps) {
          const index::Site s = index::decode(row_pos[p], B, H, W);
          const A g = static_cast<A>(dy[p * C + c]);
#pragma unroll
          for (int j = 0; j < kWgradWarps; ++j) {
            const int64_t t = t0 + j;
            if (t < KK) {
              const int32_t q = index::neighbour_row(inv_map, s, H, W, N, index::tap_dh(t, K), index::tap_dw(t, K));
              if (q >= 0) acc[j] += g * static_cast<A>(x[int64_t(q) * C + c]);
            } else if (t == KK) {
              acc[j] += g;
            }
          }
        }
      }
      reduce_taps(acc, t0, KK, part, c, C, shared, dw_part, db_part);
    }
  }
}

// out[j] = sum over parts of part[s, j], in part order (deterministic).
template <typename A>
__global__ void sum_parts_kernel(const A* __restrict__ part, int64_t parts, int64_t n, A* __restrict__ out) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n; j += int64_t(gridDim.x) * blockDim.x) {
    A s = 0;
    for (int64_t k = 0; k < parts; ++k) s += part[k * n + j];
    out[j] = s;
  }
}


}  // namespace

at::Tensor sparse_dwconv2d_cuda(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                const at::Tensor& row_pos, const at::Tensor& inv_map) {
  check_sparse_dwconv(x, weight, bias, row_pos, inv_map);
  TORCH_INTERNAL_ASSERT(x.device().is_cuda());
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1), K = weight.size(2);
  const at::Tensor w = taps_major(weight);
  const at::Tensor b = bias.has_value() ? bias->to(w.scalar_type()).contiguous() : at::Tensor();
  at::Tensor y = at::empty_like(x);
  if (N == 0 || C == 0) return y;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sparse_dwconv2d_cuda", [&] {
    using A = acc_t<scalar_t>;
    launch_gather<scalar_t, A>(x.data_ptr<scalar_t>(), w.data_ptr<A>(), b.defined() ? b.data_ptr<A>() : nullptr,
                               row_pos.data_ptr<int32_t>(), inv_map.data_ptr<int32_t>(), inv_map.size(0), N,
                               inv_map.size(1), inv_map.size(2), K, C, y.data_ptr<scalar_t>(), stream);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_dwconv2d_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& row_pos,
    const at::Tensor& inv_map, std::array<bool, 3> output_mask) {
  check_sparse_dwconv_backward(grad_out, x, weight, row_pos, inv_map);
  TORCH_INTERNAL_ASSERT(x.device().is_cuda());
  const c10::cuda::CUDAGuard guard(x.device());
  // dx (a gather) and dw/db (partials + reductions) are separate kernels: each runs only when asked for.
  const auto [need_dx, need_dw, need_db] = output_mask;
  const bool need_params = need_dw || need_db;
  const int64_t N = x.size(0), C = x.size(1), K = weight.size(2), KK = K * K;
  const at::Tensor w = taps_major(weight);
  const auto acc = w.scalar_type();
  const int64_t parts = index::dwconv_parts(N);
  at::Tensor dx = need_dx ? at::empty_like(x) : x.new_empty({0});
  const auto finish = [&](at::Tensor grad_w, at::Tensor grad_b) -> std::tuple<at::Tensor, at::Tensor, at::Tensor> {
    return {dx, need_dw ? grad_w : weight.new_empty({0}), need_db ? grad_b : weight.new_empty({0})};
  };
  if (N == 0 || C == 0) return finish(at::zeros_like(weight), at::zeros({C}, weight.options()));
  // Flipped taps: dx[q] = sum_t w[t] dy[q - o_t] = sum_t w[KK-1-t] dy[q + o_t].
  const at::Tensor w_flip = w.flip({0}).contiguous();
  const int64_t P = need_params ? parts : 0;  // no partial buffers when only dx is asked for
  at::Tensor dw_part = at::empty({P, KK, C}, x.options().dtype(acc));
  at::Tensor db_part = at::empty({P, C}, x.options().dtype(acc));
  at::Tensor dw = at::empty({need_params ? KK : 0, C}, x.options().dtype(acc));
  at::Tensor db = at::empty({need_params ? C : 0}, x.options().dtype(acc));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sparse_dwconv2d_backward_cuda", [&] {
    using A = acc_t<scalar_t>;
    const int64_t B = inv_map.size(0), H = inv_map.size(1), W = inv_map.size(2);
    if (need_dx) {
      launch_gather<scalar_t, A>(grad_out.data_ptr<scalar_t>(), w_flip.data_ptr<A>(), nullptr,
                                 row_pos.data_ptr<int32_t>(), inv_map.data_ptr<int32_t>(), B, N, H, W, K, C,
                                 dx.data_ptr<scalar_t>(), stream);
    }
    if (!need_params) return;
    // (part, channel block of kWarpSize); channel blocks past the grid-y limit are walked by the kernels' loop
    const int64_t channel_blocks = (C + kWarpSize - 1) / kWarpSize;
    const dim3 grid(static_cast<unsigned int>(parts), static_cast<unsigned int>(std::min<int64_t>(channel_blocks,
                                                                                                  65535)));
    const scalar_t* gp = grad_out.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const int32_t* rp = row_pos.data_ptr<int32_t>();
    const int32_t* ip = inv_map.data_ptr<int32_t>();
    A* dwp = dw_part.data_ptr<A>();
    A* dbp = db_part.data_ptr<A>();
    switch (K) {
      case 3:
        dwconv_wgrad_partial_kernel_k<scalar_t, A, 3><<<grid, kThreads, 0, stream>>>(gp, xp, rp, ip, B, N, H, W,
                                                                                      C, parts, dwp, dbp);
        break;
      case 5:
        dwconv_wgrad_partial_kernel_k<scalar_t, A, 5><<<grid, kThreads, 0, stream>>>(gp, xp, rp, ip, B, N, H, W,
                                                                                      C, parts, dwp, dbp);
        break;
      case 7:
        dwconv_wgrad_partial_kernel_k<scalar_t, A, 7><<<grid, kThreads, 0, stream>>>(gp, xp, rp, ip, B, N, H, W,
                                                                                      C, parts, dwp, dbp);
        break;
      default:
        dwconv_wgrad_partial_kernel<scalar_t, A><<<grid, kThreads, 0, stream>>>(gp, xp, rp, ip, B, N, H, W, K, C,
                                                                                parts, dwp, dbp);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    sum_parts_kernel<A><<<blocks_for(KK * C), kThreads, 0, stream>>>(dw_part.data_ptr<A>(), parts, KK * C,
                                                                     dw.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    sum_parts_kernel<A><<<blocks_for(C), kThreads, 0, stream>>>(db_part.data_ptr<A>(), parts, C, db.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  if (!need_params) return finish({}, {});
  return finish(dw.t().reshape({C, 1, K, K}).to(weight.scalar_type()).contiguous(), db.to(weight.scalar_type()));
}

TORCH_LIBRARY_IMPL(mmearth_kernels, CUDA, m) {
  m.impl("sparse_dwconv2d", &sparse_dwconv2d_cuda);
  m.impl("sparse_dwconv2d_backward", &sparse_dwconv2d_backward_cuda);
}

}  // namespace cuda
}  // namespace mmearth_kernels
