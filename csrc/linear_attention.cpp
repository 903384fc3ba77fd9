// Linear attention (the published LinearAttention up to, not including, its output GroupNorm)
// without ever forming q, k, v or the attention output in memory.
//
//   xn (B, C, H, W) float32 (the PreNorm'd input), w_qkv (384, C[, 1, 1]), w_out (Co, 128[, 1, 1]),
//   b_out (Co,)  ->  y (B, Co, H, W) = to_out_conv(attention(xn))
//
// Published (heads 4, dim_head 32, N = H W pixels, per batch entry):
//   q, k, v = split(w_qkv @ xn);  q = softmax over d (per head, per pixel) / sqrt(32)
//   k = softmax over n;  ctx[h, d, e] = sum_n k[h d, n] v[h e, n]
//   o[h e, n] = sum_d ctx[h, d, e] q[h d, n];  y = w_out @ o + b_out
// v and w_out enter linearly, so with kx[h d, c] = sum_n k[h d, n] xn[c, n]:
//   ctx[h, d, e] = sum_c kx[h d, c] w_v[h e, c]
//   M[o, h d]    = sum_e w_out[o, h e] ctx[h, d, e] / sqrt(32)
//   y            = M @ softmax_d(q) + b_out
// Two sweeps over NR-pixel panels of xn (packed once, (C, NR) each; NR = two native vectors,
// 8 / 16 / 32 pixels in the portable / AVX2 / AVX-512 builds):
//   K sweep, one task per (b, head), in chunks of 64 panels: the head's 32 k-logit rows of
//     the chunk (128 KiB, stays in L2), an online softmax over the pixels (running row max,
//     earlier sums rescaled when it grows), kx accumulated as a register-blocked GEMM; then
//     ctx and M (tiny) written straight into M's packed layout.
//   Q sweep, one task per (b, tile of panels): the 128 q-logits of a panel (8 KiB, stays in
//     L1), softmax over each head's 32 rows lane-wise, then M @ q + b_out into y.
// Layouts: NCHW, or channels_last (NHWC) in and out, so a channels_last network needs no
// layout copy here: the panels are packed from either (a transpose for NHWC, C x NR floats
// per panel), and for NHWC y's panel is staged as (Co, NR) and written pixel by pixel.
// MACs: 512 C N per batch entry instead of 512 C N + 8192 N for the published order.
#include <ATen/ATen.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "simd.h"

