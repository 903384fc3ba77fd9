// GroupNorm + optional FiLM + SiLU in one pass over the data after the statistics.
//
//   x (B, C, H, W), gamma/beta (C,), scale/shift (B, C) optional, float32
//   y = silu(((x - mean_bg) * rstd_bg * gamma_c + beta_c) * (scale_bc + 1) + shift_bc)
//
// (the `Block` of families/dermosegdiff/layers.py: norm -> x * (scale + 1) + shift -> SiLU).
// Per (b, c) plane the whole affine chain folds to y = silu((x - m_bg) * a_bc + d_bc), so the output pass is a
// subtract, an FMA, an exp and a reciprocal per element. The mean stays outside the fold: a
// folded a*x + (d - m*a) would cancel catastrophically when |mean| >> std.
//
// Statistics: per plane, a two-pass mean / sum of squared deviations (float blocks summed in
// double; the plane is read twice, the second time from cache), then the planes of a group are
// combined exactly (Chan et al.: M2 = sum M2_c + n_c * (mean_c - mean)^2). Biased variance,
// as torch.nn.functional.group_norm.
#include <ATen/ATen.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "simd.h"

namespace dsd {
namespace {

// Mean and sum of squared deviations of n floats. Blocks of 256 elements are summed in float
// (4 vectors of VL lanes, 256 / (4 VL) additions per lane), block sums are added in double:
// the error stays at float rounding of one block, not of the whole plane. Pass 2 re-reads the
// plane from cache.
void plane_moments(const float* p, int64_t n, double* mean_out, double* m2_out) {
  constexpr int64_t kBlock = 256;
  static_assert(kBlock % (4 * VL) == 0, "a block is whole groups of 4 vectors");
  double sum = 0.0;
  int64_t i = 0;
  for (; i + kBlock <= n; i += kBlock) {
    vf a0 = zerof(), a1 = zerof(), a2 = zerof(), a3 = zerof();
    for (int64_t k = i; k < i + kBlock; k += 4 * VL) {
      a0 += loadf(p + k); a1 += loadf(p + k + VL);
      a2 += loadf(p + k + 2 * VL); a3 += loadf(p + k + 3 * VL);
    }
    const vf a = (a0 + a1) + (a2 + a3);
    for (int j = 0; j < VL; j += 2) sum += double(a[j]) + a[j + 1];
  }
  for (; i < n; ++i) sum += p[i];
  const double mean = sum / static_cast<double>(n);

  const float mf = static_cast<float>(mean);
  const vf m = bcastf(mf);
  double m2 = 0.0;
  for (i = 0; i + kBlock <= n; i += kBlock) {
    vf a0 = zerof(), a1 = zerof(), a2 = zerof(), a3 = zerof();
    for (int64_t k = i; k < i + kBlock; k += 4 * VL) {
      const vf d0 = loadf(p + k) - m, d1 = loadf(p + k + VL) - m;
      const vf d2 = loadf(p + k + 2 * VL) - m, d3 = loadf(p + k + 3 * VL) - m;
      a0 = fmadd(d0, d0, a0); a1 = fmadd(d1, d1, a1); a2 = fmadd(d2, d2, a2); a3 = fmadd(d3, d3, a3);
    }
    const vf a = (a0 + a1) + (a2 + a3);
    for (int j = 0; j < VL; j += 2) m2 += double(a[j]) + a[j + 1];
  }
  for (; i < n; ++i) {
    const double d = static_cast<double>(p[i]) - mf;
    m2 += d * d;
  }
  // Deviations were taken from mf, not mean: sum (x - mf)^2 = M2 + n (mean - mf)^2.
  const double dm = mean - static_cast<double>(mf);
  *mean_out = mean;
  *m2_out = std::max(0.0, m2 - static_cast<double>(n) * dm * dm);
}

// out[i] = silu((in[i] - m) * a + d)
void apply_plane(const float* in, float* out, int64_t n, float m, float a, float d) {
  const vf vm = bcastf(m), va = bcastf(a), vd = bcastf(d);
  int64_t i = 0;
  for (; i + 4 * VL <= n; i += 4 * VL) {   // 4 independent chains in flight
    const vf y0 = silu(fmadd(loadf(in + i) - vm, va, vd));
    const vf y1 = silu(fmadd(loadf(in + i + VL) - vm, va, vd));
    const vf y2 = silu(fmadd(loadf(in + i + 2 * VL) - vm, va, vd));
    const vf y3 = silu(fmadd(loadf(in + i + 3 * VL) - vm, va, vd));
    storef(out + i, y0);
    storef(out + i + VL, y1);
    storef(out + i + 2 * VL, y2);
    storef(out + i + 3 * VL, y3);
  }
  for (; i + VL <= n; i += VL) storef(out + i, silu(fmadd(loadf(in + i) - vm, va, vd)));
  if (i < n) {  // tail through a zero-padded lane buffer so it uses the same exp as the body
    alignas(64) float buf[VL] = {0};
    for (int64_t k = i; k < n; ++k) buf[k - i] = in[k];
    storef(buf, silu(fmadd(loadf(buf) - vm, va, vd)));
    for (int64_t k = i; k < n; ++k) out[k] = buf[k - i];
  }
}

// Group (b, g): combine its planes' moments (Chan et al.) and fold norm, affine and FiLM into
// each plane's y = silu((x - m) a + d), m = the group mean in float; d absorbs the rounding
// of m. Planes are indexed b * C + c.
struct Coeffs {
  const double *mean, *m2;
  const float *gamma, *beta, *scale, *shift;   // scale/shift may be null
  int64_t C, Cg, HW;
  double eps;
  float *m, *a, *d;

