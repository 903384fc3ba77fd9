// Noise-feature fusion: out = (conv1x1(g; weight, bias)) * x, the multiply in the GEMM epilogue.
//
//   g (B, Cg, H, W), weight (Cx, Cg, 1, 1) or (Cx, Cg), bias (Cx,), x (B, Cx, H, W), float32
//   out[b, o, p] = (sum_i weight[o, i] * g[b, i, p] + bias[o]) * x[b, o, p],  p = pixel
//
// A register-blocked GEMM per batch entry, (Cx x Cg) @ (Cg x HW): each task takes a tile of
// pixels, packs it as NR-pixel panels of g (Cg x NR, contiguous; NR = two native vectors,
// 8 / 16 / 32 pixels in the portable / AVX2 / AVX-512 builds) and sweeps the output channels 6 at a time; the
// 6 x NR accumulator block (12 vector registers) gets the bias and the multiply by x before
// its only store. conv1x1(g) never exists in memory.
#include <ATen/ATen.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "simd.h"

namespace dsd {
namespace {

constexpr int64_t MR = 6;    // output channels per micro-tile
constexpr int64_t NR = 2 * VL;   // pixels per micro-tile (two native vectors)

// acc[r][h] = sum_i wp[i*MR + r] * gp[i*NR + VL*h + 0..VL-1]. The 12 accumulators are named
// locals (an indexed array would be kept on the stack), written to acc once at the end.
static inline void micro_kernel(const float* wp, const float* gp, int64_t K, vf acc[MR][2]) {
  vf c00 = zerof(), c01 = zerof(), c10 = zerof(), c11 = zerof(), c20 = zerof(), c21 = zerof();
  vf c30 = zerof(), c31 = zerof(), c40 = zerof(), c41 = zerof(), c50 = zerof(), c51 = zerof();
  for (int64_t i = 0; i < K; ++i) {
    const vf g0 = loadf(gp + i * NR), g1 = loadf(gp + i * NR + VL);
    const float* w = wp + i * MR;
    vf b = bcastf(w[0]); c00 = fmadd(b, g0, c00); c01 = fmadd(b, g1, c01);
    b = bcastf(w[1]);    c10 = fmadd(b, g0, c10); c11 = fmadd(b, g1, c11);
    b = bcastf(w[2]);    c20 = fmadd(b, g0, c20); c21 = fmadd(b, g1, c21);
    b = bcastf(w[3]);    c30 = fmadd(b, g0, c30); c31 = fmadd(b, g1, c31);
    b = bcastf(w[4]);    c40 = fmadd(b, g0, c40); c41 = fmadd(b, g1, c41);
    b = bcastf(w[5]);    c50 = fmadd(b, g0, c50); c51 = fmadd(b, g1, c51);
  }
  acc[0][0] = c00; acc[0][1] = c01; acc[1][0] = c10; acc[1][1] = c11;
  acc[2][0] = c20; acc[2][1] = c21; acc[3][0] = c30; acc[3][1] = c31;
  acc[4][0] = c40; acc[4][1] = c41; acc[5][0] = c50; acc[5][1] = c51;
}
static_assert(MR == 6 && NR == 2 * VL, "micro_kernel is written out for a 6 x (2 VL) tile");

}  // namespace

at::Tensor gated_conv1x1_cpu(const at::Tensor& g_in, const at::Tensor& weight_in,
                             const at::Tensor& bias_in, const at::Tensor& x_in) {
  for (const at::Tensor* t : {&g_in, &weight_in, &bias_in, &x_in}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat,
                "dsd_fast::gated_conv1x1: float32 CPU tensors expected, got ",
                t->scalar_type(), " on ", t->device());
  }
  TORCH_CHECK(g_in.dim() == 4 && x_in.dim() == 4,
              "dsd_fast::gated_conv1x1: g and x must be (B, C, H, W), got ", g_in.sizes(),
              " and ", x_in.sizes());
  const int64_t B = g_in.size(0), K = g_in.size(1), Cx = x_in.size(1);
  const int64_t H = g_in.size(2), W = g_in.size(3), HW = H * W;
  TORCH_CHECK(x_in.size(0) == B && x_in.size(2) == H && x_in.size(3) == W,
              "dsd_fast::gated_conv1x1: x ", x_in.sizes(), " and g ", g_in.sizes(),
              " must agree in batch and plane size");
  const bool w4 = weight_in.dim() == 4 && weight_in.size(2) == 1 && weight_in.size(3) == 1;
  TORCH_CHECK((w4 || weight_in.dim() == 2) && weight_in.size(0) == Cx && weight_in.size(1) == K,
              "dsd_fast::gated_conv1x1: weight must be (Cx, Cg, 1, 1) or (Cx, Cg) = (", Cx,
              ", ", K, "), got ", weight_in.sizes());
  TORCH_CHECK(bias_in.dim() == 1 && bias_in.size(0) == Cx,
              "dsd_fast::gated_conv1x1: bias must be (Cx,) = (", Cx, ",), got ",
              bias_in.sizes());

