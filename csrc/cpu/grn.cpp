// Global Response Normalization on packed rows grouped by sample: CPU kernels.
//
//   G[g, c]  = sqrt(sum_{rows of group g} x^2)          (group = one sample, or the whole batch)
//   Nx[g, c] = G[g, c] / (mean_c G[g, :] + eps)
//   y        = x * (1 + gamma * Nx[g]) + beta            (= gamma * x * Nx + beta + x)
//
// Forward: one read for the statistics, one read + one write to apply. Backward: one read of
// (grad_out, x) for the statistics, one read + one write to apply. Each group is cut into parts
// that depend only on the row counts; partial sums are reduced in a fixed order (deterministic).
//
// Per-sample blocking: with per-sample statistics and enough samples to keep every thread busy, one
// task owns a whole sample: its statistics pass, its scale, then its apply pass while the sample's
// rows are still in L2 (a sample at atto's 28 px stage is ~400 KB), so the second read costs no
// DRAM traffic. The parts, their sums and the order they are reduced in are the same as in the
// two-pass schedule (which batch statistics and small batches use): both give identical bits.
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "../checks.h"
#include "../sparse_index.h"
#include "vec.h"
#include "vec_math.h"

namespace mmearth_kernels {
namespace cpu {
namespace {

constexpr int64_t kRowsPerPart = index::kGrnRowsPerPart;

// Row ranges of every (group, part) task.
struct Parts {
  std::vector<int64_t> bounds;  // group g = rows [bounds[g], bounds[g+1])
  int64_t S = 1;                // parts per group
  int64_t groups() const { return static_cast<int64_t>(bounds.size()) - 1; }
  int64_t tasks() const { return groups() * S; }
  void rows(int64_t task, int64_t* lo, int64_t* hi) const {
    const int64_t g = task / S;
    index::split_range(bounds[g], bounds[g + 1], task % S, S, lo, hi);
  }
};

Parts make_parts(const at::Tensor& offsets, int64_t N, bool batch_stats) {
  Parts p;
  const at::Tensor off = offsets.to(at::kLong);
  const int64_t* o = off.data_ptr<int64_t>();
  const int64_t B = offsets.size(0) - 1;
  TORCH_CHECK(o[0] == 0 && o[B] == N, "grn: offsets must start at 0 and end at N = ", N, ", got ", o[0], " and ",
              o[B]);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(o[b] <= o[b + 1], "grn: offsets must be non-decreasing, got offsets[", b, "] = ", o[b], " > ",
                o[b + 1]);
  }
  if (batch_stats) {
    p.bounds = {0, N};
  } else {
    p.bounds.assign(o, o + B + 1);
  }
  p.S = index::parts_per_group(N, p.groups(), kRowsPerPart);
  return p;
}

// One task per group only when every thread gets at least two groups (load balance); which schedule
// runs never changes a result (see the top of this file).
bool per_group_tasks(const Parts& p, bool batch_stats) {
  return !batch_stats && p.groups() >= 2 * at::get_num_threads();
}

// Column sums over rows [lo, hi) of x^2 (or of g*x and g). Rows are streamed in order, each row
// once, into accumulators of C values that stay in L1: at stage 1 the tensor exceeds the caches
// and a sequential walk is what the hardware prefetcher handles best. GELU = true: x is GELU's input and
// GELU(x) is used in its place (gelu_grn); the channel tail then goes through a zero-padded vector.
template <bool GELU, typename T>
MMK_INLINE vec_t<T> load_act(const T* p) {
  return GELU ? vgelu<T>(vload(p)) : vload(p);
}

// With GELU, GELU(x) is also written to `stash` (the op's output buffer), so the apply pass reads it
// instead of evaluating GELU a second time: GELU is computed once per element.
template <bool GELU, typename T>
MMK_INLINE void sum_sq_rows(const T* x, int64_t C, int64_t lo, int64_t hi, acc_t<T>* out, T* stash) {
  constexpr int L = lanes<T>();
  const int64_t Cv = C - C % L;  // whole vectors; the tail (odd C) is handled lane by lane
  std::fill(out, out + C, acc_t<T>(0));
  for (int64_t r = lo; r < hi; ++r) {
    const T* xr = x + r * C;
    for (int64_t c = 0; c < Cv; c += L) {
      const vec_t<T> v = load_act<GELU>(xr + c);
      if constexpr (GELU) vstore(stash + r * C + c, v);
      vstore(out + c, vload(out + c) + v * v);
    }
    if constexpr (GELU) {
      if (Cv < C) {
        const vec_t<T> v = vgelu<T>(vload_n(xr + Cv, C - Cv));
        vstore_n(stash + r * C + Cv, v, C - Cv);
        for (int64_t c = Cv; c < C; ++c) out[c] += v[c - Cv] * v[c - Cv];
      }
    } else {
      for (int64_t c = Cv; c < C; ++c) {
        const acc_t<T> v = static_cast<acc_t<T>>(xr[c]);
        out[c] += v * v;
      }
    }
  }
}

template <bool GELU, typename T>
MMK_INLINE void sum_gx_g_rows(const T* g, const T* x, int64_t C, int64_t lo, int64_t hi, acc_t<T>* s1,
                              acc_t<T>* s0) {
  constexpr int L = lanes<T>();
  const int64_t Cv = C - C % L;
  std::fill(s1, s1 + C, acc_t<T>(0));
  std::fill(s0, s0 + C, acc_t<T>(0));
  for (int64_t r = lo; r < hi; ++r) {
    const T* gr = g + r * C;
    const T* xr = x + r * C;
    for (int64_t c = 0; c < Cv; c += L) {
      const vec_t<T> gv = vload(gr + c);
      vstore(s1 + c, vload(s1 + c) + gv * load_act<GELU>(xr + c));
      vstore(s0 + c, vload(s0 + c) + gv);
    }
    if constexpr (GELU) {
      if (Cv < C) {
        const vec_t<T> av = vgelu<T>(vload_n(xr + Cv, C - Cv));
        for (int64_t c = Cv; c < C; ++c) {
          const acc_t<T> gv = static_cast<acc_t<T>>(gr[c]);
          s1[c] += gv * av[c - Cv];
          s0[c] += gv;
        }
      }
    } else {
      for (int64_t c = Cv; c < C; ++c) {
        const acc_t<T> gv = static_cast<acc_t<T>>(gr[c]);
        s1[c] += gv * static_cast<acc_t<T>>(xr[c]);
        s0[c] += gv;
      }
    }
  }
}

// out = a * s[c] + b[c]   (forward: a = x, or the stashed GELU(x) in out itself; b = beta)
template <typename T>
MMK_INLINE void affine_rows(const T* a, const acc_t<T>* s, const acc_t<T>* b, int64_t C, int64_t lo, int64_t hi,
                            T* out) {
  constexpr int L = lanes<T>();
  for (int64_t r = lo; r < hi; ++r) {
    for (int64_t c = 0; c < C; c += L) {
      const int64_t valid = C - c;
      vstore_upto(out + r * C + c, vload_upto(a + r * C + c, valid) * vload_upto(s + c, valid) + vload_upto(b + c, valid),
                 valid);
    }
  }
}

// dx = g * s[c] + x * t[c]; with GELU (x = GELU's input): dx = (g * s[c] + GELU(x) * t[c]) * GELU'(x)
template <bool GELU, typename T>
MMK_INLINE void grad_rows(const T* g, const T* x, const acc_t<T>* s, const acc_t<T>* t, int64_t C, int64_t lo,
                          int64_t hi, T* dx) {
  constexpr int L = lanes<T>();
  for (int64_t r = lo; r < hi; ++r) {
    for (int64_t c = 0; c < C; c += L) {
      const int64_t valid = C - c;
      const vec_t<T> xv = vload_upto(x + r * C + c, valid);
      const vec_t<T> gs = vload_upto(g + r * C + c, valid) * vload_upto(s + c, valid);
      if constexpr (GELU) {
        vec_t<T> a, da;
        vgelu_parts<T>(xv, &a, &da);
        // GELU' of a very negative input is tiny (x phi(x) ~ 1e-37 near x = -13): its products are denormals,
        // which torch's GELU backward never hands on and which slow every later matmul that reads them
        // (measured: the e2e step's mm 4x slower). Flushed to zero here.
        const vec_t<T> v = (gs + a * vload_upto(t + c, valid)) * da;
        const vec_t<T> mag = v < acc_t<T>(0) ? -v : v;
        vstore_upto(dx + r * C + c, mag < std::numeric_limits<acc_t<T>>::min() ? v * acc_t<T>(0) : v, valid);
      } else {
        vstore_upto(dx + r * C + c, gs + xv * vload_upto(t + c, valid), valid);
      }
    }
  }
}

#define MMK_GRN_ENTRY(T)                                                                                           \
  MMK_CPU_CLONES void sum_sq(const T* x, int64_t C, int64_t lo, int64_t hi, acc_t<T>* out, T* stash) {         \
    stash ? sum_sq_rows<true>(x, C, lo, hi, out, stash) : sum_sq_rows<false>(x, C, lo, hi, out, stash);           \
  }                                                                                                                \
  MMK_CPU_CLONES void sum_gx_g(const T* g, const T* x, int64_t C, int64_t lo, int64_t hi, acc_t<T>* s1,           \
                               acc_t<T>* s0, bool gelu) {                                                          \
    gelu ? sum_gx_g_rows<true>(g, x, C, lo, hi, s1, s0) : sum_gx_g_rows<false>(g, x, C, lo, hi, s1, s0);            \
  }                                                                                                                \
  MMK_CPU_CLONES void affine(const T* a, const acc_t<T>* s, const acc_t<T>* b, int64_t C, int64_t lo, int64_t hi, \
                             T* out) {                                                                             \
    affine_rows(a, s, b, C, lo, hi, out);                                                                          \
  }                                                                                                                \
  MMK_CPU_CLONES void grad(const T* g, const T* x, const acc_t<T>* s, const acc_t<T>* t, int64_t C, int64_t lo,    \
                           int64_t hi, T* dx, bool gelu) {                                                         \
    gelu ? grad_rows<true>(g, x, s, t, C, lo, hi, dx) : grad_rows<false>(g, x, s, t, C, lo, hi, dx);               \
  }
MMK_GRN_ENTRY(float)
MMK_GRN_ENTRY(double)
MMK_GRN_ENTRY(c10::BFloat16)
MMK_GRN_ENTRY(c10::Half)
#undef MMK_GRN_ENTRY

}  // namespace

// GRN(x), or GRN(GELU(x)) with gelu (the op gelu_grn: GELU applied on load, its output never stored).
std::tuple<at::Tensor, at::Tensor> grn_forward(const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta,
                                               const at::Tensor& offsets, double eps, bool batch_stats, bool gelu) {
  check_grn(x, gamma, beta, offsets, eps);
  TORCH_INTERNAL_ASSERT(x.device().is_cpu());
  const int64_t N = x.size(0), C = x.size(1);
  const Parts parts = make_parts(offsets, N, batch_stats);
  const int64_t G = parts.groups(), S = parts.S;
  const auto acc = acc_type_of(x.scalar_type());
  at::Tensor y = at::empty_like(x);
  at::Tensor gnorm = at::empty({G, C}, x.options().dtype(acc));
  at::Tensor part = at::empty({parts.tasks(), C}, x.options().dtype(acc));
  at::Tensor scale = at::empty({G, C}, x.options().dtype(acc));
  const at::Tensor gamma_a = gamma.to(acc), beta_a = beta.to(acc).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grn_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    A* pp = part.data_ptr<A>();
    const A* ga = gamma_a.data_ptr<A>();
    A* gn = gnorm.data_ptr<A>();
    A* sc = scale.data_ptr<A>();
    const A* bp = beta_a.data_ptr<A>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    auto sums = [&](int64_t t) {
      int64_t lo, hi;
      parts.rows(t, &lo, &hi);
      sum_sq(xp, C, lo, hi, pp + t * C, gelu ? yp : nullptr);
    };
    auto apply = [&](int64_t t) {
      int64_t lo, hi;
      parts.rows(t, &lo, &hi);
      affine(gelu ? yp : xp, sc + (t / S) * C, bp, C, lo, hi, yp);  // with gelu: in place on the stash
    };
    // Statistics of group g from its parts' sums: tiny ([C]), in a fixed order.
    auto group_scale = [&](int64_t g) {
      A mean = 0;
      for (int64_t c = 0; c < C; ++c) {
        A s = 0;
        for (int64_t k = 0; k < S; ++k) s += pp[(g * S + k) * C + c];
        gn[g * C + c] = std::sqrt(s);
        mean += gn[g * C + c];
      }
      const A denom = (C > 0 ? mean / A(C) : A(0)) + A(eps);
      for (int64_t c = 0; c < C; ++c) sc[g * C + c] = A(1) + ga[c] * (gn[g * C + c] / denom);
    };
    if (per_group_tasks(parts, batch_stats)) {
      at::parallel_for(0, G, 1, [&](int64_t gb, int64_t ge) {
        for (int64_t g = gb; g < ge; ++g) {
          for (int64_t k = 0; k < S; ++k) sums(g * S + k);
          group_scale(g);
          for (int64_t k = 0; k < S; ++k) apply(g * S + k);
        }
      });
      return;
    }
    at::parallel_for(0, parts.tasks(), 1, [&](int64_t tb, int64_t te) {
      for (int64_t t = tb; t < te; ++t) sums(t);
    });
    for (int64_t g = 0; g < G; ++g) group_scale(g);
    at::parallel_for(0, parts.tasks(), 1, [&](int64_t tb, int64_t te) {
      for (int64_t t = tb; t < te; ++t) apply(t);
    });
  });
  return {y, gnorm};
}

