// Global Response Normalization on packed rows grouped by sample: CUDA kernels (twin of
// csrc/cpu/grn.cpp: same argument checks, same order, same (group, part) split of the rows; offset values are
// checked on CPU only, clamped here: see part_rows).
//
// Forward: partial sums of x^2 per (group, part) -> per-group statistics -> y = x * scale + beta.
// Backward: partial sums of g*x and g -> per-group coefficients -> dx = g * scale + x * coef, and a
// fixed-order reduction over groups for dgamma/dbeta. No atomics; no host syncs.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>

#include "../checks.h"
#include "../sparse_index.h"
#include "launch.cuh"

namespace mmearth_kernels {
namespace cuda {
namespace {

constexpr int64_t kRowsPerPart = index::kGrnRowsPerPart;
constexpr int64_t kMaxGridX = (int64_t(1) << 31) - 1;

// Rows of part `s` of group `g`: the group is a sample (offsets) or the whole batch. Offsets are not
// checked on the device (a host sync); instead a group's range is clamped into [0, N] and to
// begin <= end, so corrupt offsets give wrong statistics for the affected groups, never an access
// outside x. The CPU kernel refuses them (offsets must start at 0, end at N and not decrease).
__device__ __forceinline__ void part_rows(const int32_t* offsets, bool batch_stats, int64_t N, int64_t g, int64_t s,
                                          int64_t S, int64_t* lo, int64_t* hi) {
  int64_t begin = batch_stats ? 0 : offsets[g];
  int64_t end = batch_stats ? N : offsets[g + 1];
  begin = begin < 0 ? 0 : (begin > N ? N : begin);
  end = end < begin ? begin : (end > N ? N : end);
  index::split_range(begin, end, s, S, lo, hi);
}

// The (group, part) tasks task = g * S + s, one block each, all on grid x: its limit is 2^31 - 1 blocks, where
// grid y's 65,535 would cap the batch at 65,535 samples.
dim3 task_grid(int64_t G, int64_t S) {
  TORCH_CHECK(G * S <= kMaxGridX, "grn: ", G, " groups x ", S, " parts = ", G * S,
              " blocks exceed the CUDA grid limit (", kMaxGridX, ")");
  return dim3(static_cast<unsigned int>(G * S));
}

// grid task_grid(G, S); each thread owns channels c = threadIdx.x, + blockDim.x, ...
template <typename T, typename A>
__global__ void grn_sums_kernel(const T* __restrict__ a, const T* __restrict__ b, const int32_t* __restrict__ offsets,
                                bool batch_stats, int64_t N, int64_t C, int64_t S, A* __restrict__ s_ab,
                                A* __restrict__ s_a) {
  // b == nullptr: s_ab = sum a^2 (forward). Otherwise s_ab = sum a*b and s_a = sum a (backward).
  const int64_t task = blockIdx.x, g = task / S, s = task - g * S;
  int64_t lo, hi;
  part_rows(offsets, batch_stats, N, g, s, S, &lo, &hi);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    A ab = 0, sa = 0;
    for (int64_t r = lo; r < hi; ++r) {
      const A av = static_cast<A>(a[r * C + c]);
      const A bv = b ? static_cast<A>(b[r * C + c]) : av;
      ab += av * bv;
      sa += av;
    }
    s_ab[task * C + c] = ab;
    if (s_a) s_a[task * C + c] = sa;
  }
}

// One block per group: G = sqrt(sum of parts), D = mean_c G + eps, scale = 1 + gamma * G / D.
template <typename A>
__global__ void grn_stats_kernel(const A* __restrict__ part, const A* __restrict__ gamma, int64_t C, int64_t S,
                                 double eps, A* __restrict__ gnorm, A* __restrict__ scale) {
  __shared__ A shared[kThreads];
  const int64_t g = blockIdx.x;
  A local = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    A s = 0;
    for (int64_t k = 0; k < S; ++k) s += part[(g * S + k) * C + c];
    const A G = sqrt(s);
    gnorm[g * C + c] = G;
    local += G;
  }
  const A D = (C > 0 ? block_sum(local, shared) / A(C) : A(0)) + A(eps);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) scale[g * C + c] = A(1) + gamma[c] * (gnorm[g * C + c] / D);
}

