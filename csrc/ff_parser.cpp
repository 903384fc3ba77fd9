// FF-Parser on the CPU: y = irfft2(rfft2(x, ortho) * w, s=(H, W), ortho), one pass per plane.
//
//   x      (B, C, H, W)          float32, each (b, c) plane contiguous (H*W floats)
//   weight (C, H, W//2+1, 2)     float32, (real, imag) of the complex gate
//   y      (B, C, H, W)          float32, may be a channel slice of a bigger buffer
//
// Layout: eight planes are processed together, one per SIMD lane (lane j = channel 8g + j of
// one batch entry). Every FFT step is then plain v8 arithmetic with no shuffles, for any plane
// size; the only shuffles are the 8x8 transposes that load and store rows.
//
// Per group of 8 planes, with a spectrum S of H rows (split re/im arrays of v8):
//   1. rows:    real FFT of each row (length W) -> S[m, 0..W/2]           (torch: rfft, last dim)
//   2. columns: complex FFT of each column (length H), forward, times the packed gate (1/(H W),
//               the two ortho factors, folded in), inverse; in blocks of columns that stay in
//               L1. Forward is decimation in frequency (leaves rows bit-reversed), inverse
//               decimation in time (takes them bit-reversed), so no reordering pass exists;
//               the gate is packed in that row order. The last forward pass, the gate and the
//               first inverse pass are one pass of 8- (or 4-) point codelets.
//   3. rows:    c2r of each row (length W). torch.fft.irfft2 runs ifft over H first and then
//               c2r over W, which drops the imaginary parts of the DC column and (even W) the
//               Nyquist column *after* the column inverse; step 3 does the same.
//
// Power-of-two W (the fast row path): each row is a half-length complex FFT of its even/odd
// samples z = x[2j] + i x[2j+1] plus a split step, which leaves W/2 complex columns (in
// bit-reversed column order, the gate packed to match) plus two real ones (DC and Nyquist).
// Those two share one complex column, DC + i * Nyquist, so step 2 transforms exactly W/2
// columns; the gate is applied to that packed column by separating the two real columns'
// spectra (Hermitian parts) around the multiply.
// Power-of-two H: radix-4 passes plus one 8- or 4-point codelet pass. Any other size uses a
// direct DFT with cached tables (O(n^2) per transform: correct for every H, W >= 1, slower).
//
// Why FFT and not DFT-as-matmul: the matmul form costs ~4 N^3 multiply-adds per N x N plane
// against ~N^2 log N for an FFT. Measured on this project's CPU (1 thread, B=5, C=64), a
// matmul prototype on MKL's GEMMs took 1.9x torch.fft's time at 64 x 64 and 5x at 128 x 128
// (its GEMMs alone), while this FFT beats torch.fft at every size (bench/bench_ff_parser.py).
// At the small sizes the 8- and 4-point codelets below are the dense DFT, written out.
#include <ATen/ATen.h>

#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "fft_lanes.h"
#include "simd.h"

namespace dsd {
namespace {

using namespace fft;   // the batched FFT of fft_lanes.h has no other client

// Everything that depends only on the plane size (H, W); built once per size and cached.
struct Plan {
  int64_t H, W, Wh;          // Wh = W/2 + 1: weight columns
  bool row_fast;             // W a power of two >= 2 (DC and Nyquist packed in column 0)
  int64_t ncols;             // spectrum columns: W/2 if row_fast, else Wh
  Transform1D col;           // length H
  Transform1D row_half;      // length W/2 (row_fast only)
  Transform1D row_full;      // length W: split-step twiddles / direct-DFT table
  // Spectrum column that holds frequency l (l = 0..W/2): bit-reversed for the fast rows, whose
  // Nyquist bin W/2 lives in column 0's imaginary part (its gate in weight column W/2).
  int64_t col_pos(int64_t l) const {
    return (row_fast && l < W / 2) ? row_half.bitrev[l] : l;
  }
  int64_t rs;                // spectrum row stride in v8: ncols, padded by one cache line
                             // so a column walk does not hit one L1 set per power-of-two
  int64_t col_block;         // columns per L1-resident block in step 2
  int64_t row_block;         // rows per L1-resident block in steps 1 and 3