  void group(int64_t b, int64_t g) const {
    const int64_t c0 = b * C + g * Cg;
    double gm = 0;
    for (int64_t c = 0; c < Cg; ++c) gm += mean[c0 + c];
    gm /= static_cast<double>(Cg);
    double gm2 = 0;
    for (int64_t c = 0; c < Cg; ++c) {
      const double dm = mean[c0 + c] - gm;
      gm2 += m2[c0 + c] + static_cast<double>(HW) * dm * dm;
    }
    const double var = gm2 / static_cast<double>(Cg * HW);   // biased, as group_norm
    const double rstd = 1.0 / std::sqrt(var + eps);
    const float mf = static_cast<float>(gm);
    for (int64_t c = 0; c < Cg; ++c) {
      const int64_t ch = g * Cg + c, i = c0 + c;
      // ((x - gm) rstd gamma + beta) s + shift = (x - mf) a + d,
      // a = rstd gamma s, d = beta s + shift - (gm - mf) a, s = 1 + scale.
      const double s = scale ? 1.0 + scale[i] : 1.0;
      const double ai = rstd * gamma[ch] * s;
      const double di = beta[ch] * s + (shift ? shift[i] : 0.0) - (gm - mf) * ai;
      m[i] = mf;
      a[i] = static_cast<float>(ai);
      d[i] = static_cast<float>(di);
    }
  }
};

void check_vec(const std::optional<at::Tensor>& t, const char* name, int64_t B, int64_t C) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat,
              "dsd_fast::group_norm_silu: ", name, " must be a float32 CPU tensor, got ",
              t->scalar_type(), " on ", t->device());
  TORCH_CHECK(t->dim() == 2 && t->size(0) == B && t->size(1) == C,
              "dsd_fast::group_norm_silu: ", name, " must be (B, C) = (", B, ", ", C,
              "), got ", t->sizes());
}

}  // namespace

at::Tensor group_norm_silu_cpu(const at::Tensor& x_in, const at::Tensor& gamma_in,
                               const at::Tensor& beta_in, int64_t groups, double eps,
                               const std::optional<at::Tensor>& scale_in,
                               const std::optional<at::Tensor>& shift_in) {
  TORCH_CHECK(x_in.device().is_cpu() && x_in.scalar_type() == at::kFloat,
              "dsd_fast::group_norm_silu: x must be a float32 CPU tensor, got ",
              x_in.scalar_type(), " on ", x_in.device());
  TORCH_CHECK(x_in.dim() == 4, "dsd_fast::group_norm_silu: x must be (B, C, H, W), got ",
              x_in.sizes());
  const int64_t B = x_in.size(0), C = x_in.size(1), HW = x_in.size(2) * x_in.size(3);
  TORCH_CHECK(groups >= 1 && C % groups == 0, "dsd_fast::group_norm_silu: groups (", groups,
              ") must be >= 1 and divide the channel count (", C, ")");
  TORCH_CHECK(eps >= 0, "dsd_fast::group_norm_silu: eps must be >= 0, got ", eps);
  for (const at::Tensor* t : {&gamma_in, &beta_in}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->dim() == 1 &&
                    t->size(0) == C,
                "dsd_fast::group_norm_silu: gamma and beta must be float32 CPU tensors of "
                "shape (C,) = (", C, ",), got ", t->scalar_type(), " ", t->sizes());
  }
  check_vec(scale_in, "scale", B, C);
  check_vec(shift_in, "shift", B, C);

  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty({B, C, x_in.size(2), x_in.size(3)}, x.options());
  if (x.numel() == 0) return out;
  const at::Tensor gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
  const at::Tensor scale = scale_in.has_value() ? scale_in->contiguous() : at::Tensor();
  const at::Tensor shift = shift_in.has_value() ? shift_in->contiguous() : at::Tensor();

  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t P = B * C, Cg = C / groups;
  std::vector<double> mean(P), m2(P);
  std::vector<float> coef_m(P), coef_a(P), coef_d(P);
  const Coeffs coeffs{mean.data(), m2.data(), gamma.data_ptr<float>(), beta.data_ptr<float>(),
                      scale.defined() ? scale.data_ptr<float>() : nullptr,
                      shift.defined() ? shift.data_ptr<float>() : nullptr,
                      C, Cg, HW, eps, coef_m.data(), coef_a.data(), coef_d.data()};

  const int64_t chunk_bytes = Cg * HW * static_cast<int64_t>(sizeof(float));
  if (B * groups >= 2 * at::get_num_threads() && chunk_bytes <= (512 << 10)) {
    // One task per group: statistics, then the output pass while the group's planes
    // (<= 512 KiB) are still in L2, so the input comes from memory once.
    at::parallel_for(0, B * groups, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bg = begin; bg < end; ++bg) {
        const int64_t b = bg / groups, g = bg % groups, i0 = b * C + g * Cg;
        for (int64_t i = i0; i < i0 + Cg; ++i) plane_moments(xp + i * HW, HW, &mean[i], &m2[i]);
        coeffs.group(b, g);
        for (int64_t i = i0; i < i0 + Cg; ++i)
          apply_plane(xp + i * HW, op + i * HW, HW, coef_m[i], coef_a[i], coef_d[i]);
      }
    });
    return out;
  }
  // Few or large groups: parallel over planes in three phases.
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) plane_moments(xp + i * HW, HW, &mean[i], &m2[i]);
  });
  for (int64_t b = 0; b < B; ++b)
    for (int64_t g = 0; g < groups; ++g) coeffs.group(b, g);
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      apply_plane(xp + i * HW, op + i * HW, HW, coef_m[i], coef_a[i], coef_d[i]);
  });
  return out;
}

}  // namespace dsd
