// The single place where every mmearth_kernels op schema is declared.
//
// Device implementations live in csrc/cpu/*.cpp and csrc/cuda/*.cu (TORCH_LIBRARY_IMPL blocks);
// fake kernels and autograd are registered in Python (mmearth_kernels/ops/).
#include <Python.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>

extern "C" {
// `import mmearth_kernels._C` loads this shared object, which runs the static TORCH_LIBRARY
// initialisers below. The module itself is empty on purpose: no pybind11, no load_library.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace mmearth_kernels {

// Whether this build compiled the CUDA sources; the tests compare it with the dispatcher.
static bool built_with_cuda() {
#ifdef MMEARTH_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// How many threads one at::parallel_for of this extension really runs on. at::parallel_for is a header
// template: compiled without -fopenmp it silently runs every CPU kernel on one thread, whatever
// torch.get_num_threads() says. The tests compare this with torch's thread count (setup.py adds -fopenmp).
static int64_t cpu_threads_used() {
  std::atomic<uint64_t> seen{0};
  at::parallel_for(0, 64 * at::get_num_threads(), 1, [&](int64_t, int64_t) {
    seen.fetch_or(uint64_t(1) << (at::get_thread_num() % 64));
  });
  return __builtin_popcountll(seen.load());
}

TORCH_LIBRARY(mmearth_kernels, m) {
  // Submanifold depthwise conv on packed rows: y[p] = bias + sum_k w[k] * x[p + o_k] over active neighbours.
  m.def("sparse_dwconv2d(Tensor x, Tensor weight, Tensor? bias, Tensor row_pos, Tensor inv_map) -> Tensor");
  // Returns (grad_x, grad_weight, grad_bias), computing only those whose output_mask entry is true (as
  // aten::convolution_backward); the others come back as empty tensors (numel 0), never as unfilled memory.
  m.def(
      "sparse_dwconv2d_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor row_pos, Tensor inv_map,"
      " bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // The depthwise conv and the LayerNorm that follows it in a ConvNeXt block, one pass: returns (y, y1, mean, rstd)
  // with y1 the conv's output (kept for the LayerNorm backward) and mean/rstd [N] its per-row statistics in the
  // accumulation type. No backward op: the backward is aten's LayerNorm backward, then sparse_dwconv2d_backward.
  m.def(
      "sparse_dwconv2d_ln(Tensor x, Tensor weight, Tensor? bias, Tensor ln_weight, Tensor ln_bias, Tensor row_pos,"
      " Tensor inv_map, float eps) -> (Tensor, Tensor, Tensor, Tensor)");
  // GRN on rows grouped by sample; returns (y, gnorm) where gnorm [groups, C] is the L2 norm G (fp32/fp64).
  m.def("grn(Tensor x, Tensor gamma, Tensor beta, Tensor offsets, float eps, bool batch_stats) -> (Tensor, Tensor)");
  // Returns (grad_x, grad_gamma, grad_beta); output_mask as for sparse_dwconv2d_backward.
  m.def(
      "grn_backward(Tensor grad_out, Tensor x, Tensor gamma, Tensor gnorm, Tensor offsets, float eps,"
      " bool batch_stats, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // GRN(GELU(h)) with GELU applied on load (its output never stored); the backward returns (grad_h, grad_gamma,
  // grad_beta). CPU kernels only so far (the Triton twin is gelu_grn_triton).
  m.def("gelu_grn(Tensor h, Tensor gamma, Tensor beta, Tensor offsets, float eps, bool batch_stats) -> (Tensor, Tensor)");
  m.def(
      "gelu_grn_backward(Tensor grad_out, Tensor h, Tensor gamma, Tensor gnorm, Tensor offsets, float eps,"
      " bool batch_stats, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def("built_with_cuda() -> bool", &built_with_cuda);
  m.def("cpu_threads_used() -> int", &cpu_threads_used);
}

}  // namespace mmearth_kernels