namespace dsd {
namespace {

constexpr int64_t HEADS = 4, DH = 32, HID = HEADS * DH;   // published attention geometry
constexpr int64_t NR = 2 * VL;   // pixels per panel (two native vectors)
constexpr int64_t MR = 4;    // rows per micro-tile: divides 32 and 128 exactly

// acc[r][h] = sum_i a[i*MR + r] * p[i*NR + VL*h + 0..VL-1]: A packed (K, MR), panel (K, NR).
static inline void micro_4xNR(const float* a, const float* p, int64_t K, vf acc[MR][2]) {
  vf c00 = zerof(), c01 = zerof(), c10 = zerof(), c11 = zerof();
  vf c20 = zerof(), c21 = zerof(), c30 = zerof(), c31 = zerof();
  for (int64_t i = 0; i < K; ++i) {
    const vf p0 = loadf(p + i * NR), p1 = loadf(p + i * NR + VL);
    const float* w = a + i * MR;
    vf b = bcastf(w[0]); c00 = fmadd(b, p0, c00); c01 = fmadd(b, p1, c01);
    b = bcastf(w[1]);    c10 = fmadd(b, p0, c10); c11 = fmadd(b, p1, c11);
    b = bcastf(w[2]);    c20 = fmadd(b, p0, c20); c21 = fmadd(b, p1, c21);
    b = bcastf(w[3]);    c30 = fmadd(b, p0, c30); c31 = fmadd(b, p1, c31);
  }
  acc[0][0] = c00; acc[0][1] = c01; acc[1][0] = c10; acc[1][1] = c11;
  acc[2][0] = c20; acc[2][1] = c21; acc[3][0] = c30; acc[3][1] = c31;
}
static_assert(MR == 4 && NR == 2 * VL, "micro_4xNR is written out for a 4 x (2 VL) tile");

static inline vf vmax(vf a, vf b) { return a > b ? a : b; }

// Rows [r0, r0 + rows) of a row-major (R, K) matrix packed as rows/MR blocks of (K, MR).
static void pack_rows(const float* src, int64_t K, int64_t r0, int64_t rows, float* dst) {
  for (int64_t blk = 0; blk < rows / MR; ++blk)
    for (int64_t i = 0; i < K; ++i)
      for (int64_t r = 0; r < MR; ++r) dst[(blk * K + i) * MR + r] = src[(r0 + blk * MR + r) * K + i];
}

at::Tensor as_matrix(const at::Tensor& w, int64_t rows, int64_t cols, const char* name) {
  const bool ok = (w.dim() == 2 || (w.dim() == 4 && w.size(2) == 1 && w.size(3) == 1)) &&
                  w.size(0) == rows && w.size(1) == cols;
  TORCH_CHECK(ok, "dsd_fast::linear_attention: ", name, " must be (", rows, ", ", cols,
              ") or (", rows, ", ", cols, ", 1, 1), got ", w.sizes());
  return w.reshape({rows, cols}).contiguous();
}

}  // namespace

at::Tensor linear_attention_cpu(const at::Tensor& xn_in, const at::Tensor& w_qkv_in,
                                const at::Tensor& w_out_in, const at::Tensor& b_out_in) {
  for (const at::Tensor* t : {&xn_in, &w_qkv_in, &w_out_in, &b_out_in}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat,
                "dsd_fast::linear_attention: float32 CPU tensors expected, got ",
                t->scalar_type(), " on ", t->device());
  }
  TORCH_CHECK(xn_in.dim() == 4, "dsd_fast::linear_attention: xn must be (B, C, H, W), got ",
              xn_in.sizes());
  const int64_t B = xn_in.size(0), C = xn_in.size(1), H = xn_in.size(2), W = xn_in.size(3);
  const int64_t N = H * W;
  const at::Tensor wqkv = as_matrix(w_qkv_in, 3 * HID, C, "w_qkv");
  TORCH_CHECK(w_out_in.dim() >= 2, "dsd_fast::linear_attention: w_out must be (Co, 128), got ",
              w_out_in.sizes());
  const int64_t Co = w_out_in.size(0);
  const at::Tensor wout = as_matrix(w_out_in, Co, HID, "w_out");
  TORCH_CHECK(b_out_in.dim() == 1 && b_out_in.size(0) == Co,
              "dsd_fast::linear_attention: b_out must be (", Co, ",), got ", b_out_in.sizes());
  // channels_last stays channels_last (a layout copy each way would cost more than packing)
  const bool nhwc = !xn_in.is_contiguous() &&
                    xn_in.is_contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor xn = nhwc ? xn_in : xn_in.contiguous();
  const at::Tensor bout = b_out_in.contiguous();
  at::Tensor out = at::empty({B, Co, H, W}, xn.options().memory_format(
      nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  TORCH_CHECK(N > 0 && C > 0, "dsd_fast::linear_attention: empty input ", xn.sizes());

  const int64_t P = (N + NR - 1) / NR;                 // panels per batch entry
  const int64_t OB = (Co + MR - 1) / MR;               // output row blocks of M
  const float* wq = wqkv.data_ptr<float>();            // rows [0, 128): q; [128, 256): k
  const float* wv = wq + 2 * HID * C;                  // rows [256, 384): v
  const float* wo = wout.data_ptr<float>();
  const float* bo = bout.data_ptr<float>();
  const float* xp = xn.data_ptr<float>();
  float* yp = out.data_ptr<float>();

  // Packed weights: q and k rows as (K = C, 4) blocks.
  std::vector<float> wq_pack(static_cast<size_t>(HID * C)), wk_pack(static_cast<size_t>(HID * C));
  pack_rows(wq, C, 0, HID, wq_pack.data());
  pack_rows(wq, C, HID, HID, wk_pack.data());
  // xn as panels: xpan[b][p][c][NR], zero past the last pixel.
  std::vector<float> xpan(static_cast<size_t>(B * P * C * NR));
  at::parallel_for(0, B * P, 16, [&](int64_t begin, int64_t end) {
    for (int64_t bp = begin; bp < end; ++bp) {
      const int64_t b = bp / P, p = bp % P, p0 = p * NR, np = std::min(NR, N - p0);
      float* d = xpan.data() + bp * C * NR;
      if (nhwc) {          // pixel p0 + q's C channels are contiguous: transpose into the panel
        for (int64_t q = 0; q < NR; ++q) {
          const float* s = xp + (b * N + p0 + q) * C;
          if (q < np) for (int64_t c = 0; c < C; ++c) d[c * NR + q] = s[c];
          else for (int64_t c = 0; c < C; ++c) d[c * NR + q] = 0.f;
        }
        continue;
      }
      for (int64_t c = 0; c < C; ++c) {
        const float* s = xp + (b * C + c) * N + p0;
        if (np == NR) { storef(d + c * NR, loadf(s)); storef(d + c * NR + VL, loadf(s + VL)); }
        else for (int64_t q = 0; q < NR; ++q) d[c * NR + q] = q < np ? s[q] : 0.f;
      }
    }
  });

  // M per batch entry, packed for the Q sweep: (OB, K = 128, 4), zero rows past Co.
  std::vector<float> m_pack(static_cast<size_t>(B * OB * HID * MR), 0.f);
  const float scale = 1.0f / std::sqrt(static_cast<float>(DH));

  // ---- K sweep: one task per (b, head), in chunks of KC panels with an online softmax
  // (running row max; the sums and kx accumulated so far are rescaled when it grows), so
  // the head's logits never leave L2 whatever the plane size.
  constexpr int64_t KC = 1024 / NR;                     // panels per chunk: 128 KiB of logits
  const float neg_inf = -std::numeric_limits<float>::infinity();
  at::parallel_for(0, B * HEADS, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> kbuf(static_cast<size_t>(KC * DH * NR));   // [p][d][NR]
    std::vector<float> kxT(static_cast<size_t>(C * DH)), ctxT(static_cast<size_t>(DH * DH));
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / HEADS, h = bh % HEADS;
      const float* xb = xpan.data() + b * P * C * NR;
      const float* wkh = wk_pack.data() + h * DH * C;   // this head's 8 blocks of 4 rows
      float run_max[DH], run_sum[DH];
      for (int64_t d = 0; d < DH; ++d) { run_max[d] = neg_inf; run_sum[d] = 0.f; }
      std::fill(kxT.begin(), kxT.end(), 0.f);           // kxT[c][d], unnormalised
      for (int64_t q0 = 0; q0 < P; q0 += KC) {
        const int64_t q1 = std::min(P, q0 + KC);
        // logits of the chunk and their row maxima
        vf cmax[DH];
        for (int64_t d = 0; d < DH; ++d) cmax[d] = bcastf(neg_inf);
        for (int64_t p = q0; p < q1; ++p) {
          const int64_t np = std::min(NR, N - p * NR);
          float* kp = kbuf.data() + (p - q0) * DH * NR;
          for (int64_t blk = 0; blk < DH / MR; ++blk) {
            vf acc[MR][2];
            micro_4xNR(wkh + blk * C * MR, xb + p * C * NR, C, acc);
            for (int64_t r = 0; r < MR; ++r) {
              const int64_t d = blk * MR + r;
              storef(kp + d * NR, acc[r][0]);
              storef(kp + d * NR + VL, acc[r][1]);
            }
          }
          if (np < NR)   // pixels past the end do not take part in the softmax
            for (int64_t d = 0; d < DH; ++d)
              for (int64_t q = np; q < NR; ++q) kp[d * NR + q] = neg_inf;
          for (int64_t d = 0; d < DH; ++d)
            cmax[d] = vmax(cmax[d], vmax(loadf(kp + d * NR), loadf(kp + d * NR + VL)));
        }
        // new running max; rescale what was summed under the old one; exp in place
        for (int64_t d = 0; d < DH; ++d) {
          float m = cmax[d][0];
          for (int j = 1; j < VL; ++j) m = std::max(m, cmax[d][j]);
          const float m_new = std::max(run_max[d], m);
          if (run_max[d] != neg_inf && m_new > run_max[d]) {
            const float f = std::exp(run_max[d] - m_new);
            run_sum[d] *= f;
            for (int64_t c = 0; c < C; ++c) kxT[c * DH + d] *= f;
          }
          run_max[d] = m_new;
          const vf mv = bcastf(m_new);
          vf sv = zerof();
          for (int64_t p = q0; p < q1; ++p) {
            float* kp = kbuf.data() + (p - q0) * DH * NR + d * NR;
            for (int64_t hf = 0; hf < NR; hf += VL) {
              const vf k = loadf(kp + hf);
              vf e = exp_lanes(k - mv);
              e = k == bcastf(neg_inf) ? zerof() : e;
              storef(kp + hf, e);
              sv += e;
            }
          }
          run_sum[d] += hsumf(sv);
        }
        // kxT[c][d] += sum_n e[d][n] xn[c][n] over the chunk: 4 rows x 2 channels in registers
        for (int64_t d0 = 0; d0 < DH; d0 += 4) {
          for (int64_t c0 = 0; c0 < C; c0 += 2) {
            const bool two = c0 + 1 < C;
            vf a00 = zerof(), a01 = zerof(), a10 = zerof(), a11 = zerof();
            vf a20 = zerof(), a21 = zerof(), a30 = zerof(), a31 = zerof();
            for (int64_t p = q0; p < q1; ++p) {
              const float* kp = kbuf.data() + (p - q0) * DH * NR + d0 * NR;
              const float* x0 = xb + (p * C + c0) * NR;
              const float* x1 = two ? x0 + NR : x0;
              for (int64_t hf = 0; hf < NR; hf += VL) {
                const vf u0 = loadf(x0 + hf), u1 = loadf(x1 + hf);
                vf e = loadf(kp + hf);          a00 = fmadd(e, u0, a00); a01 = fmadd(e, u1, a01);
                e = loadf(kp + NR + hf);        a10 = fmadd(e, u0, a10); a11 = fmadd(e, u1, a11);
                e = loadf(kp + 2 * NR + hf);    a20 = fmadd(e, u0, a20); a21 = fmadd(e, u1, a21);
                e = loadf(kp + 3 * NR + hf);    a30 = fmadd(e, u0, a30); a31 = fmadd(e, u1, a31);
              }
            }
            const vf a[4][2] = {{a00, a01}, {a10, a11}, {a20, a21}, {a30, a31}};
            for (int r = 0; r < 4; ++r) {
              kxT[c0 * DH + d0 + r] += hsumf(a[r][0]);
              if (two) kxT[(c0 + 1) * DH + d0 + r] += hsumf(a[r][1]);
            }
          }
        }
      }
      for (int64_t d = 0; d < DH; ++d) {
        const float inv = 1.0f / run_sum[d];
        for (int64_t c = 0; c < C; ++c) kxT[c * DH + d] *= inv;
      }
      // Outer-product form (vector over d, no horizontal sums):
      // ctxT[e][d] = sum_c w_v[h e][c] kxT[c][d];  Mrow_o[d] = scale sum_e w_out[o][h e] ctxT[e][d]
      for (int64_t e = 0; e < DH; ++e) {
        const float* vr = wv + (h * DH + e) * C;
        v8 a0 = zero8(), a1 = zero8(), a2 = zero8(), a3 = zero8();
        for (int64_t c = 0; c < C; ++c) {
          const v8 wb = bcast(vr[c]);
          const float* kr = kxT.data() + c * DH;
          a0 = fmadd(wb, loadu(kr), a0); a1 = fmadd(wb, loadu(kr + 8), a1);
          a2 = fmadd(wb, loadu(kr + 16), a2); a3 = fmadd(wb, loadu(kr + 24), a3);
        }
        float* cr = ctxT.data() + e * DH;
        storeu(cr, a0); storeu(cr + 8, a1); storeu(cr + 16, a2); storeu(cr + 24, a3);
      }
      float* mb = m_pack.data() + b * OB * HID * MR;
      for (int64_t o = 0; o < Co; ++o) {
        const float* wor = wo + o * HID + h * DH;
        v8 a0 = zero8(), a1 = zero8(), a2 = zero8(), a3 = zero8();
        for (int64_t e = 0; e < DH; ++e) {
          const v8 wb = bcast(wor[e] * scale);
          const float* cr = ctxT.data() + e * DH;
          a0 = fmadd(wb, loadu(cr), a0); a1 = fmadd(wb, loadu(cr + 8), a1);
          a2 = fmadd(wb, loadu(cr + 16), a2); a3 = fmadd(wb, loadu(cr + 24), a3);
        }
        alignas(32) float row[DH];
        storeu(row, a0); storeu(row + 8, a1); storeu(row + 16, a2); storeu(row + 24, a3);
        // into M's packed layout (OB, K = 128, 4)
        for (int64_t d = 0; d < DH; ++d) mb[((o / MR) * HID + h * DH + d) * MR + (o % MR)] = row[d];
      }
    }
  });

