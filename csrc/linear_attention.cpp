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
// MACs: 512 C N per batch entry instead of 512 C N + 8192 N for the published order.
//
// The input is read pixel-major (channels_last: each pixel's C channels contiguous; an NCHW
// or odd-C input is first copied into that form, channels padded to a whole vector).
//
// K sweep, one task per (b, head, segment of pixels), in chunks of CH pixels, everything
//   lane-wise with the head's 32 d along the lanes: the chunk's k logits (pixels x 32, a
//   few KiB, L1), an online softmax over the pixels (running max per d; what was summed
//   under an older max is rescaled when it grows), and kx[d, c] += e[n, d] xn[n, c] as an
//   outer-product tile (rows d x channel vectors, e broadcast, xn loaded as it lies), so
//   the accumulators stay vectors for the whole segment and never need a horizontal sum.
//   Segments (more tasks than (b, head) pairs on small batches) are merged per (b, head)
//   by their maxima; their number depends on the shape only, so results do not depend on
//   the thread count. Then ctx and M (tiny) are written into M's packed layout.
// Q sweep, one task per (b, tile of NR-pixel panels): the panel transposed to (C, NR), its
//   128 q-logits (stays in L1) with the pixels along the lanes, softmax over each head's 32
//   rows lane-wise, then M @ q + b_out into y (NCHW rows directly; NHWC staged as (Co, NR)
//   and written pixel by pixel).
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
constexpr int64_t NR = 2 * VL;                  // Q sweep: pixels per panel (two vectors)
constexpr int64_t MR = VL == 16 ? 8 : 4;        // Q sweep: rows per tile (2 MR accumulators)
constexpr int64_t DV = DH / VL;                 // K sweep: vectors per head row of logits
constexpr int64_t ACC = VL == 16 ? 16 : 8;      // K sweep: accumulators a tile aims at
constexpr int64_t PR = ACC / DV >= 1 ? ACC / DV : 1;   // K sweep: pixels per logit tile
static_assert(DH % VL == 0 && DH % ACC == 0, "the head's 32 rows split into whole tiles");

static inline vf vmax(vf a, vf b) { return a > b ? a : b; }

// Q sweep: acc[r][h] = sum_i a[i*R + r] * p[i*NR + VL*h + 0..VL-1]; A packed (K, R), panel (K, NR).
// Local accumulators, copied out at the end: accumulating into `acc` itself made the
// compiler store all of them to the stack on every step (measured: half the loop's time).
template <int R>
static inline void micro_rows(const float* a, const float* p, int64_t K, vf acc[][2]) {
  vf c[R][2];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) c[r][0] = c[r][1] = zerof();
  for (int64_t i = 0; i < K; ++i) {
    const vf p0 = loadf(p + i * NR), p1 = loadf(p + i * NR + VL);
    const float* w = a + i * R;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const vf b = bcastf(w[r]);
      c[r][0] = fmadd(b, p0, c[r][0]);
      c[r][1] = fmadd(b, p1, c[r][1]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) { acc[r][0] = c[r][0]; acc[r][1] = c[r][1]; }
}

