// Argument checks shared by the CPU and CUDA implementations (same checks, same order).
//
// Caller mistakes get a TORCH_CHECK naming the argument and what was expected. The Python
// wrappers check the same things first with friendlier messages; these checks protect direct
// calls through torch.ops.mmearth_kernels.*.
#pragma once
#include <ATen/ATen.h>

#include "sparse_index.h"

namespace mmearth_kernels {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline at::ScalarType acc_type_of(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// The depthwise weight [C, 1, K, K] as [K*K, C] in the accumulation type, taps-major (the layout every
// kernel reads, Triton included: mmearth_kernels/triton_kernels/sparse_dwconv.py _taps_major). Tiny; per call.
inline at::Tensor taps_major(const at::Tensor& weight) {
  // KK, not -1: for C = 0 (an empty weight) the -1 could not be inferred
  const int64_t C = weight.size(0), KK = weight.size(2) * weight.size(3);
  return weight.reshape({C, KK}).t().to(acc_type_of(weight.scalar_type())).contiguous();
}

inline void check_features(const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(x.dim() == 2, op, ": ", name, " must be 2-D [N, C] (packed active rows), got shape ", x.sizes());
  TORCH_CHECK(is_supported_float(x.scalar_type()), op, ": ", name,
              " must be float32, float64, float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), op, ": ", name, " must be contiguous (call .contiguous() first)");
}

inline void check_same(const at::Tensor& t, const at::Tensor& like, const char* op, const char* name,
                       const char* like_name) {
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(), " but ", like_name, " is on ",
              like.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), " but ",
              like_name, " has dtype ", like.scalar_type());
}

inline void check_index(const at::Tensor& t, int64_t dim, const at::Tensor& x, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kInt, op, ": ", name, " must be int32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must be ", dim, "-D, got shape ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ", x.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

// x [N, C]; weight [C, 1, K, K] (nn.Conv2d depthwise layout); bias [C] or None;
// row_pos [N] int32; inv_map [B, H, W] int32.
inline void check_sparse_dwconv(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                const at::Tensor& row_pos, const at::Tensor& inv_map) {
  const char* op = "sparse_dwconv2d";
  check_features(x, op, "x");
  const int64_t C = x.size(1);
  check_same(weight, x, op, "weight", "x");
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == C && weight.size(1) == 1, op,
              ": weight must have shape [C, 1, K, K] with C = ", C, " (x has ", C, " channels), got ",
              weight.sizes());
  const int64_t K = weight.size(2);
  TORCH_CHECK(weight.size(3) == K, op, ": weight must be square [C, 1, K, K], got ", weight.sizes());
  TORCH_CHECK(K % 2 == 1 && K >= 1 && K <= index::kMaxKernelSize, op,
              ": kernel size must be odd and at most ", index::kMaxKernelSize, ", got ", K);
  TORCH_CHECK(weight.is_contiguous(), op, ": weight must be contiguous");
  if (bias.has_value()) {
    check_same(*bias, x, op, "bias", "x");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == C, op, ": bias must have shape [", C, "], got ", bias->sizes());
    TORCH_CHECK(bias->is_contiguous(), op, ": bias must be contiguous");
  }
  check_index(row_pos, 1, x, op, "row_pos");
  check_index(inv_map, 3, x, op, "inv_map");
  TORCH_CHECK(row_pos.size(0) == x.size(0), op, ": x has ", x.size(0), " rows but the layout has ", row_pos.size(0),
              " active sites (is the layout from another stage?)");
  TORCH_CHECK(inv_map.numel() < (int64_t(1) << 31), op, ": B*H*W must fit in int32, got ", inv_map.numel());
}