  // ---- Q sweep: tasks of a few panels of one batch entry.
  // 8 panels per task on big planes; one on small ones, so that small planes still make
  // enough tasks to keep every thread busy
  const int64_t TP = P >= 64 ? 8 : 1;
  const int64_t tiles = (P + TP - 1) / TP;
  at::parallel_for(0, B * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qbuf(static_cast<size_t>(HID * NR));    // (K = 128, NR): a panel
    std::vector<float> ybuf(nhwc ? static_cast<size_t>(Co * NR) : 0);   // NHWC: y's panel
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / tiles, t = bt % tiles;
      const float* mb = m_pack.data() + b * OB * HID * MR;
      for (int64_t p = t * TP; p < std::min(P, (t + 1) * TP); ++p) {
        const int64_t p0 = p * NR, np = std::min(NR, N - p0);
        const float* xpnl = xpan.data() + (b * P + p) * C * NR;
        for (int64_t blk = 0; blk < HID / MR; ++blk) {
          vf acc[MR][2];
          micro_4xNR(wq_pack.data() + blk * C * MR, xpnl, C, acc);
          for (int64_t r = 0; r < MR; ++r) {
            storef(qbuf.data() + (blk * MR + r) * NR, acc[r][0]);
            storef(qbuf.data() + (blk * MR + r) * NR + VL, acc[r][1]);
          }
        }
        // softmax over each head's 32 rows, lane-wise (one pixel per lane)
        for (int64_t h = 0; h < HEADS; ++h)
          for (int64_t hf = 0; hf < NR; hf += VL) {
            float* q = qbuf.data() + h * DH * NR + hf;
            vf m = loadf(q);
            for (int64_t d = 1; d < DH; ++d) m = vmax(m, loadf(q + d * NR));
            vf s = zerof();
            for (int64_t d = 0; d < DH; ++d) {
              const vf e = exp_lanes(loadf(q + d * NR) - m);
              storef(q + d * NR, e);
              s += e;
            }
            const vf inv = bcastf(1.0f) / s;
            for (int64_t d = 0; d < DH; ++d) storef(q + d * NR, loadf(q + d * NR) * inv);
          }
        // y = M @ q + b_out
        for (int64_t ob = 0; ob < OB; ++ob) {
          vf acc[MR][2];
          micro_4xNR(mb + ob * HID * MR, qbuf.data(), HID, acc);
          for (int64_t r = 0; r < MR && ob * MR + r < Co; ++r) {
            const int64_t o = ob * MR + r;
            const vf bv = bcastf(bo[o]);
            if (nhwc) {
              storef(ybuf.data() + o * NR, acc[r][0] + bv);
              storef(ybuf.data() + o * NR + VL, acc[r][1] + bv);
              continue;
            }
            float* ys = yp + (b * Co + o) * N + p0;
            if (np == NR) {
              storef(ys, acc[r][0] + bv);
              storef(ys + VL, acc[r][1] + bv);
            } else {
              alignas(64) float tmp[NR];
              storef(tmp, acc[r][0] + bv);
              storef(tmp + VL, acc[r][1] + bv);
              for (int64_t q = 0; q < np; ++q) ys[q] = tmp[q];
            }
          }
        }
        if (nhwc)          // the panel's pixels, each with its Co channels contiguous
          for (int64_t q = 0; q < np; ++q) {
            float* ys = yp + (b * N + p0 + q) * Co;
            for (int64_t o = 0; o < Co; ++o) ys[o] = ybuf[o * NR + q];
          }
      }
    }
  });
  return out;
}

}  // namespace dsd
