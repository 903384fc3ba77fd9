// Float vectors for the dsd_fast CPU kernels: `v8` (8 lanes, every build) and `vf`, the
// build's native width (VL lanes: 16 in the AVX-512 build, 8 in the AVX2 one, 4 in the
// portable one).
//
// Both are GCC/Clang vector extensions (+, -, *, / work lane by lane), so the arithmetic
// compiles to whatever the build's flags allow. The FFT (fft_lanes.h, ff_parser.cpp) works on
// 8 planes per v8 in every build; the per-element loops and register tiles of the other ops
// use vf. Only a few things need the instruction set spelled out, each with a portable
// fallback: fused multiply-add (ISO C++ mode turns off GCC's automatic contraction), the
// reciprocal estimate, and the 8x8 transpose that moves data between "8 planes" and
// "8 lanes" layouts.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define DSD_HAVE_AVX2 1
#else
#define DSD_HAVE_AVX2 0
#endif
// setup.py builds one module per ISA; this one's native vector width follows its flags.
// The portable build's native width is 4 lanes (16 bytes: SSE2 on any x86_64, NEON on
// ARM); its 8-lane code (the FFT's) the compiler splits into pairs of those.
#if DSD_HAVE_AVX2 && defined(__AVX512F__)
#define DSD_HAVE_AVX512 1
#define DSD_LANES 16
#elif DSD_HAVE_AVX2
#define DSD_HAVE_AVX512 0
#define DSD_LANES 8
#else
#define DSD_HAVE_AVX512 0
#define DSD_LANES 4
#endif

namespace dsd {

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef double v4d __attribute__((vector_size(32)));

static inline v8 bcast(float s) { return v8{s, s, s, s, s, s, s, s}; }
static inline v8 zero8() { return bcast(0.0f); }

// Unaligned load/store: memcpy of 32 bytes compiles to vmovups.
static inline v8 loadu(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
static inline void storeu(float* p, v8 v) { std::memcpy(p, &v, sizeof(v)); }

// a * b + c, fused where the hardware has it.
static inline v8 fmadd(v8 a, v8 b, v8 c) {
#if DSD_HAVE_AVX2
  return (v8)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;
#endif
}
// c - a * b
static inline v8 fnmadd(v8 a, v8 b, v8 c) {
#if DSD_HAVE_AVX2
  return (v8)_mm256_fnmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return c - a * b;
#endif
}

// ---------------------------------------------------------------------------------------
// 16 lanes (the AVX-512 build)
#if DSD_HAVE_AVX512
typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
static inline v16 fmadd(v16 a, v16 b, v16 c) {
  return (v16)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
}
static inline v16 fnmadd(v16 a, v16 b, v16 c) {
  return (v16)_mm512_fnmadd_ps((__m512)a, (__m512)b, (__m512)c);
}
// 14-bit estimate plus one Newton step: at or below float rounding.
static inline v16 recip(v16 d) {
  const v16 r0 = (v16)_mm512_rcp14_ps((__m512)d);
  return fmadd(r0, fnmadd(d, r0, v16{} + 1.0f), r0);
}
#endif

// 4 lanes (the portable build's native width): plain vector-extension arithmetic.
#if !DSD_HAVE_AVX2
typedef float v4 __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));
static inline v4 fmadd(v4 a, v4 b, v4 c) { return a * b + c; }
static inline v4 fnmadd(v4 a, v4 b, v4 c) { return c - a * b; }
static inline v4 recip(v4 d) { return (v4{} + 1.0f) / d; }
#endif

// r[0..7] are 8 rows of 8 floats; afterwards r[q] holds column q (r[q][j] = old r[j][q]).
static inline void transpose8x8(v8 r[8]) {
#if DSD_HAVE_AVX2
  __m256 t0 = _mm256_unpacklo_ps((__m256)r[0], (__m256)r[1]);
  __m256 t1 = _mm256_unpackhi_ps((__m256)r[0], (__m256)r[1]);
  __m256 t2 = _mm256_unpacklo_ps((__m256)r[2], (__m256)r[3]);
  __m256 t3 = _mm256_unpackhi_ps((__m256)r[2], (__m256)r[3]);
  __m256 t4 = _mm256_unpacklo_ps((__m256)r[4], (__m256)r[5]);
  __m256 t5 = _mm256_unpackhi_ps((__m256)r[4], (__m256)r[5]);
  __m256 t6 = _mm256_unpacklo_ps((__m256)r[6], (__m256)r[7]);
  __m256 t7 = _mm256_unpackhi_ps((__m256)r[6], (__m256)r[7]);
  __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44);
  __m256 s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44);
  __m256 s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44);
  __m256 s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44);
  __m256 s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = (v8)_mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = (v8)_mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = (v8)_mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = (v8)_mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = (v8)_mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = (v8)_mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = (v8)_mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = (v8)_mm256_permute2f128_ps(s3, s7, 0x31);
#else
  float t[8][8];
  for (int j = 0; j < 8; ++j)
    for (int q = 0; q < 8; ++q) t[q][j] = r[j][q];
  for (int q = 0; q < 8; ++q) std::memcpy(&r[q], t[q], sizeof(v8));
#endif
}

