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
//
// channels_last input (NHWC) gets its own loops and a channels_last output: each pixel's C
// channels are contiguous, so statistics are per-channel sums over pixels (vectors across
// channels), taken per run of kPixRun pixels two-pass from cache and combined across runs
// with the same exact formula, and the output pass is the same fold with per-channel m, a, d
// vectors. Same arithmetic as the NCHW path up to the order of the float additions.
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

// ---- channels_last (NHWC): x is (B, HW, C) in memory -------------------------------------

constexpr int64_t kPixRun = 32;   // pixels per two-pass run: kPixRun * C floats stay in L1/L2

// Running (n, mean, M2) per channel, merged exactly (Chan et al.) with one run's moments.
struct ChannelMoments {
  std::vector<double> mean, m2;
  int64_t n = 0;
  explicit ChannelMoments(int64_t C) : mean(C, 0.0), m2(C, 0.0) {}
  void merge(const float* run_mean, const float* run_m2, int64_t nb) {
    const double na = static_cast<double>(n), nbd = static_cast<double>(nb), nt = na + nbd;
    for (size_t c = 0; c < mean.size(); ++c) {
      const double delta = static_cast<double>(run_mean[c]) - mean[c];
      mean[c] += delta * nbd / nt;
      m2[c] += static_cast<double>(run_m2[c]) + delta * delta * na * nbd / nt;
    }
    n += nb;
  }
  void merge(const ChannelMoments& o) {
    if (o.n == 0) return;
    const double na = static_cast<double>(n), nbd = static_cast<double>(o.n), nt = na + nbd;
    for (size_t c = 0; c < mean.size(); ++c) {
      const double delta = o.mean[c] - mean[c];
      mean[c] += delta * nbd / nt;
      m2[c] += o.m2[c] + delta * delta * na * nbd / nt;
    }
    n += o.n;
  }
};

// Moments of pixels [p0, p1) of one image (rows of C floats), merged into `acc`.
void nhwc_moments(const float* x, int64_t C, int64_t p0, int64_t p1, ChannelMoments* acc) {
  std::vector<float> rmean(C), rm2(C);
  for (int64_t r0 = p0; r0 < p1; r0 += kPixRun) {
    const int64_t r1 = std::min(p1, r0 + kPixRun), np = r1 - r0;
    const float inv = 1.0f / static_cast<float>(np);
    int64_t c = 0;
    for (; c + VL <= C; c += VL) {
      vf s = zerof();
      for (int64_t p = r0; p < r1; ++p) s += loadf(x + p * C + c);
      const vf m = s * inv;
      vf q = zerof();
      for (int64_t p = r0; p < r1; ++p) {
        const vf d = loadf(x + p * C + c) - m;
        q = fmadd(d, d, q);
      }
      storef(rmean.data() + c, m);
      storef(rm2.data() + c, q);
    }
    for (; c < C; ++c) {   // channels past the last whole vector
      float s = 0.0f;
      for (int64_t p = r0; p < r1; ++p) s += x[p * C + c];
      const float m = s * inv;
      float q = 0.0f;
      for (int64_t p = r0; p < r1; ++p) {
        const float d = x[p * C + c] - m;
        q += d * d;
      }
      rmean[c] = m;
      rm2[c] = q;
    }
    acc->merge(rmean.data(), rm2.data(), np);
  }
}

// out row = silu((x row - m) * a + d), m/a/d padded to whole vectors (Cpad floats each).
void nhwc_apply_row(const float* in, float* out, int64_t C, const float* m, const float* a,
                    const float* d) {
  int64_t c = 0;
  for (; c + VL <= C; c += VL)
    storef(out + c, silu(fmadd(loadf(in + c) - loadf(m + c), loadf(a + c), loadf(d + c))));
  if (c < C) {   // the tail through a zero-padded buffer: the same exp as the body
    alignas(64) float buf[VL] = {0};
    for (int64_t k = c; k < C; ++k) buf[k - c] = in[k];
    storef(buf, silu(fmadd(loadf(buf) - loadf(m + c), loadf(a + c), loadf(d + c))));
    for (int64_t k = c; k < C; ++k) out[k] = buf[k - c];
  }
}

