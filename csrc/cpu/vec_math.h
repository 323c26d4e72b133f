// Vectorised exp, erf and the exact (erf) GELU for the CPU kernels, on the vectors of vec.h.
//
// fp32: exp by range reduction (x = k ln2 + r, |r| <= ln2/2, degree-6 polynomial, 2^k from the exponent
// bits; relative error ~1.2e-7) and erf by Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7), so GELU
// and its derivative are within ~2e-7 of torch's, for one exp and one division per element.
// fp64 (tests, gradcheck): std::erf / std::exp per lane.
#pragma once
#include <cmath>
#include <cstdint>

#include "vec.h"

namespace mmearth_kernels {
namespace cpu {

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

MMK_INLINE v8f splat(float a) { return v8f{} + a; }

MMK_INLINE v8f vexp(v8f x) {
  // Below -87 the result is 0, as std::exp gives it (-87.3 is fp32's smallest normal): returning the
  // clamped exp(-87) instead left GELU's derivative at ~1e-37 for very negative inputs, whose products
  // with gradients are denormals, which slowed the next matmul 4x. Above 88: clamped (GELU never gets there).
  const v8f tiny = x < splat(-87.0f) ? splat(0.0f) : splat(1.0f);
  x = x < splat(-87.0f) ? splat(-87.0f) : x;
  x = x > splat(88.0f) ? splat(88.0f) : x;
  const v8f t = x * 1.44269504088896341f + 0.5f;
  v8f k = __builtin_convertvector(__builtin_convertvector(t, v8i), v8f);  // truncation ...
  k = k > t ? k - 1.0f : k;                                               // ... made floor
  const v8f r = (x - k * 0.693359375f) + k * 2.12194440e-4f;              // x - k ln2, ln2 split hi + lo
  v8f p = splat(1.0f / 720);
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const v8i e = (__builtin_convertvector(k, v8i) + 127) << 23;
  return p * reinterpret_cast<v8f>(e) * tiny;
}

// GELU(x) = x Phi(x); GELU'(x) = Phi(x) + x phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2, phi the normal density.
// One exp serves both: erf's A&S form needs exp(-(x / sqrt 2)^2) = exp(-x^2 / 2), phi(x) = that / sqrt(2 pi).
template <typename T>
MMK_INLINE void vgelu_parts(vec_t<T> x, vec_t<T>* gelu, vec_t<T>* grad) {
  if constexpr (std::is_same<acc_t<T>, float>::value) {
    const v8f e = vexp(-0.5f * x * x);
    const v8f a = (x < 0.0f ? -x : x) * 0.70710678118654752f;
    const v8f t = 1.0f / (1.0f + 0.3275911f * a);
    v8f p = splat(1.061405429f);
    p = p * t - 1.453152027f;
    p = p * t + 1.421413741f;
    p = p * t - 0.284496736f;
    p = p * t + 0.254829592f;
    const v8f erf_abs = 1.0f - p * t * e;
    const v8f Phi = 0.5f + 0.5f * (x < 0.0f ? -erf_abs : erf_abs);
    *gelu = x * Phi;
    if (grad) *grad = Phi + x * 0.39894228040143268f * e;
  } else {
    for (int i = 0; i < lanes<T>(); ++i) {
      const double Phi = 0.5 * (1.0 + std::erf(x[i] * 0.70710678118654752));
      (*gelu)[i] = x[i] * Phi;
      if (grad) (*grad)[i] = Phi + x[i] * 0.39894228040143268 * std::exp(-0.5 * x[i] * x[i]);
    }
  }
}

template <typename T>
MMK_INLINE vec_t<T> vgelu(vec_t<T> x) {
  vec_t<T> g;
  vgelu_parts<T>(x, &g, nullptr);
  return g;
}

}  // namespace cpu
}  // namespace mmearth_kernels