// Lane-count traits: the integer vector of the same width.
template <class V> struct lanes;
template <> struct lanes<v8> { typedef v8i ints; };
#if DSD_HAVE_AVX512
template <> struct lanes<v16> { typedef v16i ints; };
#endif
#if !DSD_HAVE_AVX2
template <> struct lanes<v4> { typedef v4i ints; };
#endif

// exp(x) for float lanes, relative error about 2 ulp over the clamped range [-87.3, 88.3].
// Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then a degree-6 polynomial for e^r
// (Taylor coefficients; the truncation error r^7/7! < 2e-8 relative) and 2^n from the bits.
template <class V>
static inline V exp_lanes(V x) {
  const V hi = V{} + 88.3f, lo = V{} - 87.3f;
  x = x < lo ? lo : x;  // lane-wise select (vector extension ternary)
  x = x > hi ? hi : x;
  // Round x / ln2 to nearest with the 1.5 * 2^23 trick (exact for |n| < 2^22).
  const V magic = V{} + 12582912.0f;
  V n = fmadd(x, V{} + 1.44269504088896341f, magic) - magic;
  V r = fnmadd(n, V{} + 0.693359375f, x);          // ln2 high part: exact product
  r = fnmadd(n, V{} - 2.12194440e-4f, r);          // ln2 low part
  // Estrin's scheme (dependency depth 4 instead of Horner's 6: the chain is latency-bound).
  const V r2 = r * r;
  const V p01 = r + 1.0f;
  const V p23 = fmadd(r, V{} + 1.0f / 6.0f, V{} + 0.5f);
  const V p45 = fmadd(r, V{} + 1.0f / 120.0f, V{} + 1.0f / 24.0f);
  const V p456 = fmadd(r2, V{} + 1.0f / 720.0f, p45);
  const V p = fmadd(r2, fmadd(r2, p456, p23), p01);
  typedef typename lanes<V>::ints VI;
  VI ni = __builtin_convertvector(n, VI);
  VI bits = (ni + 127) << 23;                      // 2^n as float bits; n in [-126, 127]
  V scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

#if DSD_HAVE_AVX512
// The same exp with AVX-512's own steps, half the instructions of the generic form (13 vs
// 25 per vector; exp dominates linear attention's softmaxes and SiLU): vrndscaleps rounds,
// vscalefps multiplies by 2^n, vmaxps / vminps clamp. max(lo, x) / min(hi, x) return x
// when it is NaN, so NaN still propagates as in the generic form.
static inline v16 exp_lanes(v16 x) {
  __m512 v = _mm512_max_ps(_mm512_set1_ps(-87.3f), (__m512)x);
  v = _mm512_min_ps(_mm512_set1_ps(88.3f), v);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), v);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  const __m512 r2 = _mm512_mul_ps(r, r);
  const __m512 p01 = _mm512_add_ps(r, _mm512_set1_ps(1.0f));
  const __m512 p23 = _mm512_fmadd_ps(r, _mm512_set1_ps(1.0f / 6.0f), _mm512_set1_ps(0.5f));
  const __m512 p45 = _mm512_fmadd_ps(r, _mm512_set1_ps(1.0f / 120.0f), _mm512_set1_ps(1.0f / 24.0f));
  const __m512 p456 = _mm512_fmadd_ps(r2, _mm512_set1_ps(1.0f / 720.0f), p45);
  const __m512 p = _mm512_fmadd_ps(r2, _mm512_fmadd_ps(r2, p456, p23), p01);
  return (v16)_mm512_scalef_ps(p, n);
}
#endif

// 1 / d to about 1 ulp: the hardware estimate (12 bits) plus one Newton step, cheaper than a
// divide. Portable fallback: the divide.
static inline v8 recip(v8 d) {
#if DSD_HAVE_AVX2
  const v8 r0 = (v8)_mm256_rcp_ps((__m256)d);
  return fmadd(r0, fnmadd(d, r0, bcast(1.0f)), r0);   // r0 + r0 (1 - d r0)
#else
  return bcast(1.0f) / d;
#endif
}

// silu(x) = x * sigmoid(x) = x / (1 + exp(-x))
template <class V>
static inline V silu(V x) { return x * recip((V{} + 1.0f) + exp_lanes(-x)); }

// ---------------------------------------------------------------------------------------
// The native width: what the per-element kernels are written against.
#if DSD_HAVE_AVX512
typedef v16 vf;
#elif DSD_HAVE_AVX2
typedef v8 vf;
#else
typedef v4 vf;
#endif
constexpr int VL = DSD_LANES;
static_assert(sizeof(vf) == VL * sizeof(float), "vf must hold VL floats");

// A lane-wise copy of s. Not `vf{} + s`: adding 0.0 is not a no-op for s = -0.0, so the
// compiler must keep a scalar add before the broadcast, and cannot fold a broadcast of a
// value in memory into the FMA that uses it (measured: the hot loops of the micro-kernels
// spent a third of their instructions on those adds).
static inline vf bcastf(float s) {
#if DSD_HAVE_AVX512
  return (vf)_mm512_set1_ps(s);
#elif DSD_HAVE_AVX2
  return (vf)_mm256_set1_ps(s);
#else
  return vf{s, s, s, s};
#endif
}
static inline vf zerof() { return vf{}; }
static inline vf loadf(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
static inline void storef(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }
static inline float hsumf(vf v) {
  float s = 0.0f;
  for (int j = 0; j < VL; ++j) s += v[j];
  return s;
}

}  // namespace dsd
