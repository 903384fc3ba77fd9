// Batched FFT building blocks for the CPU FF-Parser (csrc/ff_parser.cpp).
//
// Everything here works on "rows of v8": split re/im arrays whose elements are 8-lane
// vectors, one lane per independent plane, so a butterfly is plain lane-wise arithmetic.
// A sequence of n elements is re/im[j*es + c*bs] for j < n and L sequences c < L at once.
//   - Transform1D: twiddle and bit-reversal tables of one length.
//   - fft_dif / fft_dit: full power-of-two transforms (radix-4 passes + one 8-/4-point
//     codelet pass); column_transform_gate: forward, gate and inverse with the middle fused.
//   - dft_direct: any length, O(n^2), from the same tables.
//   - load_row / store_row: 8 planes' rows <-> lane layout (8x8 transposes).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "simd.h"

namespace dsd {
namespace fft {

constexpr double kTwoPi = 6.283185307179586476925;

inline bool is_pow2(int64_t n) { return n >= 1 && (n & (n - 1)) == 0; }

// e^{-2 pi i t / n} in double rounded to float, exact at the quarter turns so that the
// "ignored" sine terms of the DC and Nyquist bins are exact zeros.
inline void unit_root(int64_t t, int64_t n, float* re, float* im) {
  t %= n;
  if (t == 0) { *re = 1.f; *im = 0.f; return; }
  if (4 * t == n) { *re = 0.f; *im = -1.f; return; }
  if (2 * t == n) { *re = -1.f; *im = 0.f; return; }
  if (4 * t == 3 * n) { *re = 0.f; *im = 1.f; return; }
  const double a = -kTwoPi * static_cast<double>(t) / static_cast<double>(n);
  *re = static_cast<float>(std::cos(a));
  *im = static_cast<float>(std::sin(a));
}

// Tables for one transform length n.
struct Transform1D {
  int64_t n = 1;
  bool pow2 = true;
  std::vector<int32_t> bitrev;       // pow2: bit-reversal permutation of [0, n) (an involution)
  std::vector<float> tw_re, tw_im;   // e^{-2 pi i t/n}, t < n

