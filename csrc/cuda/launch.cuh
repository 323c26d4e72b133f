// Small helpers shared by the CUDA kernels: launch geometry, block reduction, accumulation type.
#pragma once
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace mmearth_kernels {
namespace cuda {

template <typename T>
using acc_t = std::conditional_t<std::is_same<T, double>::value, double, float>;

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n elements (capped: the loop covers the rest).
inline unsigned int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(b, 65535LL * 8)));
}

// Sum of v over the block (blockDim.x == kThreads); the result is valid in every thread.
template <typename A>
__device__ A block_sum(A v, A* shared /* [kThreads] */) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  const A out = shared[0];
  __syncthreads();
  return out;
}

}  // namespace cuda
}  // namespace mmearth_kernels
