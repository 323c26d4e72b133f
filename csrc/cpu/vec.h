// Portable SIMD for the CPU kernels, built on GCC/Clang vector extensions.
//
// A vector is 32 bytes of the accumulation type (8 floats or 4 doubles): ConvNeXt widths are
// multiples of 8, so rows split into whole vectors, and on Zen 4 a 512-bit op is two 256-bit ones
// anyway; kernels keep several vectors in flight for throughput. The compiler lowers it
// to whatever the enclosing function is compiled for: the entry points are compiled several times
// (MMK_CPU_CLONES) and the best clone is picked at load time, so one wheel runs on any x86-64 CPU
// and still uses AVX-512 where present. Storage types (bf16/fp16) are widened to fp32 on load.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
// ISA levels rather than single features: "avx512f" alone would not enable FMA on 256-bit vectors.
#define MMK_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MMK_CPU_CLONES
#endif

#define MMK_INLINE inline __attribute__((always_inline))

namespace mmearth_kernels {
namespace cpu {

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccOf<T>::type;

template <typename A>
struct VecOf {
  typedef A type __attribute__((vector_size(32)));
  // The same vector at any address: an unaligned, aliasing-safe load/store (not memcpy, which
  // GCC leaves as a library call inside target_clones functions).
  typedef A unaligned __attribute__((vector_size(32), aligned(1), may_alias));
};
template <typename T>
using vec_t = typename VecOf<acc_t<T>>::type;
template <typename T>
constexpr int lanes() {
  return 32 / sizeof(acc_t<T>);
}

// Full-vector load/store of storage type T, widened to / narrowed from the accumulation type.
template <typename T>
MMK_INLINE vec_t<T> vload(const T* p) {
  vec_t<T> v;
  if constexpr (std::is_same<T, acc_t<T>>::value) {
    v = *reinterpret_cast<const typename VecOf<T>::unaligned*>(p);
  } else if constexpr (std::is_same<T, c10::BFloat16>::value) {
    // bf16 is the top half of an fp32: widen the bits and shift.
    typedef uint16_t u16v __attribute__((vector_size(16), aligned(1), may_alias));
    typedef uint16_t u16a __attribute__((vector_size(16)));
    typedef uint32_t u32v __attribute__((vector_size(32)));
    const u16a h = *reinterpret_cast<const u16v*>(p);
    v = reinterpret_cast<vec_t<T>>(__builtin_convertvector(h, u32v) << 16);
  } else {
    for (int i = 0; i < lanes<T>(); ++i) v[i] = static_cast<acc_t<T>>(p[i]);
  }
  return v;
}

template <typename T>
MMK_INLINE void vstore(T* p, vec_t<T> v) {
  if constexpr (std::is_same<T, acc_t<T>>::value) {
    *reinterpret_cast<typename VecOf<T>::unaligned*>(p) = v;
  } else {
    for (int i = 0; i < lanes<T>(); ++i) p[i] = static_cast<T>(v[i]);  // round to nearest even
  }
}

// Loads/stores of the first n < lanes elements (channel tails); the rest of the vector is zero.
template <typename T>
MMK_INLINE vec_t<T> vload_n(const T* p, int64_t n) {
  vec_t<T> v = {};
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<acc_t<T>>(p[i]);
  return v;
}

template <typename T>
MMK_INLINE void vstore_n(T* p, vec_t<T> v, int64_t n) {
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(v[i]);
}

// Load/store of `n` valid lanes. With TAIL = false the caller guarantees a whole vector, so the
// hot loops compile to plain vector moves with no branch.
template <bool TAIL = true, typename T>
MMK_INLINE vec_t<T> vload_upto(const T* p, int64_t n) {
  if constexpr (TAIL) {
    return n >= lanes<T>() ? vload(p) : vload_n(p, n);
  } else {
    return vload(p);
  }
}
template <bool TAIL = true, typename T>
MMK_INLINE void vstore_upto(T* p, vec_t<T> v, int64_t n) {
  if (!TAIL || n >= lanes<T>()) {
    vstore(p, v);
  } else {
    vstore_n(p, v, n);
  }
}

}  // namespace cpu
}  // namespace mmearth_kernels