// One block per group: S1 = sum g*x, D, and the per-channel coefficients of the backward.
template <typename A>
__global__ void grn_backward_stats_kernel(const A* __restrict__ s1_part, const A* __restrict__ s0_part,
                                          const A* __restrict__ gnorm, const A* __restrict__ gamma, int64_t C,
                                          int64_t S, double eps, A* __restrict__ s1, A* __restrict__ s0,
                                          A* __restrict__ nx, A* __restrict__ scale, A* __restrict__ coef) {
  __shared__ A shared[kThreads];
  const int64_t g = blockIdx.x;
  const A* Gg = gnorm + g * C;
  A gsum = 0, ag = 0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    A a = 0, z = 0;
    for (int64_t k = 0; k < S; ++k) {
      a += s1_part[(g * S + k) * C + c];
      z += s0_part[(g * S + k) * C + c];
    }
    s1[g * C + c] = a;
    s0[g * C + c] = z;
    gsum += Gg[c];
    ag += gamma[c] * a * Gg[c];
  }
  const A D = (C > 0 ? block_sum(gsum, shared) / A(C) : A(0)) + A(eps);
  const A AG = block_sum(ag, shared);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const A n = Gg[c] / D;
    nx[g * C + c] = n;
    scale[g * C + c] = A(1) + gamma[c] * n;
    const A dLdG = gamma[c] * s1[g * C + c] / D - AG / (A(C) * D * D);
    coef[g * C + c] = Gg[c] > A(0) ? dLdG / Gg[c] : A(0);  // a channel with G == 0 has x == 0: no gradient
  }
}

// dgamma[c] = sum_g S1[g, c] * Nx[g, c], dbeta[c] = sum_g S0[g, c]; groups in order.
template <typename A>
__global__ void grn_param_grad_kernel(const A* __restrict__ s1, const A* __restrict__ s0, const A* __restrict__ nx,
                                      int64_t G, int64_t C, A* __restrict__ dgamma, A* __restrict__ dbeta) {
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < C; c += int64_t(gridDim.x) * blockDim.x) {
    A dg = 0, db = 0;
    for (int64_t g = 0; g < G; ++g) {
      dg += s1[g * C + c] * nx[g * C + c];
      db += s0[g * C + c];
    }
    dgamma[c] = dg;
    dbeta[c] = db;
  }
}

// grid task_grid(G, S): out = a * s[g] + (b ? b * t[g] : t)   (forward: t = beta broadcast; backward: b = x,
// t = coef)
template <typename T, typename A>
__global__ void grn_apply_kernel(const T* __restrict__ a, const T* __restrict__ b, const A* __restrict__ s,
                                 const A* __restrict__ t, bool t_per_group, const int32_t* __restrict__ offsets,
                                 bool batch_stats, int64_t N, int64_t C, int64_t S, T* __restrict__ out) {
  const int64_t task = blockIdx.x, g = task / S, part = task - g * S;
  int64_t lo, hi;
  part_rows(offsets, batch_stats, N, g, part, S, &lo, &hi);
  const A* sg = s + g * C;
  const A* tg = t + (t_per_group ? g * C : 0);
  for (int64_t r = lo; r < hi; ++r) {
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      A v = static_cast<A>(a[r * C + c]) * sg[c];
      v += b ? static_cast<A>(b[r * C + c]) * tg[c] : tg[c];
      out[r * C + c] = static_cast<T>(v);
    }
  }
}

int64_t num_groups(const at::Tensor& offsets, bool batch_stats) { return batch_stats ? 1 : offsets.size(0) - 1; }

}  // namespace