  // g and x may be channel slices of a concatenation buffer (batch stride > C*H*W): that
  // layout is read in place; anything else is made contiguous first.
  auto batch_strided = [](const at::Tensor& t) {
    const int64_t hw = t.size(2) * t.size(3);
    return (t.size(3) == 1 || t.stride(3) == 1) && (t.size(2) == 1 || t.stride(2) == t.size(3)) &&
           (t.size(1) == 1 || t.stride(1) == hw);
  };
  const at::Tensor g = batch_strided(g_in) ? g_in : g_in.contiguous();
  const at::Tensor x = batch_strided(x_in) ? x_in : x_in.contiguous();
  const int64_t sgb = g.stride(0), sxb = x.stride(0);
  const at::Tensor weight = weight_in.reshape({Cx, K}).contiguous();
  const at::Tensor bias = bias_in.contiguous();
  at::Tensor out = at::empty({B, Cx, H, W}, x.options());
  if (out.numel() == 0) return out;
  if (K == 0) return out.copy_(bias.view({1, Cx, 1, 1}) * x);  // empty sum: bias * x

  // Packed weight: for each block of MR output channels, K rows of MR values (zero-padded
  // past Cx), so the micro-kernel reads one contiguous stream.
  const int64_t OB = (Cx + MR - 1) / MR;
  std::vector<float> wpack(static_cast<size_t>(OB * K * MR), 0.f);
  const float* wsrc = weight.data_ptr<float>();
  for (int64_t ob = 0; ob < OB; ++ob)
    for (int64_t r = 0; r < MR && ob * MR + r < Cx; ++r)
      for (int64_t i = 0; i < K; ++i) wpack[(ob * K + i) * MR + r] = wsrc[(ob * MR + r) * K + i];

  const float* gp = g.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  float* op = out.data_ptr<float>();
  // A task is a tile of P panels (NR P pixels) of one batch entry. Its g tile, packed as P
  // panels of (K, NR), is at most 128 KiB (L2); the output channels are swept outside the
  // panels so that each x / out row is walked contiguously over the tile (a few long streams
  // the prefetcher follows, instead of one 64-byte line from each of Cx rows per panel).
  const int64_t panels = (HW + NR - 1) / NR;
  const int64_t P = std::max<int64_t>(1, std::min<int64_t>(16, 32768 / (NR * K)));
  const int64_t tiles = (panels + P - 1) / P;

  at::parallel_for(0, B * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> gtile(static_cast<size_t>(P * K * NR));
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / tiles, t = bt % tiles;
      const float* gb = gp + b * sgb;
      const float* xb = xp + b * sxb;
      float* ob_ = op + b * Cx * HW;
      const int64_t pn0 = t * P, pn1 = std::min(panels, pn0 + P);
      // Pack g[b, :, panel pixels] -> P x (K, 16), zero-padded past the last pixel.
      for (int64_t pn = pn0; pn < pn1; ++pn) {
        const int64_t p0 = pn * NR, np = std::min(NR, HW - p0);
        float* panel = gtile.data() + (pn - pn0) * K * NR;
        for (int64_t i = 0; i < K; ++i) {
          const float* s = gb + i * HW + p0;
          float* d = panel + i * NR;
          if (np == NR) { storef(d, loadf(s)); storef(d + VL, loadf(s + VL)); }
          else for (int64_t q = 0; q < NR; ++q) d[q] = q < np ? s[q] : 0.f;
        }
      }
      for (int64_t ob = 0; ob < OB; ++ob) {
        const int64_t rows = std::min(MR, Cx - ob * MR);
        for (int64_t pn = pn0; pn < pn1; ++pn) {
          const int64_t p0 = pn * NR, np = std::min(NR, HW - p0);
          vf acc[MR][2];
          micro_kernel(wpack.data() + ob * K * MR, gtile.data() + (pn - pn0) * K * NR, K, acc);
          // Epilogue: (acc + bias) * x, straight from registers to out.
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t o = ob * MR + r;
            const vf bv = bcastf(bp[o]);
            const float* xs = xb + o * HW + p0;
            float* os = ob_ + o * HW + p0;
            if (np == NR) {
              storef(os, (acc[r][0] + bv) * loadf(xs));
              storef(os + VL, (acc[r][1] + bv) * loadf(xs + VL));
            } else {
              alignas(64) float tmp[NR];
              storef(tmp, acc[r][0] + bv);
              storef(tmp + VL, acc[r][1] + bv);
              for (int64_t q = 0; q < np; ++q) os[q] = tmp[q] * xs[q];
            }
          }
        }
      }
    }
  });
  return out;
}

}  // namespace dsd
