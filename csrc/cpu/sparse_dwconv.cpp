// Sparse (submanifold) masked depthwise conv2d on packed rows: CPU kernels.
//
// Forward is output-stationary: each active row gathers its active neighbours once and
// accumulates all taps for a block of channels in registers. The backward is one fused pass that
// is centred on the *input* row q: it gathers grad_out at the rows p that read q (p = q - o_k),
// which gives grad_x[q] directly (the flipped-kernel gather) and, with x[q] already in registers,
// the weight-gradient products for the same (p, q, k) triples. Weight/bias gradients go to
// per-part fp32 partials that a second pass sums in a fixed order: no atomics, deterministic.
// sparse_dwconv2d_ln is the forward with each row's LayerNorm right after its conv, the row still in L1.
#include <ATen/Parallel.h>
#include <array>
#include <cmath>
#include <utility>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "../checks.h"
#include "../sparse_index.h"
#include "vec.h"

namespace mmearth_kernels {
namespace cpu {
namespace {

using index::kMaxTaps;

template <typename T>
struct DwFwdArgs {
  const T* x;             // [N, C]
  const acc_t<T>* w;      // [K*K, C], taps-major
  const acc_t<T>* bias;   // [C] or nullptr
  const int32_t* row_pos; // [N]
  const int32_t* inv_map; // [B, H, W]
  int64_t B, N, H, W, K, C;
  T* y;                   // [N, C]
};

template <typename T>
struct DwBwdArgs {
  const T* dy;            // [N, C] grad_out
  const T* x;             // [N, C]
  const acc_t<T>* w;      // [K*K, C], taps-major (not flipped: the gather below walks the flipped offsets)
  const int32_t* row_pos;
  const int32_t* inv_map;
  int64_t B, N, H, W, K, C;
  T* dx;                  // [N, C]
  acc_t<T>* dw_part;      // [parts, K*K, C]
  acc_t<T>* db_part;      // [parts, C]
};

// Active neighbours of one row: row index and tap. `sign` = +1 gathers the rows p + o_k that the
// forward reads; -1 gathers the rows q - o_k that read q (the backward's flipped kernel).
MMK_INLINE int gather_neighbours(const int32_t* inv_map, const index::Site& s, int64_t N, int64_t H, int64_t W,
                                 int64_t K, int sign, int32_t* nbr, int32_t* tap) {
  // Branch-free: whether a neighbour is active is data-dependent (random masks), so a branch per
  // tap would mispredict often; instead always write and advance n only for active neighbours.
  int n = 0;
  if (s.b < 0) return 0;  // a position outside the layout (refused on CPU before this runs)
  const int64_t r = K / 2;
  const int32_t* inv_b = inv_map + s.b * H * W;
  for (int64_t i = 0; i < K; ++i) {
    const int64_t h = s.h + sign * (i - r);
    const bool h_in = h >= 0 && h < H;
    const int32_t* inv_row = inv_b + (h_in ? h : 0) * W;
    for (int64_t j = 0; j < K; ++j) {
      const int64_t w = s.w + sign * (j - r);
      const bool in = h_in && w >= 0 && w < W;
      const int32_t q = in ? inv_row[in ? w : 0] : -1;
      nbr[n] = q;
      tap[n] = static_cast<int32_t>(i * K + j);
      n += q >= 0 && q < N;
    }
  }
  return n;
}

// U vectors of channels [c, cend) of one output row, all taps; acc stays in registers.
template <int U, bool TAIL, typename T>
MMK_INLINE void fwd_block(const DwFwdArgs<T>& a, int n, const int32_t* nbr, const int32_t* tap, int64_t c,
                          int64_t cend, T* yr) {
  using V = vec_t<T>;
  constexpr int L = lanes<T>();
  V acc[U];
  for (int u = 0; u < U; ++u) acc[u] = a.bias ? vload_upto<TAIL>(a.bias + c + u * L, cend - c - u * L) : V{};
  for (int i = 0; i < n; ++i) {
    const T* xr = a.x + int64_t(nbr[i]) * a.C + c;
    const acc_t<T>* wr = a.w + int64_t(tap[i]) * a.C + c;
    for (int u = 0; u < U; ++u) {
      const int64_t valid = cend - c - u * L;
      acc[u] += vload_upto<TAIL>(wr + u * L, valid) * vload_upto<TAIL>(xr + u * L, valid);
    }
  }
  for (int u = 0; u < U; ++u) vstore_upto<TAIL>(yr + c + u * L, acc[u], cend - c - u * L);
}

// Calls body.template run<U, TAIL>(c, cend) over the channels: blocks of 4 vectors, and the last
// 1..6 vectors as one block so small channel counts never run a single latency-bound vector.
// TAIL is true only for a block whose last vector is partial (C not a multiple of the width).
template <int U, typename Body>
MMK_INLINE void run_block(Body& body, int64_t c, int64_t cend, bool tail) {
  if (tail) {
    body.template run<U, true>(c, cend);
  } else {
    body.template run<U, false>(c, cend);
  }
}

template <typename T, typename Body>
MMK_INLINE void for_channel_blocks(int64_t C, Body&& body) {
  constexpr int L = lanes<T>();
  int64_t c = 0;
  while (c < C) {
    const int64_t r = (C - c + L - 1) / L;  // vectors left
    const int U = r > 6 ? 4 : static_cast<int>(r);
    const int64_t cend = std::min<int64_t>(C, c + U * L);
    const bool tail = cend - c < U * L;
    switch (U) {
      case 1: run_block<1>(body, c, cend, tail); break;
      case 2: run_block<2>(body, c, cend, tail); break;
      case 3: run_block<3>(body, c, cend, tail); break;
      case 4: run_block<4>(body, c, cend, tail); break;
      case 5: run_block<5>(body, c, cend, tail); break;
      default: run_block<6>(body, c, cend, tail); break;
    }
    c = cend;
  }
}

template <typename T>
struct FwdBody {
  const DwFwdArgs<T>& a;
  int n;
  const int32_t* nbr;
  const int32_t* tap;
  T* yr;
  template <int U, bool TAIL>
  MMK_INLINE void run(int64_t c, int64_t cend) {
    fwd_block<U, TAIL>(a, n, nbr, tap, c, cend, yr);
  }
};

// The conv of rows [begin, end), each row then handed to `after(p)` while it is in L1 (sparse_dwconv2d_ln's
// LayerNorm; nothing for the plain conv).
struct NoEpilogue {
  MMK_INLINE void operator()(int64_t) const {}
};

template <typename T, typename After = NoEpilogue>
MMK_INLINE void fwd_rows_impl(const DwFwdArgs<T>& a, int64_t begin, int64_t end, After after = {}) {
  int32_t nbr[kMaxTaps];
  int32_t tap[kMaxTaps];
  for (int64_t p = begin; p < end; ++p) {
    const index::Site s = index::decode(a.row_pos[p], a.B, a.H, a.W);
    const int n = gather_neighbours(a.inv_map, s, a.N, a.H, a.W, a.K, +1, nbr, tap);
    for_channel_blocks<T>(a.C, FwdBody<T>{a, n, nbr, tap, a.y + p * a.C});
    after(p);
  }
}

// The LayerNorm that follows the conv in a ConvNeXt block (sparse_dwconv2d_ln): per row, over C.
template <typename T>
struct LnArgs {
  const acc_t<T>* weight;  // [C]
  const acc_t<T>* bias;    // [C]
  acc_t<T> eps;
  T* y;                    // [N, C] the normalised output (DwFwdArgs::y holds the conv's output y1)
  acc_t<T>* mean;          // [N]
  acc_t<T>* rstd;          // [N]
};

// What row_sum adds up: the values, or their squared distance from the mean. Functors with always-inline calls,
// not lambdas: a lambda's body is a function of its own, which GCC would compile for the default ISA instead of
// the enclosing target clone's if it did not inline it.
template <typename T>
struct Identity {
  MMK_INLINE vec_t<T> operator()(vec_t<T> v) const { return v; }
};
template <typename T>
struct CentredSquare {
  acc_t<T> mean;
  MMK_INLINE vec_t<T> operator()(vec_t<T> v) const {
    const vec_t<T> d = v - mean;
    return d * d;
  }
};

// Sum of a row's whole vectors, f(v) of each, in four independent accumulators: one accumulator would chain
// every add on the previous one (latency-bound, ~4 cycles per vector) where the row is in L1 anyway.
template <typename T, typename F>
MMK_INLINE acc_t<T> row_sum(const T* r, int64_t CV, F f) {
  using V = vec_t<T>;
  constexpr int L = lanes<T>();
  V s0 = {}, s1 = {}, s2 = {}, s3 = {};
  int64_t c = 0;
  for (; c + 4 * L <= CV; c += 4 * L) {
    s0 += f(vload(r + c));
    s1 += f(vload(r + c + L));
    s2 += f(vload(r + c + 2 * L));
    s3 += f(vload(r + c + 3 * L));
  }
  for (; c < CV; c += L) s0 += f(vload(r + c));
  const V s = (s0 + s1) + (s2 + s3);
  acc_t<T> out = 0;
  for (int i = 0; i < L; ++i) out += s[i];
  return out;
}

// LayerNorm of one row just written to y1r (still in L1): it reads the row's *stored* values, rounded to T,
// as the unfused LayerNorm would. Two passes over the row for the variance (no cancellation), whole vectors
// then a scalar tail (zero-filled tail lanes would enter the centred sum).
template <typename T>
MMK_INLINE void ln_row(const LnArgs<T>& ln, const T* y1r, int64_t C, int64_t p) {
  using A = acc_t<T>;
  constexpr int L = lanes<T>();
  const int64_t CV = C / L * L;
  A sum = row_sum<T>(y1r, CV, Identity<T>{});
  for (int64_t c = CV; c < C; ++c) sum += static_cast<A>(y1r[c]);
  const A mean = sum / static_cast<A>(C);
  A sq = row_sum<T>(y1r, CV, CentredSquare<T>{mean});
  for (int64_t c = CV; c < C; ++c) {
    const A d = static_cast<A>(y1r[c]) - mean;
    sq += d * d;
  }
  const A rstd = A(1) / std::sqrt(sq / static_cast<A>(C) + ln.eps);
  T* yr = ln.y + p * C;
  for (int64_t c = 0; c < CV; c += L) {
    vstore(yr + c, (vload(y1r + c) - mean) * (rstd * vload(ln.weight + c)) + vload(ln.bias + c));
  }
  for (int64_t c = CV; c < C; ++c) {
    yr[c] = static_cast<T>((static_cast<A>(y1r[c]) - mean) * (rstd * ln.weight[c]) + ln.bias[c]);
  }
  ln.mean[p] = mean;
  ln.rstd[p] = rstd;
}

// The conv of a row, then its LayerNorm while the row is in L1: the unfused pair reads y1 back from memory.
// A functor, not a lambda, for the reason given at Identity.
template <typename T>
struct LnEpilogue {
  const DwFwdArgs<T>& a;
  const LnArgs<T>& ln;
  MMK_INLINE void operator()(int64_t p) const { ln_row(ln, a.y + p * a.C, a.C, p); }
};

template <typename T>
MMK_INLINE void fwd_ln_rows_impl(const DwFwdArgs<T>& a, const LnArgs<T>& ln, int64_t begin, int64_t end) {
  fwd_rows_impl(a, begin, end, LnEpilogue<T>{a, ln});
}

// NEED_DX false: only the weight and bias gradients (the input does not require grad).
template <int U, bool TAIL, bool NEED_DX, typename T>
MMK_INLINE void bwd_block(const DwBwdArgs<T>& a, int64_t q, int n, const int32_t* nbr, const int32_t* tap,
                          acc_t<T>* dwp, acc_t<T>* dbp, int64_t c, int64_t cend) {
  using V = vec_t<T>;
  constexpr int L = lanes<T>();
  V xq[U];
  V dx[U];
  for (int u = 0; u < U; ++u) {
    xq[u] = vload_upto<TAIL>(a.x + q * a.C + c + u * L, cend - c - u * L);
    dx[u] = V{};
  }
  for (int i = 0; i < n; ++i) {
    const T* gr = a.dy + int64_t(nbr[i]) * a.C + c;
    const acc_t<T>* wr = a.w + int64_t(tap[i]) * a.C + c;
    acc_t<T>* dwr = dwp + int64_t(tap[i]) * a.C + c;
    for (int u = 0; u < U; ++u) {
      const int64_t valid = cend - c - u * L;
      const V g = vload_upto<TAIL>(gr + u * L, valid);
      if constexpr (NEED_DX) dx[u] += vload_upto<TAIL>(wr + u * L, valid) * g;
      vstore_upto<TAIL>(dwr + u * L, vload_upto<TAIL>(dwr + u * L, valid) + g * xq[u], valid);
    }
  }
  for (int u = 0; u < U; ++u) {
    const int64_t valid = cend - c - u * L;
    if constexpr (NEED_DX) vstore_upto<TAIL>(a.dx + q * a.C + c + u * L, dx[u], valid);
    vstore_upto<TAIL>(dbp + c + u * L, vload_upto<TAIL>(dbp + c + u * L, valid) + vload_upto<TAIL>(a.dy + q * a.C + c + u * L, valid),
               valid);
  }
}

template <typename T, bool NEED_DX>
struct BwdBody {
  const DwBwdArgs<T>& a;
  int64_t q;
  int n;
  const int32_t* nbr;
  const int32_t* tap;
  acc_t<T>* dwp;
  acc_t<T>* dbp;
  template <int U, bool TAIL>
  MMK_INLINE void run(int64_t c, int64_t cend) {
    bwd_block<U, TAIL, NEED_DX>(a, q, n, nbr, tap, dwp, dbp, c, cend);
  }
};

template <bool NEED_DX, typename T>
MMK_INLINE void bwd_rows_impl(const DwBwdArgs<T>& a, int64_t begin, int64_t end, acc_t<T>* dwp, acc_t<T>* dbp) {
  int32_t nbr[kMaxTaps];
  int32_t tap[kMaxTaps];
  std::fill(dwp, dwp + a.K * a.K * a.C, acc_t<T>(0));
  std::fill(dbp, dbp + a.C, acc_t<T>(0));
  for (int64_t q = begin; q < end; ++q) {
    const index::Site s = index::decode(a.row_pos[q], a.B, a.H, a.W);
    const int n = gather_neighbours(a.inv_map, s, a.N, a.H, a.W, a.K, -1, nbr, tap);
    for_channel_blocks<T>(a.C, BwdBody<T, NEED_DX>{a, q, n, nbr, tap, dwp, dbp});
  }
}

// Entry points compiled once per ISA (MMK_CPU_CLONES); one overload per storage type.
#define MMK_DWCONV_ENTRY(T)                                                                                      \
  MMK_CPU_CLONES void fwd_rows(const DwFwdArgs<T>& a, int64_t begin, int64_t end) {                            \
    fwd_rows_impl(a, begin, end);                                                                                \
  }                                                                                                              \
  MMK_CPU_CLONES void fwd_ln_rows(const DwFwdArgs<T>& a, const LnArgs<T>& ln, int64_t begin, int64_t end) {     \
    fwd_ln_rows_impl(a, ln, begin, end);                                                                         \
  }                                                                                                              \
  MMK_CPU_CLONES void bwd_rows(const DwBwdArgs<T>& a, int64_t begin, int64_t end, acc_t<T>* dwp, acc_t<T>* dbp) { \
    bwd_rows_impl<true>(a, begin, end, dwp, dbp);                                                                \
  }                                                                                                              \
  MMK_CPU_CLONES void wgrad_rows(const DwBwdArgs<T>& a, int64_t begin, int64_t end, acc_t<T>* dwp,              \
                                 acc_t<T>* dbp) {                                                                \
    bwd_rows_impl<false>(a, begin, end, dwp, dbp);                                                               \
  }
MMK_DWCONV_ENTRY(float)
MMK_DWCONV_ENTRY(double)
MMK_DWCONV_ENTRY(c10::BFloat16)
MMK_DWCONV_ENTRY(c10::Half)
#undef MMK_DWCONV_ENTRY


// Rows per grain of the forward; small enough to balance two threads on the 7x7 stage.
constexpr int64_t kFwdGrain = 16;

}  // namespace

at::Tensor sparse_dwconv2d_cpu(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                               const at::Tensor& row_pos, const at::Tensor& inv_map) {
  check_sparse_dwconv(x, weight, bias, row_pos, inv_map);
  TORCH_INTERNAL_ASSERT(x.device().is_cpu());
  check_layout_values_cpu(row_pos, inv_map, "sparse_dwconv2d");
  const int64_t N = x.size(0), C = x.size(1), K = weight.size(2);
  const at::Tensor w = taps_major(weight);
  const at::Tensor b = bias.has_value() ? bias->to(w.scalar_type()).contiguous() : at::Tensor();
  at::Tensor y = at::empty_like(x);
  if (N == 0 || C == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sparse_dwconv2d_cpu", [&] {
    using A = acc_t<scalar_t>;
    const DwFwdArgs<scalar_t> a{x.data_ptr<scalar_t>(), w.data_ptr<A>(), b.defined() ? b.data_ptr<A>() : nullptr,
                                row_pos.data_ptr<int32_t>(), inv_map.data_ptr<int32_t>(), inv_map.size(0), N,
                                inv_map.size(1), inv_map.size(2), K, C, y.data_ptr<scalar_t>()};
    at::parallel_for(0, N, kFwdGrain, [&](int64_t begin, int64_t end) { fwd_rows(a, begin, end); });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sparse_dwconv2d_ln_cpu(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, const at::Tensor& ln_weight,
    const at::Tensor& ln_bias, const at::Tensor& row_pos, const at::Tensor& inv_map, double eps) {
  check_sparse_dwconv(x, weight, bias, row_pos, inv_map);
  TORCH_INTERNAL_ASSERT(x.device().is_cpu());
  const int64_t N = x.size(0), C = x.size(1), K = weight.size(2);
  for (const auto& [t, name] : {std::pair{&ln_weight, "ln_weight"}, std::pair{&ln_bias, "ln_bias"}}) {
    check_same(*t, x, "sparse_dwconv2d_ln", name, "x");
    TORCH_CHECK(t->dim() == 1 && t->size(0) == C, "sparse_dwconv2d_ln: ", name, " must have shape [", C, "], got ",
                t->sizes());
  }
  TORCH_CHECK(eps >= 0, "sparse_dwconv2d_ln: eps must be >= 0, got ", eps);
  check_layout_values_cpu(row_pos, inv_map, "sparse_dwconv2d_ln");
  const at::Tensor w = taps_major(weight);
  const auto acc = w.scalar_type();
  const at::Tensor b = bias.has_value() ? bias->to(acc).contiguous() : at::Tensor();
  const at::Tensor lw = ln_weight.to(acc).contiguous(), lb = ln_bias.to(acc).contiguous();
  at::Tensor y1 = at::empty_like(x), y = at::empty_like(x);
  at::Tensor mean = at::empty({N}, x.options().dtype(acc)), rstd = at::empty({N}, x.options().dtype(acc));
  if (N == 0 || C == 0) return {y, y1, mean.fill_(0), rstd.fill_(0)};  // C = 0: no statistics to take
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sparse_dwconv2d_ln_cpu", [&] {
    using A = acc_t<scalar_t>;
    const DwFwdArgs<scalar_t> a{x.data_ptr<scalar_t>(), w.data_ptr<A>(), b.defined() ? b.data_ptr<A>() : nullptr,
                                row_pos.data_ptr<int32_t>(), inv_map.data_ptr<int32_t>(), inv_map.size(0), N,
                                inv_map.size(1), inv_map.size(2), K, C, y1.data_ptr<scalar_t>()};
    const LnArgs<scalar_t> ln{lw.data_ptr<A>(), lb.data_ptr<A>(), static_cast<A>(eps), y.data_ptr<scalar_t>(),
                              mean.data_ptr<A>(), rstd.data_ptr<A>()};
    at::parallel_for(0, N, kFwdGrain, [&](int64_t begin, int64_t end) { fwd_ln_rows(a, ln, begin, end); });
  });
  return {y, y1, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_dwconv2d_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& row_pos,
    const at::Tensor& inv_map, std::array<bool, 3> output_mask) {
  check_sparse_dwconv_backward(grad_out, x, weight, row_pos, inv_map);
  TORCH_INTERNAL_ASSERT(x.device().is_cpu());
  check_layout_values_cpu(row_pos, inv_map, "sparse_dwconv2d_backward");
  const auto [need_dx, need_dw, need_db] = output_mask;
  if (!need_dw && !need_db) {
    // Only the input gradient: the forward gather with the flipped kernel, dx[q] = sum_t w[t] dy[q - o_t]
    // (the fused pass below would also accumulate the weight gradient).
    at::Tensor dx = need_dx ? sparse_dwconv2d_cpu(grad_out, weight.flip({2, 3}).contiguous(), c10::nullopt, row_pos,
                                                  inv_map)
                            : x.new_empty({0});
    return {dx, weight.new_empty({0}), weight.new_empty({0})};
  }
  const int64_t N = x.size(0), C = x.size(1), K = weight.size(2), KK = K * K;
  const at::Tensor w = taps_major(weight);
  const auto acc = w.scalar_type();
  // Parts depend only on N, so the reduction order (and the result) is the same for any thread count.
  const int64_t parts = index::dwconv_parts(N);
  at::Tensor dx = need_dx ? at::empty_like(x) : x.new_empty({0});
  at::Tensor dw_part = at::empty({parts, KK, C}, x.options().dtype(acc));
  at::Tensor db_part = at::empty({parts, C}, x.options().dtype(acc));
  const auto finish = [&](at::Tensor grad_w, at::Tensor grad_b) -> std::tuple<at::Tensor, at::Tensor, at::Tensor> {
    return {dx, need_dw ? grad_w : weight.new_empty({0}), need_db ? grad_b : weight.new_empty({0})};
  };
  if (N == 0 || C == 0) return finish(at::zeros_like(weight), at::zeros({C}, weight.options()));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sparse_dwconv2d_backward_cpu", [&] {
    using A = acc_t<scalar_t>;
    const DwBwdArgs<scalar_t> a{grad_out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), w.data_ptr<A>(),
                                row_pos.data_ptr<int32_t>(), inv_map.data_ptr<int32_t>(), inv_map.size(0), N,
                                inv_map.size(1), inv_map.size(2), K, C, need_dx ? dx.data_ptr<scalar_t>() : nullptr,
                                dw_part.data_ptr<A>(), db_part.data_ptr<A>()};
    at::parallel_for(0, parts, 1, [&](int64_t pbegin, int64_t pend) {
      for (int64_t s = pbegin; s < pend; ++s) {
        int64_t lo, hi;
        index::split_range(0, N, s, parts, &lo, &hi);
        if (need_dx) {
          bwd_rows(a, lo, hi, a.dw_part + s * KK * C, a.db_part + s * C);
        } else {
          wgrad_rows(a, lo, hi, a.dw_part + s * KK * C, a.db_part + s * C);
        }
      }
    });
  });
  // Second stage: sum the partials over parts (a fixed-order reduction in ATen on CPU).
  at::Tensor dw = dw_part.sum(0);  // [KK, C]
  at::Tensor db = db_part.sum(0);  // [C]
  return finish(dw.t().reshape({C, 1, K, K}).to(weight.scalar_type()).contiguous(), db.to(weight.scalar_type()));
}

TORCH_LIBRARY_IMPL(mmearth_kernels, CPU, m) {
  m.impl("sparse_dwconv2d", &sparse_dwconv2d_cpu);
  m.impl("sparse_dwconv2d_backward", &sparse_dwconv2d_backward_cpu);
  m.impl("sparse_dwconv2d_ln", &sparse_dwconv2d_ln_cpu);
}

}  // namespace cpu
}  // namespace mmearth_kernels