  explicit Transform1D(int64_t n_) : n(n_), pow2(is_pow2(n_)) {
    tw_re.resize(n);
    tw_im.resize(n);
    for (int64_t t = 0; t < n; ++t) unit_root(t, n, &tw_re[t], &tw_im[t]);
    if (pow2) {
      bitrev.resize(n);
      int bits = 0;
      while ((int64_t(1) << bits) < n) ++bits;
      for (int64_t i = 0; i < n; ++i) {
        int64_t r = 0;
        for (int b = 0; b < bits; ++b) r |= ((i >> b) & 1) << (bits - 1 - b);
        bitrev[i] = static_cast<int32_t>(r);
      }
    }
  }
  // Position that holds frequency k after a forward (DIF) transform.
  int64_t pos(int64_t k) const { return pow2 ? bitrev[k] : k; }
};

// ---------------------------------------------------------------------------------------
// FFTs of L independent sequences at once. Element j of sequence c is re/im[j*es + c*bs]:
// columns of the spectrum (step 2) are es = row stride, bs = 1; a block of rows (steps 1, 3)
// is es = 1, bs = row stride. Batching L sequences amortises each twiddle broadcast and the
// loop overhead over L butterflies.
//
// A transform of n = R * 4^k points is k radix-4 passes (each fuses two radix-2 stages) and
// one pass of a twiddle-free R-point codelet, R = 8 for odd log2 n, 4 for even (2 and 1 for
// n = 2, 1). Forward: e^{-2 pi i jk/n}; kInv: the conjugate (unnormalised inverse).

// (xr + i xi) * (wr + i wi)
inline void cmul(v8 xr, v8 xi, v8 wr, v8 wi, v8& outr, v8& outi) {
  const v8 r = fnmadd(xi, wi, xr * wr);
  outi = fmadd(xr, wi, xi * wr);
  outr = r;
}
// * (-i) forward, * (+i) inverse: e^{-+ i pi/2}
template <bool kInv>
inline void mul_mi(v8 xr, v8 xi, v8& outr, v8& outi) {
  if (kInv) { outr = -xi; outi = xr; }
  else { outr = xi; outi = -xr; }
}
constexpr float kSqrtHalf = 0.70710678118654752f;
// * e^{-+ i pi/4} = (1 -+ i) / sqrt(2)
template <bool kInv>
inline void mul_w8(v8& r, v8& i) {
  const v8 c = bcast(kSqrtHalf), a = r, b = i;
  if (kInv) { r = c * (a - b); i = c * (a + b); }
  else { r = c * (a + b); i = c * (b - a); }
}
// * e^{-+ 3 i pi/4} = (-1 -+ i) / sqrt(2)
template <bool kInv>
inline void mul_w8_3(v8& r, v8& i) {
  const v8 c = bcast(kSqrtHalf), a = r, b = i;
  if (kInv) { r = -c * (a + b); i = c * (a - b); }
  else { r = c * (b - a); i = -c * (a + b); }
}

inline int64_t codelet_size(int64_t n) {
  if (n <= 2) return n;
  int bits = 0;
  while ((int64_t(1) << bits) < n) ++bits;
  return (bits & 1) ? 8 : 4;
}

// In-register codelets on R points a[0..R) (re in ar, im in ai). DIF: natural in, bit-reversed
// out; DIT: the mirror. They are the last two radix-2 / radix-4 stages of fft_dif (first of
// fft_dit) with their twiddles written out.
template <int R, bool kInv>
inline void dif_codelet(v8* ar, v8* ai) {
  if constexpr (R == 2) {
    const v8 r = ar[0] - ar[1], i = ai[0] - ai[1];
    ar[0] += ar[1]; ai[0] += ai[1]; ar[1] = r; ai[1] = i;
  } else if constexpr (R == 4) {
    const v8 s02r = ar[0] + ar[2], s02i = ai[0] + ai[2], d02r = ar[0] - ar[2], d02i = ai[0] - ai[2];
    const v8 s13r = ar[1] + ar[3], s13i = ai[1] + ai[3];
    v8 d13r, d13i;
    mul_mi<kInv>(ar[1] - ar[3], ai[1] - ai[3], d13r, d13i);
    ar[0] = s02r + s13r; ai[0] = s02i + s13i; ar[1] = s02r - s13r; ai[1] = s02i - s13i;
    ar[2] = d02r + d13r; ai[2] = d02i + d13i; ar[3] = d02r - d13r; ai[3] = d02i - d13i;
  } else {
    static_assert(R == 8, "codelets exist for 2, 4, 8 points");
    for (int j = 0; j < 2; ++j) {   // radix-4 stage, halves 4 and 2, w = e^{-+ 2 pi i / 8}
      const v8 s02r = ar[j] + ar[j + 4], s02i = ai[j] + ai[j + 4];
      const v8 d02r = ar[j] - ar[j + 4], d02i = ai[j] - ai[j + 4];
      const v8 s13r = ar[j + 2] + ar[j + 6], s13i = ai[j + 2] + ai[j + 6];
      v8 d13r, d13i;
      mul_mi<kInv>(ar[j + 2] - ar[j + 6], ai[j + 2] - ai[j + 6], d13r, d13i);
      ar[j] = s02r + s13r; ai[j] = s02i + s13i;
      v8 x1r = s02r - s13r, x1i = s02i - s13i;
      v8 x2r = d02r + d13r, x2i = d02i + d13i;
      v8 x3r = d02r - d13r, x3i = d02i - d13i;
      if (j == 1) {             // w^2, w^1, w^3
        mul_mi<kInv>(x1r, x1i, x1r, x1i);
        mul_w8<kInv>(x2r, x2i);
        mul_w8_3<kInv>(x3r, x3i);
      }
      ar[j + 2] = x1r; ai[j + 2] = x1i; ar[j + 4] = x2r; ai[j + 4] = x2i;
      ar[j + 6] = x3r; ai[j + 6] = x3i;
    }
    for (int k = 0; k < 8; k += 2) {   // radix-2 stage, half 1
      const v8 r = ar[k] - ar[k + 1], i = ai[k] - ai[k + 1];
      ar[k] += ar[k + 1]; ai[k] += ai[k + 1]; ar[k + 1] = r; ai[k + 1] = i;
    }
  }
}

template <int R, bool kInv>
inline void dit_codelet(v8* ar, v8* ai) {
  if constexpr (R == 2) {
    dif_codelet<2, kInv>(ar, ai);
  } else if constexpr (R == 4) {
    const v8 c0r = ar[0] + ar[1], c0i = ai[0] + ai[1], c1r = ar[0] - ar[1], c1i = ai[0] - ai[1];
    const v8 er = ar[2] + ar[3], ei = ai[2] + ai[3];
    v8 fr, fi;
    mul_mi<kInv>(ar[2] - ar[3], ai[2] - ai[3], fr, fi);
    ar[0] = c0r + er; ai[0] = c0i + ei; ar[2] = c0r - er; ai[2] = c0i - ei;
    ar[1] = c1r + fr; ai[1] = c1i + fi; ar[3] = c1r - fr; ai[3] = c1i - fi;
  } else {
    static_assert(R == 8, "codelets exist for 2, 4, 8 points");
    for (int k = 0; k < 8; k += 2) {   // radix-2 stage, half 1
      const v8 r = ar[k] - ar[k + 1], i = ai[k] - ai[k + 1];
      ar[k] += ar[k + 1]; ai[k] += ai[k + 1]; ar[k + 1] = r; ai[k + 1] = i;
    }
    for (int j = 0; j < 2; ++j) {      // radix-4 stage, halves 2 and 4
      v8 t1r = ar[j + 2], t1i = ai[j + 2], t2r = ar[j + 4], t2i = ai[j + 4];
      v8 t3r = ar[j + 6], t3i = ai[j + 6];
      if (j == 1) {
        mul_mi<kInv>(t1r, t1i, t1r, t1i);
        mul_w8<kInv>(t2r, t2i);
        mul_w8_3<kInv>(t3r, t3i);
      }
      const v8 c0r = ar[j] + t1r, c0i = ai[j] + t1i, c1r = ar[j] - t1r, c1i = ai[j] - t1i;
      const v8 er = t2r + t3r, ei = t2i + t3i;
      v8 fr, fi;
      mul_mi<kInv>(t2r - t3r, t2i - t3i, fr, fi);
      ar[j] = c0r + er; ai[j] = c0i + ei; ar[j + 4] = c0r - er; ai[j + 4] = c0i - ei;
      ar[j + 2] = c1r + fr; ai[j + 2] = c1i + fi; ar[j + 6] = c1r - fr; ai[j + 6] = c1i - fi;
    }
  }
}

// One pass of R-point DIF codelets over blocks of R consecutive elements. With kGate, each
// block is then multiplied by the gate (wre/wim: the first column's gate, rows wes apart,
// position order) and inverse-transformed by a DIT codelet before it is stored: the forward
// tail, the gate and the inverse head of step 2 are one pass.
template <int R, bool kUnitBatch, bool kDifInv, bool kGate>
void codelet_pass(v8* re, v8* im, int64_t n, int64_t es, int64_t bs_, int64_t L,
                  const v8* wre = nullptr, const v8* wim = nullptr, int64_t wes = 0) {
  const int64_t bs = kUnitBatch ? 1 : bs_;
  for (int64_t s = 0; s < n; s += R) {
    for (int64_t c = 0; c < L; ++c) {
      v8 ar[R], ai[R];
      v8* pr = re + s * es + c * bs;
      v8* pi = im + s * es + c * bs;
      for (int r = 0; r < R; ++r) { ar[r] = pr[r * es]; ai[r] = pi[r * es]; }
      dif_codelet<R, kDifInv>(ar, ai);
      if constexpr (kGate) {
        for (int r = 0; r < R; ++r) {
          const int64_t iw = (s + r) * wes + c;
          cmul(ar[r], ai[r], wre[iw], wim[iw], ar[r], ai[r]);
        }
        dit_codelet<R, true>(ar, ai);
      }
      for (int r = 0; r < R; ++r) { pr[r * es] = ar[r]; pi[r * es] = ai[r]; }
    }
  }
}
template <int R, bool kUnitBatch, bool kInv>
void dit_codelet_pass(v8* re, v8* im, int64_t n, int64_t es, int64_t bs_, int64_t L) {
  const int64_t bs = kUnitBatch ? 1 : bs_;
  for (int64_t s = 0; s < n; s += R) {
    for (int64_t c = 0; c < L; ++c) {
      v8 ar[R], ai[R];
      v8* pr = re + s * es + c * bs;
      v8* pi = im + s * es + c * bs;
      for (int r = 0; r < R; ++r) { ar[r] = pr[r * es]; ai[r] = pi[r * es]; }
      dit_codelet<R, kInv>(ar, ai);
      for (int r = 0; r < R; ++r) { pr[r * es] = ar[r]; pi[r * es] = ai[r]; }
    }
  }
}

// Radix-4 DIF passes, natural order in, from blocks of n down to blocks of `stop` points.
// For j < h/2 and x0..x3 at j, j + h/2, j + h, j + 3h/2 of a block of 2h, w = e^{-2 pi i/2h}:
//   s02 = x0 + x2, d02 = x0 - x2, s13 = x1 + x3, d13 = (x1 - x3) * (-i)
//   x0' = s02 + s13, x1' = (s02 - s13) w^2j, x2' = (d02 + d13) w^j, x3' = (d02 - d13) w^3j
template <bool kUnitBatch, bool kInv>
void dif_passes(v8* re, v8* im, const Transform1D& t, int64_t es, int64_t bs_, int64_t L,
                int64_t stop) {
  const int64_t n = t.n, bs = kUnitBatch ? 1 : bs_;
  const float sgn = kInv ? -1.f : 1.f;
  for (int64_t h = n / 2; 2 * h > stop; h >>= 2) {
    const int64_t q = h / 2, step = n / (2 * h);
    for (int64_t s = 0; s < n; s += 2 * h) {
      for (int64_t j = 0; j < q; ++j) {
        v8 *r0 = re + (s + j) * es, *i0 = im + (s + j) * es;
        v8 *r1 = r0 + q * es, *i1 = i0 + q * es;
        v8 *r2 = r0 + h * es, *i2 = i0 + h * es;
        v8 *r3 = r2 + q * es, *i3 = i2 + q * es;
        const v8 w1r = bcast(t.tw_re[j * step]), w1i = bcast(sgn * t.tw_im[j * step]);
        const v8 w2r = bcast(t.tw_re[2 * j * step]), w2i = bcast(sgn * t.tw_im[2 * j * step]);
        const v8 w3r = bcast(t.tw_re[3 * j * step]), w3i = bcast(sgn * t.tw_im[3 * j * step]);
        const bool tw = j != 0;
        for (int64_t c = 0; c < L * bs; c += bs) {
          const v8 s02r = r0[c] + r2[c], s02i = i0[c] + i2[c];
          const v8 d02r = r0[c] - r2[c], d02i = i0[c] - i2[c];
          const v8 s13r = r1[c] + r3[c], s13i = i1[c] + i3[c];
          v8 d13r, d13i;
          mul_mi<kInv>(r1[c] - r3[c], i1[c] - i3[c], d13r, d13i);
          r0[c] = s02r + s13r; i0[c] = s02i + s13i;
          if (tw) {
            cmul(s02r - s13r, s02i - s13i, w2r, w2i, r1[c], i1[c]);
            cmul(d02r + d13r, d02i + d13i, w1r, w1i, r2[c], i2[c]);
            cmul(d02r - d13r, d02i - d13i, w3r, w3i, r3[c], i3[c]);
          } else {
            r1[c] = s02r - s13r; i1[c] = s02i - s13i;
            r2[c] = d02r + d13r; i2[c] = d02i + d13i;
            r3[c] = d02r - d13r; i3[c] = d02i - d13i;
          }
        }
      }
    }
  }
}

// Radix-4 DIT passes, from blocks of `start` points (already transformed, bit-reversed input)
// up to n, natural order out. The mirror of dif_passes:
//   t1 = x1 w^2j, t2 = x2 w^j, t3 = x3 w^3j, c0 = x0 + t1, c1 = x0 - t1,
//   e = t2 + t3, f = (t2 - t3) * (-i);  x0' = c0 + e, x2' = c0 - e, x1' = c1 + f, x3' = c1 - f
template <bool kUnitBatch, bool kInv>
void dit_passes(v8* re, v8* im, const Transform1D& t, int64_t es, int64_t bs_, int64_t L,
                int64_t start) {
  const int64_t n = t.n, bs = kUnitBatch ? 1 : bs_;
  const float sgn = kInv ? -1.f : 1.f;
  for (int64_t q = start; q < n; q <<= 2) {
    const int64_t h = 2 * q, step = n / (2 * h);
    for (int64_t s = 0; s < n; s += 2 * h) {
      for (int64_t j = 0; j < q; ++j) {
        v8 *r0 = re + (s + j) * es, *i0 = im + (s + j) * es;
        v8 *r1 = r0 + q * es, *i1 = i0 + q * es;
        v8 *r2 = r0 + h * es, *i2 = i0 + h * es;
        v8 *r3 = r2 + q * es, *i3 = i2 + q * es;
        const v8 w1r = bcast(t.tw_re[j * step]), w1i = bcast(sgn * t.tw_im[j * step]);
        const v8 w2r = bcast(t.tw_re[2 * j * step]), w2i = bcast(sgn * t.tw_im[2 * j * step]);
        const v8 w3r = bcast(t.tw_re[3 * j * step]), w3i = bcast(sgn * t.tw_im[3 * j * step]);
        const bool tw = j != 0;
        for (int64_t c = 0; c < L * bs; c += bs) {
          v8 t1r = r1[c], t1i = i1[c], t2r = r2[c], t2i = i2[c], t3r = r3[c], t3i = i3[c];
          if (tw) {
            cmul(t1r, t1i, w2r, w2i, t1r, t1i);
            cmul(t2r, t2i, w1r, w1i, t2r, t2i);
            cmul(t3r, t3i, w3r, w3i, t3r, t3i);
          }
          const v8 c0r = r0[c] + t1r, c0i = i0[c] + t1i;
          const v8 c1r = r0[c] - t1r, c1i = i0[c] - t1i;
          const v8 er = t2r + t3r, ei = t2i + t3i;
          v8 fr, fi;
          mul_mi<kInv>(t2r - t3r, t2i - t3i, fr, fi);
          r0[c] = c0r + er; i0[c] = c0i + ei;
          r2[c] = c0r - er; i2[c] = c0i - ei;
          r1[c] = c1r + fr; i1[c] = c1i + fi;
          r3[c] = c1r - fr; i3[c] = c1i - fi;
        }
      }
    }
  }
}

// Full transforms. DIF: natural order in, bit-reversed out. DIT: bit-reversed in, natural out.
template <bool kUnitBatch, bool kInv>
void fft_dif(v8* re, v8* im, const Transform1D& t, int64_t es, int64_t bs, int64_t L) {
  const int64_t R = codelet_size(t.n);
  dif_passes<kUnitBatch, kInv>(re, im, t, es, bs, L, R);
  if (R == 8) codelet_pass<8, kUnitBatch, kInv, false>(re, im, t.n, es, bs, L);
  else if (R == 4) codelet_pass<4, kUnitBatch, kInv, false>(re, im, t.n, es, bs, L);
  else if (R == 2) codelet_pass<2, kUnitBatch, kInv, false>(re, im, t.n, es, bs, L);
}
template <bool kUnitBatch, bool kInv>
void fft_dit(v8* re, v8* im, const Transform1D& t, int64_t es, int64_t bs, int64_t L) {
  const int64_t R = codelet_size(t.n);
  if (R == 8) dit_codelet_pass<8, kUnitBatch, kInv>(re, im, t.n, es, bs, L);
  else if (R == 4) dit_codelet_pass<4, kUnitBatch, kInv>(re, im, t.n, es, bs, L);
  else if (R == 2) dit_codelet_pass<2, kUnitBatch, kInv>(re, im, t.n, es, bs, L);
  if (R >= 2) dit_passes<kUnitBatch, kInv>(re, im, t, es, bs, L, R);
}

// Step 2 for L columns (not the packed DC/Nyquist one): forward transform, gate, inverse
// transform; the last forward pass, the gate and the first inverse pass share one codelet
// pass. wre/wim: the gate at the block's first column, rows wes apart (position order).
inline void column_transform_gate(v8* re, v8* im, const Transform1D& t, int64_t es, int64_t L,
                           const v8* wre, const v8* wim, int64_t wes) {
  const int64_t n = t.n, R = codelet_size(n);
  dif_passes<true, false>(re, im, t, es, 1, L, R);
  if (R == 8) codelet_pass<8, true, false, true>(re, im, n, es, 1, L, wre, wim, wes);
  else if (R == 4) codelet_pass<4, true, false, true>(re, im, n, es, 1, L, wre, wim, wes);
  else if (R == 2) codelet_pass<2, true, false, true>(re, im, n, es, 1, L, wre, wim, wes);
  else {   // n == 1: the gate alone
    for (int64_t c = 0; c < L; ++c) cmul(re[c], im[c], wre[c], wim[c], re[c], im[c]);
  }
  if (R >= 2) dit_passes<true, true>(re, im, t, es, 1, L, R);
}

// Direct DFT of n = t.n elements (any n) over L columns; tmp holds 2 * n * L v8.
inline void dft_direct(v8* re, v8* im, const Transform1D& t, int64_t rs, int64_t L, bool inverse,
                v8* tmp) {
  const int64_t n = t.n;
  const float sgn = inverse ? -1.f : 1.f;
  v8* out_re = tmp;
  v8* out_im = tmp + n * L;
  for (int64_t k = 0; k < n; ++k) {
    for (int64_t c = 0; c < L; ++c) { out_re[k * L + c] = zero8(); out_im[k * L + c] = zero8(); }
    for (int64_t m = 0; m < n; ++m) {
      const int64_t idx = (k * m) % n;
      const v8 wr = bcast(t.tw_re[idx]), wi = bcast(sgn * t.tw_im[idx]);
      for (int64_t c = 0; c < L; ++c) {
        const v8 xr = re[m * rs + c], xi = im[m * rs + c];
        out_re[k * L + c] = fmadd(xr, wr, fnmadd(xi, wi, out_re[k * L + c]));
        out_im[k * L + c] = fmadd(xr, wi, fmadd(xi, wr, out_im[k * L + c]));
      }
    }
  }
  for (int64_t k = 0; k < n; ++k)
    for (int64_t c = 0; c < L; ++c) { re[k * rs + c] = out_re[k * L + c]; im[k * rs + c] = out_im[k * L + c]; }
}

// ---------------------------------------------------------------------------------------
// Moving one row of 8 planes between memory ("8 planes") and v8 lanes ("8 lanes").

// put(n, v) receives element n of the row: v[j] = src[j][n]. Lanes past the valid ones read
// plane 0 (their results are never stored).
template <class Put>
inline void load_row(const float* const src[8], int64_t W, Put&& put) {
  int64_t n0 = 0;
  for (; n0 + 8 <= W; n0 += 8) {
    v8 r[8];
    for (int j = 0; j < 8; ++j) r[j] = loadu(src[j] + n0);
    transpose8x8(r);
    for (int q = 0; q < 8; ++q) put(n0 + q, r[q]);
  }
  for (; n0 < W; ++n0) {
    alignas(32) float lane[8];
    for (int j = 0; j < 8; ++j) lane[j] = src[j][n0];
    put(n0, loadu(lane));
  }
}

// dst[j][n] = get(n)[j] for the nvalid first lanes.
template <class Get>
inline void store_row(float* const dst[8], int nvalid, int64_t W, Get&& get) {
  int64_t n0 = 0;
  for (; n0 + 8 <= W; n0 += 8) {
    v8 r[8];
    for (int q = 0; q < 8; ++q) r[q] = get(n0 + q);
    transpose8x8(r);
    if (nvalid == 8) {   // the common case, unrolled without per-lane tests
      for (int j = 0; j < 8; ++j) storeu(dst[j] + n0, r[j]);
    } else {
      for (int j = 0; j < nvalid; ++j) storeu(dst[j] + n0, r[j]);
    }
  }
  for (; n0 < W; ++n0) {
    alignas(32) float lane[8];
    storeu(lane, get(n0));
    for (int j = 0; j < nvalid; ++j) dst[j][n0] = lane[j];
  }
}


}  // namespace fft
}  // namespace dsd