  Plan(int64_t H_, int64_t W_)
      : H(H_), W(W_), Wh(W_ / 2 + 1), row_fast(is_pow2(W_) && W_ >= 2),
        ncols(row_fast ? W_ / 2 : W_ / 2 + 1), col(H_), row_half(row_fast ? W_ / 2 : 1),
        row_full(W_) {
    rs = ncols >= 8 ? ncols + 2 : ncols;
    // A block of H rows x L columns of complex v8 is H * L * 64 bytes: at most 32 KiB, so
    // forward FFT, gate and inverse FFT of the block run out of L1. Equal-sized blocks.
    const int64_t max_l = std::max<int64_t>(1, 512 / H);
    const int64_t nblocks = (ncols + max_l - 1) / max_l;
    col_block = (ncols + nblocks - 1) / nblocks;
    row_block = std::max<int64_t>(1, std::min<int64_t>(H, 512 / ncols));
  }
};

const Plan& get_plan(int64_t H, int64_t W) {
  static std::mutex mu;
  static std::map<std::pair<int64_t, int64_t>, std::unique_ptr<Plan>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[{H, W}];
  if (!slot) slot = std::make_unique<Plan>(H, W);
  return *slot;
}

// ---------------------------------------------------------------------------------------
// Step 1 and 3: a block of R rows, real <-> half spectrum. re/im point at the block's first
// row; rows are rs apart.

// Forward: X[l] = sum_n x[n] e^{-2 pi i l n / W}, l = 0..W/2 (unnormalised). The fast path
// stores X[0] in re[0] and X[W/2] in im[0] (both are real); the direct path stores l = 0..W/2
// in order. src[j] is row 0 of lane j's plane.
void rows_forward(const Plan& p, const float* const src[8], int64_t R, v8* re, v8* im,
                  v8* row) {
  const int64_t W = p.W, rs = p.rs;
  if (p.row_fast) {
    // z[j] = x[2j] + i x[2j+1]; the DIF FFT leaves Z[l] at position rev(l), and the whole
    // spectrum row stays in that column order (the gate is packed to match).
    const int64_t M = W / 2;
    const int32_t* rev = p.row_half.bitrev.data();
    for (int64_t m = 0; m < R; ++m) {
      const float* srow[8];
      for (int j = 0; j < 8; ++j) srow[j] = src[j] + m * W;
      v8 *rr = re + m * rs, *ri = im + m * rs;
      load_row(srow, W, [&](int64_t n, v8 v) { ((n & 1) ? ri : rr)[n >> 1] = v; });
    }
    fft_dif<false, false>(re, im, p.row_half, 1, rs, R);
    // Split step: E = (Z[l] + conj Z[M-l]) / 2 (even samples' spectrum),
    //             O = (Z[l] - conj Z[M-l]) / 2i (odd samples'), X[l] = E + e^{-2 pi i l/W} O,
    //             X[M-l] = conj(E - e^{-2 pi i l/W} O).
    const v8 half = bcast(0.5f);
    for (int64_t m = 0; m < R * rs; m += rs) {
      const v8 z0r = re[m], z0i = im[m];
      re[m] = z0r + z0i;   // X[0]
      im[m] = z0r - z0i;   // X[M]
    }
    for (int64_t l = 1; 2 * l <= M; ++l) {
      const int64_t pl = rev[l], pk = rev[M - l];
      const v8 tr = bcast(p.row_full.tw_re[l]), ti = bcast(p.row_full.tw_im[l]);
      for (int64_t m = 0; m < R * rs; m += rs) {
        const v8 lr = re[m + pl], li = im[m + pl], kr = re[m + pk], ki = im[m + pk];
        const v8 er = half * (lr + kr), ei = half * (li - ki);
        const v8 orr = half * (li + ki), oi = half * (kr - lr);   // O = -i (Z[l] - conj Z[k]) / 2
        v8 tor, toi;
        cmul(orr, oi, tr, ti, tor, toi);
        re[m + pk] = er - tor; im[m + pk] = toi - ei;   // written first: when l == M-l, X[l] wins
        re[m + pl] = er + tor; im[m + pl] = ei + toi;
      }
    }
    return;
  }
  // Direct real DFT (any W), row by row.
  const Transform1D& t = p.row_full;
  for (int64_t m = 0; m < R; ++m) {
    const float* srow[8];
    for (int j = 0; j < 8; ++j) srow[j] = src[j] + m * W;
    load_row(srow, W, [&](int64_t n, v8 v) { row[n] = v; });
    for (int64_t l = 0; l < p.Wh; ++l) {
      v8 sr = zero8(), si = zero8();
      for (int64_t n = 0; n < W; ++n) {
        const int64_t idx = (l * n) % W;
        sr = fmadd(row[n], bcast(t.tw_re[idx]), sr);
        si = fmadd(row[n], bcast(t.tw_im[idx]), si);
      }
      re[m * rs + l] = sr; im[m * rs + l] = si;
    }
  }
}

// Inverse (c2r, unnormalised): x[n] = sum over the Hermitian-extended spectrum, with the
// imaginary parts of X[0] and (even W) X[W/2] ignored, as torch.fft.irfft does. The fast
// path reads the real DC / Nyquist values from re[0] / im[0]. re/im are used as scratch.
// dst[j] is row 0 of lane j's output plane.
void rows_inverse(const Plan& p, v8* re, v8* im, int64_t R, v8* row, float* const dst[8],
                  int nvalid) {
  const int64_t W = p.W, rs = p.rs;
  if (p.row_fast) {
    const int64_t M = W / 2;
    const int32_t* rev = p.row_half.bitrev.data();
    // Build Z[l] = Fe[l] + i Fo[l] (at position rev(l)): Fe = X[l] + conj X[M-l] (even
    // samples' spectrum), Fo = (X[l] - conj X[M-l]) e^{+2 pi i l/W} (odd samples'); the DIT
    // inverse FFT then leaves z[j] = x[2j] + i x[2j+1] in natural order.
    for (int64_t m = 0; m < R * rs; m += rs) {
      const v8 x0 = re[m], xm = im[m];
      re[m] = x0 + xm; im[m] = x0 - xm;
    }
    for (int64_t l = 1; 2 * l <= M; ++l) {
      const int64_t pl = rev[l], pk = rev[M - l];
      const v8 sr = bcast(p.row_full.tw_re[l]), si = bcast(-p.row_full.tw_im[l]);
      for (int64_t m = 0; m < R * rs; m += rs) {
        const v8 lr = re[m + pl], li = im[m + pl], kr = re[m + pk], ki = im[m + pk];
        const v8 fer = lr + kr, fei = li - ki;
        v8 forr, foi;
        cmul(lr - kr, li + ki, sr, si, forr, foi);
        re[m + pk] = fer + foi; im[m + pk] = forr - fei;   // conj(Fe) + i conj(Fo)
        re[m + pl] = fer - foi; im[m + pl] = fei + forr;   // Fe + i Fo
      }
    }
    fft_dit<false, true>(re, im, p.row_half, 1, rs, R);
    for (int64_t m = 0; m < R; ++m) {
      float* drow[8];
      for (int j = 0; j < 8; ++j) drow[j] = dst[j] + m * W;
      const v8 *rr = re + m * rs, *ri = im + m * rs;
      store_row(drow, nvalid, W, [&](int64_t n) { return ((n & 1) ? ri : rr)[n >> 1]; });
    }
    return;
  }
  // Direct c2r (any W): x[n] = sum_l a_l (Re X_l cos - Im X_l sin)(2 pi l n / W), with
  // a_0 = 1, a_{W/2} = 1 for even W, a_l = 2 otherwise. The sine table is exactly 0 at the
  // DC and Nyquist angles, which drops their imaginary parts.
  const Transform1D& t = p.row_full;
  for (int64_t m = 0; m < R; ++m) {
    const v8 *rr = re + m * rs, *ri = im + m * rs;
    for (int64_t n = 0; n < W; ++n) {
      v8 s = zero8();
      for (int64_t l = 0; l < p.Wh; ++l) {
        const int64_t idx = (l * n) % W;
        const v8 a = bcast((l == 0 || 2 * l == W) ? 1.f : 2.f);
        // e^{+i theta} = tw_re - i tw_im; Re(X e^{+i theta}) = Xr tw_re + Xi tw_im
        s = fmadd(a * rr[l], bcast(t.tw_re[idx]), fmadd(a * ri[l], bcast(t.tw_im[idx]), s));
      }
      row[n] = s;
    }
    float* drow[8];
    for (int j = 0; j < 8; ++j) drow[j] = dst[j] + m * W;
    store_row(drow, nvalid, W, [&](int64_t n) { return row[n]; });
  }
}

// Gate of the packed column 0 (fast rows): after the forward column transform it holds
// P = F(dc) + i F(nyq) for the two real columns dc, nyq, in position order. Per frequency
// pair (k, H-k): F(dc)[k] = (P[k] + conj P[H-k]) / 2, F(nyq)[k] = (P[k] - conj P[H-k]) / 2i;
// gate each by its weight column (0 and W/2); step 3 keeps only Re(ifft(.)) of each, which is
// ifft of its Hermitian part (Y[k] + conj Y[H-k]) / 2, so pack those two Hermitian parts back
// as Q = herm(Y_dc) + i herm(Y_nyq): ifft(Q) = Re ifft(Y_dc) + i Re ifft(Y_nyq).
void gate_packed_column(const Plan& p, v8* re, v8* im, const v8* wre, const v8* wim) {
  const int64_t H = p.H, rs = p.rs, Wh = p.Wh, M = p.W / 2;
  const v8 half = bcast(0.5f);
  for (int64_t k = 0; 2 * k <= H; ++k) {
    const int64_t kk = (H - k) % H;   // partner frequency; kk == k for k = 0 and k = H/2
    const int64_t a = p.col.pos(k), b = p.col.pos(kk);
    const v8 pr = re[a * rs], pi = im[a * rs], qr = re[b * rs], qi = im[b * rs];
    // Spectra of the two real columns at k (at H-k they are the conjugates).
    const v8 c0r = half * (pr + qr), c0i = half * (pi - qi);
    const v8 cnr = half * (pi + qi), cni = half * (qr - pr);
    // Gate: Y(k) = C(k) w(k), Y(H-k) = conj(C(k)) w(H-k).
    v8 y0r, y0i, y0rr, y0ri, ynr, yni, ynrr, ynri;
    cmul(c0r, c0i, wre[a * Wh], wim[a * Wh], y0r, y0i);
    cmul(c0r, -c0i, wre[b * Wh], wim[b * Wh], y0rr, y0ri);
    cmul(cnr, cni, wre[a * Wh + M], wim[a * Wh + M], ynr, yni);
    cmul(cnr, -cni, wre[b * Wh + M], wim[b * Wh + M], ynrr, ynri);
    // Hermitian parts at k: (Y(k) + conj Y(H-k)) / 2.
    const v8 ar = half * (y0r + y0rr), ai = half * (y0i - y0ri);
    const v8 br = half * (ynr + ynrr), bi = half * (yni - ynri);
    re[b * rs] = ar + bi; im[b * rs] = br - ai;   // Q(H-k) = conj(A) + i conj(B)
    re[a * rs] = ar - bi; im[a * rs] = ai + br;   // Q(k) = A + i B (wins when k == H-k)
  }
}

// ---------------------------------------------------------------------------------------

// Per-thread scratch, grown on demand and kept between calls (no page faults per call).
// Slot 0: spectrum and row buffers; slot 1: the packed gate of one channel group.
v8* scratch(int slot, int64_t n) {
  thread_local std::vector<v8> buf[2];
  if (static_cast<int64_t>(buf[slot].size()) < n) buf[slot].resize(n);
  return buf[slot].data();
}

// Packs the gate of channel group g into `packed`: re then im blocks of (H, Wh) v8, lane j =
// channel 8g + j. Rows and columns are stored in the order the transforms leave them
// (Plan::col.pos, Plan::col_pos), and 1/(H W) (the two ortho factors) is folded in. Lanes
// past C are zero.
void pack_gate(const Plan& p, const float* w, int64_t C, int64_t g, v8* packed) {
  const int64_t H = p.H, Wh = p.Wh;
  const float scale = 1.0f / static_cast<float>(H * p.W);
  const int nvalid = static_cast<int>(std::min<int64_t>(8, C - 8 * g));
  alignas(32) float lane_scale[8];
  for (int j = 0; j < 8; ++j) lane_scale[j] = j < nvalid ? scale : 0.f;
  const v8 sv = loadu(lane_scale);
  for (int64_t k = 0; k < H; ++k) {
    // Row k of each lane's channel: Wh (re, im) pairs; lanes past C read channel 8g and are
    // zeroed by the scale vector.
    const float* src[8];
    for (int j = 0; j < 8; ++j) src[j] = w + ((8 * g + (j < nvalid ? j : 0)) * H + k) * Wh * 2;
    v8* pre = packed + p.col.pos(k) * Wh;
    v8* pim = pre + H * Wh;
    // The interleaved (re, im) floats of a row are a row of 2*Wh lane values: transpose them
    // like plane rows, even ones to pre, odd ones to pim.
    load_row(src, 2 * Wh, [&](int64_t n, v8 v) {
      ((n & 1) ? pim : pre)[p.col_pos(n >> 1)] = v * sv;
    });
  }
}

void ff_parser_kernel(const at::Tensor& x, const at::Tensor& weight, at::Tensor& out) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  if (B == 0 || C == 0) return;
  const Plan& p = get_plan(H, W);
  const int64_t Wh = p.Wh, nc = p.ncols, rs = p.rs, G = (C + 7) / 8;

  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t sxb = x.stride(0), sxc = x.stride(1), sob = out.stride(0), soc = out.stride(1);

