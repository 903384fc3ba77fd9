// Schemas and CPU kernels of the dsd_fast ops, plus the (empty) Python module `dsd_fast._C`:
// importing it loads this library, and the static TORCH_LIBRARY registrations below run.
// Python wrappers, fake (meta) kernels and reference twins: dsd_fast/ops/__init__.py,
// ops/schemas.py and ops/reference.py (schemas.py repeats these schemas for builds without
// this extension; tests/ops/test_triton_kernels.py checks that the two agree).
#include <torch/extension.h>

#include <optional>

#include "simd.h"

namespace dsd {
at::Tensor ff_parser_cpu(const at::Tensor& x, const at::Tensor& weight);
void ff_parser_out_cpu(const at::Tensor& x, const at::Tensor& weight, at::Tensor& out);
at::Tensor group_norm_silu_cpu(const at::Tensor& x, const at::Tensor& gamma,
                               const at::Tensor& beta, int64_t groups, double eps,
                               const std::optional<at::Tensor>& scale,
                               const std::optional<at::Tensor>& shift);
at::Tensor gated_conv1x1_cpu(const at::Tensor& g, const at::Tensor& weight,
                             const at::Tensor& bias, const at::Tensor& x);
at::Tensor linear_attention_cpu(const at::Tensor& xn, const at::Tensor& w_qkv,
                                const at::Tensor& w_out, const at::Tensor& b_out);
at::Tensor winograd_conv3x3_cpu(const at::Tensor& x, const at::Tensor& u, const at::Tensor& bias);
at::Tensor winograd_conv3x3_bf16_cpu(const at::Tensor& x, const at::Tensor& u,
                                     const at::Tensor& bias);
}  // namespace dsd

TORCH_LIBRARY(dsd_fast, m) {
  // y = irfft2(rfft2(x, norm="ortho") * view_as_complex(weight), s=(H, W), norm="ortho")
  m.def("ff_parser(Tensor x, Tensor weight) -> Tensor");
  // Same, written into `out` (x's shape; each plane contiguous, e.g. a channel slice of a
  // concatenation buffer). Returns nothing: the wrapper returns `out`.
  m.def("ff_parser_out(Tensor x, Tensor weight, Tensor(a!) out) -> ()");
  // silu(group_norm(x) * (scale + 1) + shift); scale/shift (B, C) optional.
  m.def(
      "group_norm_silu(Tensor x, Tensor gamma, Tensor beta, int groups, float eps, "
      "Tensor? scale=None, Tensor? shift=None) -> Tensor");
  // (conv1x1(g, weight) + bias) * x
  m.def("gated_conv1x1(Tensor g, Tensor weight, Tensor bias, Tensor x) -> Tensor");
  // to_out_conv(linear_attention(xn)): the published LinearAttention before its GroupNorm
  m.def("linear_attention(Tensor xn, Tensor w_qkv, Tensor w_out, Tensor b_out) -> Tensor");
  // conv2d(x, w, bias, padding=1) by Winograd F(4x4, 3x3); u = ops.winograd_weight(w)
  m.def("winograd_conv3x3(Tensor x, Tensor u, Tensor bias) -> Tensor");
  // the same with bfloat16 products (AVX-512 build, AVX512_BF16 CPUs); u = winograd_weight_bf16
  m.def("winograd_conv3x3_bf16(Tensor x, Tensor u, Tensor bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(dsd_fast, CPU, m) {
  m.impl("ff_parser", &dsd::ff_parser_cpu);
  m.impl("ff_parser_out", &dsd::ff_parser_out_cpu);
  m.impl("group_norm_silu", &dsd::group_norm_silu_cpu);
  m.impl("gated_conv1x1", &dsd::gated_conv1x1_cpu);
  m.impl("linear_attention", &dsd::linear_attention_cpu);
  m.impl("winograd_conv3x3", &dsd::winograd_conv3x3_cpu);
  m.impl("winograd_conv3x3_bf16", &dsd::winograd_conv3x3_bf16_cpu);
}

// The ops live under torch.ops.dsd_fast; the module itself says only which instruction set
// this build of the kernels was compiled for (setup.py builds one module per ISA).
PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
#if defined(__AVX512F__)
  module.attr("ISA") = "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
  module.attr("ISA") = "avx2";
#else
  module.attr("ISA") = "portable";
#endif
  module.attr("VECTOR_LANES") = DSD_LANES;
}