// The gradients of grn_forward (with gelu: x is GELU's input and dx its gradient).
std::tuple<at::Tensor, at::Tensor, at::Tensor> grn_backward_impl(const at::Tensor& grad_out, const at::Tensor& x,
                                                                 const at::Tensor& gamma, const at::Tensor& gnorm,
                                                                 const at::Tensor& offsets, double eps,
                                                                 bool batch_stats, std::array<bool, 3> output_mask,
                                                                 bool gelu) {
  check_grn_backward(grad_out, x, gamma, gnorm, offsets, eps, batch_stats);
  TORCH_INTERNAL_ASSERT(x.device().is_cpu());
  // The statistics pass feeds every gradient; the last pass (over all rows) only dx.
  const bool need_dx = output_mask[0];
  const int64_t N = x.size(0), C = x.size(1);
  const Parts parts = make_parts(offsets, N, batch_stats);
  const int64_t G = parts.groups(), S = parts.S;
  const auto acc = acc_type_of(x.scalar_type());
  at::Tensor dx = need_dx ? at::empty_like(x) : x.new_empty({0});
  at::Tensor s1 = at::empty({parts.tasks(), C}, x.options().dtype(acc));
  at::Tensor s0 = at::empty({parts.tasks(), C}, x.options().dtype(acc));
  at::Tensor scale = at::empty({G, C}, x.options().dtype(acc));
  at::Tensor coef = at::empty({G, C}, x.options().dtype(acc));
  // Per-group contributions to dgamma and dbeta, summed over groups in group order afterwards.
  at::Tensor dgamma_g = at::empty({G, C}, x.options().dtype(acc));
  at::Tensor dbeta_g = at::empty({G, C}, x.options().dtype(acc));
  at::Tensor s1_g = at::empty({G, C}, x.options().dtype(acc));
  const at::Tensor gamma_a = gamma.to(acc), gn_c = gnorm.contiguous();
  at::Tensor dgamma = at::zeros({C}, x.options().dtype(acc));
  at::Tensor dbeta = at::zeros({C}, x.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "grn_backward_cpu", [&] {
    using A = acc_t<scalar_t>;
    const scalar_t* gp = grad_out.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    A* s1p = s1.data_ptr<A>();
    A* s0p = s0.data_ptr<A>();
    const A* ga = gamma_a.data_ptr<A>();
    const A* gn = gn_c.data_ptr<A>();
    A* sc = scale.data_ptr<A>();
    A* cf = coef.data_ptr<A>();
    A* dgg = dgamma_g.data_ptr<A>();
    A* dbg = dbeta_g.data_ptr<A>();
    A* S1g = s1_g.data_ptr<A>();
    scalar_t* dxp = need_dx ? dx.data_ptr<scalar_t>() : nullptr;
    auto sums = [&](int64_t t) {
      int64_t lo, hi;
      parts.rows(t, &lo, &hi);
      sum_gx_g(gp, xp, C, lo, hi, s1p + t * C, s0p + t * C, gelu);
    };
    auto apply = [&](int64_t t) {
      int64_t lo, hi;
      parts.rows(t, &lo, &hi);
      grad(gp, xp, sc + (t / S) * C, cf + (t / S) * C, C, lo, hi, dxp, gelu);
    };
    // Group g's coefficients and its dgamma/dbeta contributions from its parts' sums, in a fixed order.
    auto group_coef = [&](int64_t g) {
      const A* Gg = gn + g * C;
      A* S1 = S1g + g * C;
      A mean = 0;
      for (int64_t c = 0; c < C; ++c) mean += Gg[c];
      const A D = (C > 0 ? mean / A(C) : A(0)) + A(eps);
      // A[c] = dL/dNx[c] = gamma_c * sum_rows g*x;   dL/dG[k] = A[k]/D - sum_c A[c] G[c] / (C D^2)
      A AG = 0;
      for (int64_t c = 0; c < C; ++c) {
        A s = 0, z = 0;
        for (int64_t k = 0; k < S; ++k) {
          s += s1p[(g * S + k) * C + c];
          z += s0p[(g * S + k) * C + c];
        }
        S1[c] = s;
        dbg[g * C + c] = z;
        AG += ga[c] * s * Gg[c];
      }
      for (int64_t c = 0; c < C; ++c) {
        const A nx = Gg[c] / D;
        dgg[g * C + c] = S1[c] * nx;
        sc[g * C + c] = A(1) + ga[c] * nx;
        const A dLdG = ga[c] * S1[c] / D - AG / (A(C) * D * D);
        // dG/dx = x / G; a channel with G == 0 has x == 0 on every row, so its gradient is 0.
        cf[g * C + c] = Gg[c] > A(0) ? dLdG / Gg[c] : A(0);
      }
    };
    if (per_group_tasks(parts, batch_stats)) {
      at::parallel_for(0, G, 1, [&](int64_t gb, int64_t ge) {
        for (int64_t g = gb; g < ge; ++g) {
          for (int64_t k = 0; k < S; ++k) sums(g * S + k);
          group_coef(g);
          if (need_dx) {
            for (int64_t k = 0; k < S; ++k) apply(g * S + k);
          }
        }
      });
    } else {
      at::parallel_for(0, parts.tasks(), 1, [&](int64_t tb, int64_t te) {
        for (int64_t t = tb; t < te; ++t) sums(t);
      });
      for (int64_t g = 0; g < G; ++g) group_coef(g);
      if (need_dx) {
        at::parallel_for(0, parts.tasks(), 1, [&](int64_t tb, int64_t te) {
          for (int64_t t = tb; t < te; ++t) apply(t);
        });
      }
    }
    // Sum over groups in group order (0 + g_0 + g_1 + ...), whichever schedule ran.
    A* dg = dgamma.data_ptr<A>();
    A* db = dbeta.data_ptr<A>();
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t c = 0; c < C; ++c) {
        dg[c] += dgg[g * C + c];
        db[c] += dbg[g * C + c];
      }
    }
  });
  return {dx, output_mask[1] ? dgamma.to(gamma.scalar_type()) : gamma.new_empty({0}),
          output_mask[2] ? dbeta.to(gamma.scalar_type()) : gamma.new_empty({0})};
}