  // Work items are (group g, batch b), b fastest: a thread packs a group's gate once and
  // reuses it (hot in cache) for the batch entries of its range; one parallel region per call.
  at::parallel_for(0, G * B, 1, [&](int64_t begin, int64_t end) {
    const int64_t spec_n = 2 * H * rs;
    const int64_t tmp_n = p.col.pow2 ? 0 : 2 * H * p.col_block;
    v8* re = scratch(0, spec_n + W + tmp_n);
    v8* im = re + H * rs;
    v8* row = re + spec_n;            // one row in lane layout (direct row path), W v8
    v8* tmp = row + W;                // direct-DFT scratch (non-power-of-two H only)
    v8* wre = scratch(1, 2 * H * Wh);  // packed gate of group packed_g
    v8* wim = wre + H * Wh;
    int64_t packed_g = -1;
    for (int64_t gb = begin; gb < end; ++gb) {
      const int64_t g = gb / B, b = gb % B;
      if (g != packed_g) { pack_gate(p, wp, C, g, wre); packed_g = g; }
      const int nvalid = static_cast<int>(std::min<int64_t>(8, C - 8 * g));
      const float* src[8];
      float* dst[8];
      for (int j = 0; j < 8; ++j) {
        const int64_t c = 8 * g + (j < nvalid ? j : 0);
        src[j] = xp + b * sxb + c * sxc;
        dst[j] = op + b * sob + c * soc;
      }
      // 1. rows -> half spectrum, an L1-sized block of rows at a time
      for (int64_t m0 = 0; m0 < H; m0 += p.row_block) {
        const int64_t R = std::min(p.row_block, H - m0);
        const float* s0[8];
        for (int j = 0; j < 8; ++j) s0[j] = src[j] + m0 * W;
        rows_forward(p, s0, R, re + m0 * rs, im + m0 * rs, row);
      }
      // 2. columns: forward, gate, inverse, one L1-sized block of columns at a time
      for (int64_t l0 = 0; l0 < nc; l0 += p.col_block) {
        const int64_t L = std::min(p.col_block, nc - l0);
        if (!p.col.pow2) {   // direct DFTs: forward, gate, inverse as separate passes
          dft_direct(re + l0, im + l0, p.col, rs, L, false, tmp);
          int64_t c0 = l0;
          if (l0 == 0 && p.row_fast) { gate_packed_column(p, re, im, wre, wim); c0 = 1; }
          for (int64_t k = 0; k < H; ++k) {
            for (int64_t c = c0; c < l0 + L; ++c) {
              const int64_t i = k * rs + c, iw = k * Wh + c;
              cmul(re[i], im[i], wre[iw], wim[iw], re[i], im[i]);
            }
          }
          dft_direct(re + l0, im + l0, p.col, rs, L, true, tmp);
          continue;
        }
        int64_t c0 = l0;
        if (l0 == 0 && p.row_fast) {
          // The packed DC + i Nyquist column pairs frequencies k and H-k, which the fused
          // codelet pass does not see together: transform it on its own.
          fft_dif<true, false>(re, im, p.col, rs, 1, 1);
          gate_packed_column(p, re, im, wre, wim);
          fft_dit<true, true>(re, im, p.col, rs, 1, 1);
          c0 = 1;
        }
        if (c0 < l0 + L)
          column_transform_gate(re + c0, im + c0, p.col, rs, l0 + L - c0, wre + c0, wim + c0, Wh);
      }
      // 3. rows -> real output
      for (int64_t m0 = 0; m0 < H; m0 += p.row_block) {
        const int64_t R = std::min(p.row_block, H - m0);
        float* d0[8];
        for (int j = 0; j < 8; ++j) d0[j] = dst[j] + m0 * W;
        rows_inverse(p, re + m0 * rs, im + m0 * rs, R, row, d0, nvalid);
      }
    }
  });
}

void check_inputs(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(),
              "dsd_fast::ff_parser: CPU tensors expected, got x on ", x.device(),
              " and weight on ", weight.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat,
              "dsd_fast::ff_parser: float32 expected, got x ", x.scalar_type(), " and weight ",
              weight.scalar_type());
  TORCH_CHECK(x.dim() == 4, "dsd_fast::ff_parser: x must be (B, C, H, W), got shape ",
              x.sizes());
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(H >= 1 && W >= 1, "dsd_fast::ff_parser: planes must be at least 1x1, got ", H,
              "x", W);
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == C && weight.size(1) == H &&
                  weight.size(2) == W / 2 + 1 && weight.size(3) == 2,
              "dsd_fast::ff_parser: weight must be (C, H, W//2+1, 2) = (", C, ", ", H, ", ",
              W / 2 + 1, ", 2) for x of shape ", x.sizes(), ", got ", weight.sizes());
}