// The values of a layout, for CPU tensors only (it reads them; for CUDA tensors that would be a host sync,
// so there the kernels treat out-of-range entries as inactive instead, see sparse_index.h): every row's
// position is a site of the layout and inv_map maps it back to that row, every other site holds -1.
inline void check_layout_values_cpu(const at::Tensor& row_pos, const at::Tensor& inv_map, const char* op) {
  const int64_t N = row_pos.size(0), S = inv_map.numel();
  const int32_t* rp = row_pos.data_ptr<int32_t>();
  const int32_t* im = inv_map.data_ptr<int32_t>();
  for (int64_t p = 0; p < N; ++p) {
    const int64_t pos = rp[p];
    TORCH_CHECK(pos >= 0 && pos < S, op, ": row_pos[", p, "] = ", pos, " is not a site of the layout (B*H*W = ", S,
                "); make layouts with mmearth_kernels.build_layout");
    TORCH_CHECK(im[pos] == p, op, ": row_pos and inv_map disagree: row_pos[", p, "] = ", pos,
                " but inv_map holds ", im[pos], " there (duplicate or corrupt rows)");
  }
  int64_t active = 0;
  for (int64_t i = 0; i < S; ++i) {
    TORCH_CHECK(im[i] >= -1 && im[i] < N, op, ": inv_map holds ", im[i], " at flat site ", i,
                ", which is neither -1 (inactive) nor a row in [0, ", N, ")");
    active += im[i] >= 0;
  }
  TORCH_CHECK(active == N, op, ": inv_map marks ", active, " active sites but row_pos lists ", N, " rows");
}

// x [N, C]; gamma, beta [C]; offsets [B + 1] int32.
inline void check_grn(const at::Tensor& x, const at::Tensor& gamma, const at::Tensor& beta, const at::Tensor& offsets,
                      double eps) {
  const char* op = "grn";
  check_features(x, op, "x");
  const int64_t C = x.size(1);
  check_same(gamma, x, op, "gamma", "x");
  check_same(beta, x, op, "beta", "x");
  TORCH_CHECK(gamma.dim() == 1 && gamma.size(0) == C && gamma.is_contiguous(), op,
              ": gamma must be a contiguous [", C, "] tensor, got ", gamma.sizes());
  TORCH_CHECK(beta.dim() == 1 && beta.size(0) == C && beta.is_contiguous(), op,
              ": beta must be a contiguous [", C, "] tensor, got ", beta.sizes());
  check_index(offsets, 1, x, op, "offsets");
  TORCH_CHECK(offsets.size(0) >= 2, op, ": offsets must have B + 1 >= 2 entries, got ", offsets.size(0));
  TORCH_CHECK(eps >= 0, op, ": eps must be >= 0, got ", eps);
}

// The backward ops take the forward's inputs plus grad_out of the same shape as x.
inline void check_grad_out(const at::Tensor& grad_out, const at::Tensor& x, const char* op) {
  check_features(grad_out, op, "grad_out");
  check_same(grad_out, x, op, "grad_out", "x");
  TORCH_CHECK(grad_out.sizes() == x.sizes(), op, ": grad_out must have the shape of x ", x.sizes(), ", got ",
              grad_out.sizes());
}

inline void check_sparse_dwconv_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                                         const at::Tensor& row_pos, const at::Tensor& inv_map) {
  check_sparse_dwconv(x, weight, c10::nullopt, row_pos, inv_map);
  check_grad_out(grad_out, x, "sparse_dwconv2d_backward");
}

// gnorm [groups, C] in the accumulation type: the statistics returned by grn.
inline void check_grn_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& gamma,
                               const at::Tensor& gnorm, const at::Tensor& offsets, double eps, bool batch_stats) {
  check_grn(x, gamma, gamma, offsets, eps);
  check_grad_out(grad_out, x, "grn_backward");
  const int64_t G = batch_stats ? 1 : offsets.size(0) - 1, C = x.size(1);
  const auto acc = acc_type_of(x.scalar_type());
  TORCH_CHECK(gnorm.scalar_type() == acc && gnorm.dim() == 2 && gnorm.size(0) == G && gnorm.size(1) == C &&
                  gnorm.device() == x.device(),
              "grn_backward: gnorm must be the [", G, ", ", C, "] ", acc, " statistics returned by grn, got ",
              gnorm.sizes(), " ", gnorm.scalar_type(), " on ", gnorm.device());
}

}  // namespace mmearth_kernels