std::tuple<at::Tensor, at::Tensor> grn_cpu(const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta,
                                           const at::Tensor& offsets, double eps, bool batch_stats) {
  return grn_forward(x, gamma, beta, offsets, eps, batch_stats, false);
}

std::tuple<at::Tensor, at::Tensor> gelu_grn_cpu(const at::Tensor& h, const at::Tensor& gamma, const at::Tensor& beta,
                                                const at::Tensor& offsets, double eps, bool batch_stats) {
  return grn_forward(h, gamma, beta, offsets, eps, batch_stats, true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grn_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                                const at::Tensor& gamma, const at::Tensor& gnorm,
                                                                const at::Tensor& offsets, double eps,
                                                                bool batch_stats, std::array<bool, 3> output_mask) {
  return grn_backward_impl(grad_out, x, gamma, gnorm, offsets, eps, batch_stats, output_mask, false);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gelu_grn_backward_cpu(const at::Tensor& grad_out, const at::Tensor& h,
                                                                     const at::Tensor& gamma, const at::Tensor& gnorm,
                                                                     const at::Tensor& offsets, double eps,
                                                                     bool batch_stats,
                                                                     std::array<bool, 3> output_mask) {
  return grn_backward_impl(grad_out, h, gamma, gnorm, offsets, eps, batch_stats, output_mask, true);
}

TORCH_LIBRARY_IMPL(mmearth_kernels, CPU, m) {
  m.impl("grn", &grn_cpu);
  m.impl("grn_backward", &grn_backward_cpu);
  m.impl("gelu_grn", &gelu_grn_cpu);
  m.impl("gelu_grn_backward", &gelu_grn_backward_cpu);
}

}  // namespace cpu
}  // namespace mmearth_kernels