// Planes must be contiguous (H*W floats in order); batch and channel strides are free.
bool planes_contiguous(const at::Tensor& t) {
  return (t.size(3) == 1 || t.stride(3) == 1) && (t.size(2) == 1 || t.stride(2) == t.size(3));
}

}  // namespace

at::Tensor ff_parser_cpu(const at::Tensor& x_in, const at::Tensor& weight_in) {
  check_inputs(x_in, weight_in);
  const at::Tensor x = planes_contiguous(x_in) ? x_in : x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  ff_parser_kernel(x, weight, out);
  return out;
}

void ff_parser_out_cpu(const at::Tensor& x_in, const at::Tensor& weight_in, at::Tensor& out) {
  check_inputs(x_in, weight_in);
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == at::kFloat,
              "dsd_fast::ff_parser_out: out must be a float32 CPU tensor, got ",
              out.scalar_type(), " on ", out.device());
  TORCH_CHECK(out.sizes() == x_in.sizes(), "dsd_fast::ff_parser_out: out must have x's shape ",
              x_in.sizes(), ", got ", out.sizes());
  TORCH_CHECK(planes_contiguous(out),
              "dsd_fast::ff_parser_out: each (b, c) plane of out must be contiguous "
              "(stride(3) == 1 and stride(2) == W; a channel slice of a contiguous buffer is "
              "fine), got strides ", out.strides());
  at::assert_no_internal_overlap(out);
  // x may be out itself (in place: each group of planes is read fully before it is written)
  // but must not partly overlap it.
  at::assert_no_partial_overlap(out, x_in);
  const at::Tensor x = planes_contiguous(x_in) ? x_in : x_in.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  ff_parser_kernel(x, weight, out);
}

}  // namespace dsd
