// Portable SIMD for the CPU kernels, built on GCC/Clang vector extensions.
//
// A vector is 64 bytes of the accumulation type (16 floats or 8 doubles). The compiler lowers it
// to whatever the enclosing function is compiled for: the entry points are compiled several times
// (MMK_CPU_CLONES) and the best clone is picked at load time, so one wheel runs on any x86-64 CPU
// and still uses AVX-512 where present. Storage types (bf16/fp16) are widened to fp32 on load.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MMK_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
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
  typedef A type __attribute__((vector_size(64)));
};
template <typename T>
using vec_t = typename VecOf<acc_t<T>>::type;
template <typename T>
constexpr int lanes() {
  return 64 / sizeof(acc_t<T>);
}

// Full-vector load/store of storage type T, widened to / narrowed from the accumulation type.
template <typename T>
MMK_INLINE vec_t<T> vload(const T* p) {
  vec_t<T> v;
  if constexpr (std::is_same<T, acc_t<T>>::value) {
    std::memcpy(&v, p, sizeof(v));
  } else if constexpr (std::is_same<T, c10::BFloat16>::value) {
    // bf16 is the top half of an fp32: widen the bits and shift.
    typedef uint16_t u16v __attribute__((vector_size(32)));
    typedef uint32_t u32v __attribute__((vector_size(64)));
    u16v h;
    std::memcpy(&h, p, sizeof(h));
    u32v w = __builtin_convertvector(h, u32v) << 16;
    std::memcpy(&v, &w, sizeof(v));
  } else {
    for (int i = 0; i < lanes<T>(); ++i) v[i] = static_cast<acc_t<T>>(p[i]);
  }
  return v;
}

template <typename T>
MMK_INLINE void vstore(T* p, vec_t<T> v) {
  if constexpr (std::is_same<T, acc_t<T>>::value) {
    std::memcpy(p, &v, sizeof(v));
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

// Load/store that pick the full or the tail form; `n` is the number of valid lanes.
template <typename T>
MMK_INLINE vec_t<T> vload_upto(const T* p, int64_t n) {
  return n >= lanes<T>() ? vload(p) : vload_n(p, n);
}
template <typename T>
MMK_INLINE void vstore_upto(T* p, vec_t<T> v, int64_t n) {
  if (n >= lanes<T>()) {
    vstore(p, v);
  } else {
    vstore_n(p, v, n);
  }
}

}  // namespace cpu
}  // namespace mmearth_kernels