at::Tensor group_norm_silu_nhwc(const at::Tensor& x, int64_t groups, double eps,
                                const float* gamma, const float* beta, const float* scale,
                                const float* shift) {
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (x.numel() == 0) return out;
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();

  // Statistics: each image's pixels in R ranges (enough tasks for every thread), merged.
  const int64_t want = std::max<int64_t>(1, (2 * at::get_num_threads() + B - 1) / B);
  const int64_t R = std::max<int64_t>(1, std::min(want, HW / (4 * kPixRun)));
  std::vector<ChannelMoments> part(B * R, ChannelMoments(C));
  at::parallel_for(0, B * R, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / R, r = t % R;
      nhwc_moments(xp + b * HW * C, C, HW * r / R, HW * (r + 1) / R, &part[t]);
    }
  });
  const int64_t P = B * C, Cg = C / groups, Cpad = (C + VL - 1) / VL * VL;
  std::vector<double> mean(P), m2(P);
  for (int64_t b = 0; b < B; ++b) {
    ChannelMoments all(C);
    for (int64_t r = 0; r < R; ++r) all.merge(part[b * R + r]);
    std::copy(all.mean.begin(), all.mean.end(), mean.begin() + b * C);
    std::copy(all.m2.begin(), all.m2.end(), m2.begin() + b * C);
  }
  std::vector<float> cm(P), ca(P), cd(P);
  const Coeffs coeffs{mean.data(), m2.data(), gamma, beta, scale, shift,
                      C, Cg, HW, eps, cm.data(), ca.data(), cd.data()};
  for (int64_t b = 0; b < B; ++b)
    for (int64_t g = 0; g < groups; ++g) coeffs.group(b, g);
  // Per image, m/a/d padded to Cpad so the tail vector loads stay in bounds.
  std::vector<float> pm(B * Cpad, 0.0f), pa(B * Cpad, 0.0f), pd(B * Cpad, 0.0f);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) {
      pm[b * Cpad + c] = cm[b * C + c];
      pa[b * Cpad + c] = ca[b * C + c];
      pd[b * Cpad + c] = cd[b * C + c];
    }
  at::parallel_for(0, B * HW, 64, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t b = p / HW;
      nhwc_apply_row(xp + p * C, op + p * C, C, pm.data() + b * Cpad, pa.data() + b * Cpad,
                     pd.data() + b * Cpad);
    }
  });
  return out;
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

  const at::Tensor gamma = gamma_in.contiguous(), beta = beta_in.contiguous();
  const at::Tensor scale = scale_in.has_value() ? scale_in->contiguous() : at::Tensor();
  const at::Tensor shift = shift_in.has_value() ? shift_in->contiguous() : at::Tensor();
  const float* scale_p = scale.defined() ? scale.data_ptr<float>() : nullptr;
  const float* shift_p = shift.defined() ? shift.data_ptr<float>() : nullptr;
  // channels_last stays channels_last (a layout copy would cost more than the op).
  if (!x_in.is_contiguous() && x_in.is_contiguous(at::MemoryFormat::ChannelsLast))
    return group_norm_silu_nhwc(x_in, groups, eps, gamma.data_ptr<float>(),
                                beta.data_ptr<float>(), scale_p, shift_p);

  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty({B, C, x_in.size(2), x_in.size(3)}, x.options());
  if (x.numel() == 0) return out;

  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t P = B * C, Cg = C / groups;
  std::vector<double> mean(P), m2(P);
  std::vector<float> coef_m(P), coef_a(P), coef_d(P);
  const Coeffs coeffs{mean.data(), m2.data(), gamma.data_ptr<float>(), beta.data_ptr<float>(),
                      scale_p, shift_p, C, Cg, HW, eps, coef_m.data(), coef_a.data(), coef_d.data()};

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