// K sweep: logits L[r][0..32) = sum_c x[r * xs + c] wkt[c][0..32) for P pixels.
template <int P>
static inline void k_logits(const float* x, int64_t xs, const float* wkt, int64_t C, float* L) {
  vf acc[P][DV];
#pragma GCC unroll 8
  for (int r = 0; r < P; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < DV; ++j) acc[r][j] = zerof();
  for (int64_t c = 0; c < C; ++c) {
    vf w[DV];
#pragma GCC unroll 8
    for (int j = 0; j < DV; ++j) w[j] = loadf(wkt + c * DH + j * VL);
#pragma GCC unroll 8
    for (int r = 0; r < P; ++r) {
      const vf b = bcastf(x[r * xs + c]);
#pragma GCC unroll 8
      for (int j = 0; j < DV; ++j) acc[r][j] = fmadd(b, w[j], acc[r][j]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < P; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < DV; ++j) storef(L + r * DH + j * VL, acc[r][j]);
}

// K sweep: kx[d0 + r][c0 + VL j + ..] += sum_n e[n][d0 + r] x[n][c0 + VL j + ..] over cn pixels.
template <int DR, int CB>
static inline void kx_tile(const float* e, int64_t cn, const float* x, int64_t xs, int64_t d0,
                           int64_t c0, float* kx, int64_t cs) {
  vf acc[DR][CB];
#pragma GCC unroll 16
  for (int r = 0; r < DR; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < CB; ++j) acc[r][j] = loadf(kx + (d0 + r) * cs + c0 + j * VL);
  for (int64_t n = 0; n < cn; ++n) {
    vf xv[CB];
#pragma GCC unroll 4
    for (int j = 0; j < CB; ++j) xv[j] = loadf(x + n * xs + c0 + j * VL);
    const float* en = e + n * DH + d0;
#pragma GCC unroll 16
    for (int r = 0; r < DR; ++r) {
      const vf b = bcastf(en[r]);
#pragma GCC unroll 4
      for (int j = 0; j < CB; ++j) acc[r][j] = fmadd(b, xv[j], acc[r][j]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < DR; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < CB; ++j) storef(kx + (d0 + r) * cs + c0 + j * VL, acc[r][j]);
}

// kx (DH, cs) += e^T x over a chunk: channel vectors in groups of 4, 2, 1, rows to fill ACC.
static void kx_update(const float* e, int64_t cn, const float* x, int64_t xs, float* kx,
                      int64_t cs) {
  int64_t c0 = 0;
  for (; c0 + 4 * VL <= cs; c0 += 4 * VL)
    for (int64_t d0 = 0; d0 < DH; d0 += ACC / 4) kx_tile<ACC / 4, 4>(e, cn, x, xs, d0, c0, kx, cs);
  for (; c0 + 2 * VL <= cs; c0 += 2 * VL)
    for (int64_t d0 = 0; d0 < DH; d0 += ACC / 2) kx_tile<ACC / 2, 2>(e, cn, x, xs, d0, c0, kx, cs);
  for (; c0 + VL <= cs; c0 += VL)
    for (int64_t d0 = 0; d0 < DH; d0 += ACC) kx_tile<ACC, 1>(e, cn, x, xs, d0, c0, kx, cs);
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
  // channels_last stays channels_last (y in the input's layout)
  const bool nhwc = !xn_in.is_contiguous() &&
                    xn_in.is_contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor out = at::empty({B, Co, H, W}, xn_in.options().memory_format(
      nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  TORCH_CHECK(N > 0 && C > 0, "dsd_fast::linear_attention: empty input ", xn_in.sizes());

  // Pixel-major input X (B, N, cs), cs = C rounded up to a whole vector (zero padded): the
  // channels_last tensor itself when C is already whole, else one copy.
  const int64_t cs = (C + VL - 1) / VL * VL;
  at::Tensor xpm;
  if (nhwc && cs == C) {
    xpm = xn_in;
  } else {
    xpm = at::zeros({B, N, cs}, xn_in.options());
    xpm.narrow(2, 0, C).copy_(xn_in.reshape({B, C, N}).transpose(1, 2));
  }
  const float* X = xpm.data_ptr<float>();
  const at::Tensor bout = b_out_in.contiguous();
  const int64_t OB = (Co + MR - 1) / MR;               // output row blocks of M
  const float* wq = wqkv.data_ptr<float>();            // rows [0, 128): q; [128, 256): k
  const float* wk = wq + HID * C;
  const float* wv = wq + 2 * HID * C;                  // rows [256, 384): v
  const float* wo = wout.data_ptr<float>();
  const float* bo = bout.data_ptr<float>();
  float* yp = out.data_ptr<float>();

  // q rows packed as (K = C, MR) blocks for the Q sweep; k transposed per head, (C, 32).
  std::vector<float> wq_pack(static_cast<size_t>(HID * C)), wkt(static_cast<size_t>(HID * C));
  for (int64_t blk = 0; blk < HID / MR; ++blk)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t r = 0; r < MR; ++r) wq_pack[(blk * C + c) * MR + r] = wq[(blk * MR + r) * C + c];
  for (int64_t h = 0; h < HEADS; ++h)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t d = 0; d < DH; ++d) wkt[(h * C + c) * DH + d] = wk[(h * DH + d) * C + c];

  // ---- K sweep. Chunks of CH pixels: their xn rows (<= 16 KiB) and logits stay in L1.
  const int64_t CH = std::max<int64_t>(PR, std::min<int64_t>(64, 4096 / cs) / PR * PR);
  // Segments: enough tasks for small batches, each at least 1024 pixels; shape-only.
  const int64_t S = std::max<int64_t>(1, std::min<int64_t>(N / 1024, (32 + B * HEADS - 1) / (B * HEADS)));
  const int64_t seg = (N + S - 1) / S;
  std::vector<float> part_max(static_cast<size_t>(B * HEADS * S * DH));
  std::vector<float> part_sum(static_cast<size_t>(B * HEADS * S * DH));
  std::vector<float> part_kx(static_cast<size_t>(B * HEADS * S * DH * cs));
  const float neg_inf = -std::numeric_limits<float>::infinity();
  at::parallel_for(0, B * HEADS * S, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> ebuf(static_cast<size_t>(CH * DH));
    alignas(64) float fac[DH];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (HEADS * S), h = (task / S) % HEADS, s = task % S;
      const int64_t n_lo = s * seg, n_hi = std::min(N, n_lo + seg);
      const float* wkh = wkt.data() + h * C * DH;
      float* run_max = part_max.data() + task * DH;
      float* run_sum = part_sum.data() + task * DH;
      float* kx = part_kx.data() + task * DH * cs;         // kx[d][c], unnormalised
      std::fill(run_max, run_max + DH, neg_inf);
      std::fill(run_sum, run_sum + DH, 0.f);
      std::fill(kx, kx + DH * cs, 0.f);
      for (int64_t n0 = n_lo; n0 < n_hi; n0 += CH) {
        const int64_t cn = std::min(CH, n_hi - n0);
        const float* xc = X + (b * N + n0) * cs;
        float* e = ebuf.data();
        int64_t r = 0;
        for (; r + PR <= cn; r += PR) k_logits<PR>(xc + r * cs, cs, wkh, C, e + r * DH);
        for (; r < cn; ++r) k_logits<1>(xc + r * cs, cs, wkh, C, e + r * DH);
        bool grew = false;
        for (int64_t j = 0; j < DV; ++j) {
          vf cm = loadf(e + j * VL);
          for (int64_t n = 1; n < cn; ++n) cm = vmax(cm, loadf(e + n * DH + j * VL));
          const vf old = loadf(run_max + j * VL), m = vmax(old, cm);
          storef(run_max + j * VL, m);
          const vf f = exp_lanes(old - m);                // 0 on the first chunk (old = -inf)
          storef(fac + j * VL, f);
          vf sum = zerof();
          for (int64_t n = 0; n < cn; ++n) {
            const vf ev = exp_lanes(loadf(e + n * DH + j * VL) - m);
            storef(e + n * DH + j * VL, ev);
            sum += ev;
          }
          storef(run_sum + j * VL, loadf(run_sum + j * VL) * f + sum);
          for (int k = 0; k < VL; ++k) grew |= f[k] != 1.0f;
        }
        if (grew && n0 != n_lo)      // sums taken under an older max: rescale them
          for (int64_t d = 0; d < DH; ++d)
            if (fac[d] != 1.0f) {
              const vf f = bcastf(fac[d]);
              for (int64_t c = 0; c < cs; c += VL) storef(kx + d * cs + c, loadf(kx + d * cs + c) * f);
            }
        kx_update(e, cn, xc, cs, kx, cs);
      }
    }
  });

  // ---- Merge the segments per (b, head); ctx and M into M's packed layout (OB, 128, MR),
  // zero rows past Co.
  std::vector<float> m_pack(static_cast<size_t>(B * OB * HID * MR), 0.f);
  const float scale = 1.0f / std::sqrt(static_cast<float>(DH));
  at::parallel_for(0, B * HEADS, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> kxT(static_cast<size_t>(C * DH)), ctxT(static_cast<size_t>(DH * DH));
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / HEADS, h = bh % HEADS;
      const int64_t t0 = bh * S;
      for (int64_t d = 0; d < DH; ++d) {
        float m = neg_inf;
        for (int64_t s = 0; s < S; ++s) m = std::max(m, part_max[(t0 + s) * DH + d]);
        float sum = 0.f;
        for (int64_t c = 0; c < C; ++c) kxT[c * DH + d] = 0.f;
        for (int64_t s = 0; s < S; ++s) {
          const float ms = part_max[(t0 + s) * DH + d];
          if (ms == neg_inf) continue;                 // an empty segment
          const float w = S == 1 ? 1.0f : std::exp(ms - m);
          sum += w * part_sum[(t0 + s) * DH + d];
          const float* kxs = part_kx.data() + ((t0 + s) * DH + d) * cs;
          for (int64_t c = 0; c < C; ++c) kxT[c * DH + d] += w * kxs[c];
        }
        const float inv = 1.0f / sum;
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
        for (int64_t d = 0; d < DH; ++d) mb[((o / MR) * HID + h * DH + d) * MR + (o % MR)] = row[d];
      }
    }
  });

  // ---- Q sweep: tasks of a few panels of one batch entry.
  // 8 panels per task on big planes; one on small ones, so that small planes still make
  // enough tasks to keep every thread busy
  const int64_t P = (N + NR - 1) / NR;                 // panels per batch entry
  const int64_t TP = P >= 64 ? 8 : 1;
  const int64_t tiles = (P + TP - 1) / TP;
  at::parallel_for(0, B * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> xpnl(static_cast<size_t>(C * NR));     // (C, NR): a panel of xn
    std::vector<float> qbuf(static_cast<size_t>(HID * NR));   // (K = 128, NR)
    std::vector<float> ybuf(nhwc ? static_cast<size_t>(Co * NR) : 0);   // NHWC: y's panel
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / tiles, t = bt % tiles;
      const float* mb = m_pack.data() + b * OB * HID * MR;
      for (int64_t p = t * TP; p < std::min(P, (t + 1) * TP); ++p) {
        const int64_t p0 = p * NR, np = std::min(NR, N - p0);
        for (int64_t q = 0; q < NR; ++q) {   // transpose the panel's pixels; zero past the end
          const float* s = X + (b * N + p0 + q) * cs;
          if (q < np) for (int64_t c = 0; c < C; ++c) xpnl[c * NR + q] = s[c];
          else for (int64_t c = 0; c < C; ++c) xpnl[c * NR + q] = 0.f;
        }
        for (int64_t blk = 0; blk < HID / MR; ++blk) {
          vf acc[MR][2];
          micro_rows<MR>(wq_pack.data() + blk * C * MR, xpnl.data(), C, acc);
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
          micro_rows<MR>(mb + ob * HID * MR, qbuf.data(), HID, acc);
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