std::tuple<at::Tensor, at::Tensor> grn_cuda(const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta,
                                            const at::Tensor& offsets, double eps, bool batch_stats) {
  check_grn(x, gamma, beta, offsets, eps);
  TORCH_INTERNAL_ASSERT(x.device().is_cuda());
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1), G = num_groups(offsets, batch_stats);
  const int64_t S = index::parts_per_group(N, G, kRowsPerPart);
  const auto acc = acc_type_of(x.scalar_type());
  at::Tensor y = at::empty_like(x);
  at::Tensor gnorm = at::empty({G, C}, x.options().dtype(acc));
  at::Tensor part = at::empty({G * S, C}, x.options().dtype(acc));
  at::Tensor scale = at::empty({G, C}, x.options().dtype(acc));
  const at::Tensor gamma_a = gamma.to(acc).contiguous(), beta_a = beta.to(acc).contiguous();
  if (C == 0) return {y, gnorm};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid = task_grid(G, S);
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, ((C + 31) / 32) * 32));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grn_cuda", [&] {
    using A = acc_t<scalar_t>;
    grn_sums_kernel<scalar_t, A><<<grid, threads, 0, stream>>>(x.data_ptr<scalar_t>(), nullptr,
                                                                offsets.data_ptr<int32_t>(), batch_stats, N, C, S,
                                                                part.data_ptr<A>(), nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    grn_stats_kernel<A><<<static_cast<unsigned int>(G), kThreads, 0, stream>>>(
        part.data_ptr<A>(), gamma_a.data_ptr<A>(), C, S, eps, gnorm.data_ptr<A>(), scale.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    grn_apply_kernel<scalar_t, A><<<grid, threads, 0, stream>>>(
        x.data_ptr<scalar_t>(), nullptr, scale.data_ptr<A>(), beta_a.data_ptr<A>(), false,
        offsets.data_ptr<int32_t>(), batch_stats, N, C, S, y.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, gnorm};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grn_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                                                 const at::Tensor& gamma, const at::Tensor& gnorm,
                                                                 const at::Tensor& offsets, double eps,
                                                                 bool batch_stats, std::array<bool, 3> output_mask) {
  check_grn_backward(grad_out, x, gamma, gnorm, offsets, eps, batch_stats);
  // The statistics feed every gradient; the parameter-gradient kernel and the last pass over all rows (dx)
  // run only when asked for.
  const auto [need_dx, need_dgamma, need_dbeta] = output_mask;
  TORCH_INTERNAL_ASSERT(x.device().is_cuda());
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1), G = num_groups(offsets, batch_stats);
  const int64_t S = index::parts_per_group(N, G, kRowsPerPart);
  const auto acc = acc_type_of(x.scalar_type());
  const auto opts = x.options().dtype(acc);
  at::Tensor dx = need_dx ? at::empty_like(x) : x.new_empty({0});
  at::Tensor s1_part = at::empty({G * S, C}, opts), s0_part = at::empty({G * S, C}, opts);
  at::Tensor s1 = at::empty({G, C}, opts), s0 = at::empty({G, C}, opts), nx = at::empty({G, C}, opts);
  at::Tensor scale = at::empty({G, C}, opts), coef = at::empty({G, C}, opts);
  at::Tensor dgamma = at::empty({C}, opts), dbeta = at::empty({C}, opts);
  const at::Tensor gamma_a = gamma.to(acc).contiguous(), gn = gnorm.contiguous();
  const auto finish = [&]() -> std::tuple<at::Tensor, at::Tensor, at::Tensor> {
    return {dx, need_dgamma ? dgamma.to(gamma.scalar_type()) : gamma.new_empty({0}),
            need_dbeta ? dbeta.to(gamma.scalar_type()) : gamma.new_empty({0})};
  };
  if (C == 0) return finish();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid = task_grid(G, S);
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, ((C + 31) / 32) * 32));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grn_backward_cuda", [&] {
    using A = acc_t<scalar_t>;
    grn_sums_kernel<scalar_t, A><<<grid, threads, 0, stream>>>(
        grad_out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), offsets.data_ptr<int32_t>(), batch_stats, N, C, S,
        s1_part.data_ptr<A>(), s0_part.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    grn_backward_stats_kernel<A><<<static_cast<unsigned int>(G), kThreads, 0, stream>>>(
        s1_part.data_ptr<A>(), s0_part.data_ptr<A>(), gn.data_ptr<A>(), gamma_a.data_ptr<A>(), C, S, eps,
        s1.data_ptr<A>(), s0.data_ptr<A>(), nx.data_ptr<A>(), scale.data_ptr<A>(), coef.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (need_dgamma || need_dbeta) {
      grn_param_grad_kernel<A><<<blocks_for(C), kThreads, 0, stream>>>(s1.data_ptr<A>(), s0.data_ptr<A>(),
                                                                        nx.data_ptr<A>(), G, C, dgamma.data_ptr<A>(),
                                                                        dbeta.data_ptr<A>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (!need_dx) return;
    grn_apply_kernel<scalar_t, A><<<grid, threads, 0, stream>>>(
        grad_out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), scale.data_ptr<A>(), coef.data_ptr<A>(), true,
        offsets.data_ptr<int32_t>(), batch_stats, N, C, S, dx.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return finish();
}

TORCH_LIBRARY_IMPL(mmearth_kernels, CUDA, m) {
  m.impl("grn", &grn_cuda);
  m.impl("grn_backward", &grn_backward_cuda);
}

}  // namespace cuda
}  // namespace mmearth_kernels
