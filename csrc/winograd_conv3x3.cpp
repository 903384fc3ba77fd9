// 3x3 convolution, stride 1, padding 1, by Winograd F(4x4, 3x3), channels_last, float32.
//
//   x (B, C, H, W) channels_last, u = the transformed weight (ops.winograd_weight), bias (K,)
//   y[b, k, p] = conv2d(x, w, bias, padding=1)[b, k, p],  y channels_last
//
// Why: direct convolution is at this CPU's FMA limit (docs/PERFORMANCE.md, session 10), so only
// fewer multiplications go faster. F(4x4, 3x3) computes each 4 x 4 output tile from a 6 x 6
// input tile with 36 multiply-adds per (input channel, output channel) instead of 144:
//   Y = A^T [ U . V ] A,  U = G w G^T (done once, in float64, by ops.winograd_weight),
//   V = B^T d B (the input tile's transform), "." elementwise over the 6 x 6 positions xi,
// and the sum over input channels makes each position xi a matrix product:
//   M[xi] (tiles x K) = V[xi] (tiles x C) @ U[xi] (C x K).
// Interpolation points 0, 1, -1, 1/2, -2 (and infinity): against 0, +-1, +-2 they give a
// third of the float32 error (3.5e-6 against 9.6e-6 of the output's scale at C = 128,
// scratch measurement), since no transform entry is larger than 8.
//
// Work is split into blocks of T tiles. Per block, on one thread: the input transform writes
// V (36 x T x C, ~0.5 MB, stays in L2); then per 32-channel panel of K, the 36 products
// (register-blocked GEMM: MR tiles x NR output channels of accumulators, the tile's V values
// broadcast, U's panel loaded as vectors) and the output transform of that panel, bias
// added, written straight into y. M never exceeds 36 x T x 32 floats.
//
// u's layout is the same in every build: (ceil(K / 32), 36, C, 32), K padded with zeros to
// whole panels. C and K must be multiples of 16 (every build's vector width divides them).
//
// bfloat16 variant (winograd_conv3x3_bf16, precision="bf16"; AVX-512 build on CPUs with
// AVX512_BF16 only): V and U rounded to bfloat16, the products by vdpbf16ps (two bfloat16
// multiply-adds per float32 lane, accumulated in float32), transforms and output in float32.
// u16: (ceil(K / 32), 36, C / 2, 32, 2) bfloat16, input channels paired innermost as the
// instruction reads them (ops.winograd_weight_bf16).
#include <ATen/ATen.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "simd.h"

namespace dsd {
namespace {

constexpr int64_t PANEL = 32;                 // output channels per packed weight panel
constexpr int64_t NR = 2 * VL;                // output channels per micro-tile
constexpr int64_t MR = VL == 16 ? 12 : 6;     // tiles per micro-tile (2 MR + 3 <= registers)
constexpr int64_t NPOS = 36;                  // 6 x 6 transform positions
constexpr int64_t V_BYTES = 512 * 1024;       // target size of a block's V (L2-resident)
static_assert(PANEL % NR == 0, "a weight panel holds whole micro-tiles");

// B^T d for one column of 6 vectors (points 0, 1, -1, 1/2, -2, infinity).
static inline void bt6(const vf d[6], vf r[6]) {
  const vf h = bcastf(0.5f), one5 = bcastf(1.5f), two = bcastf(2.0f), two5 = bcastf(2.5f);
  r[0] = fmadd(one5, d[3] - d[1], d[0] + d[4]) - two * d[2];
  r[1] = fmadd(h, d[2], fmadd(two5, d[3], d[4] - d[1]));
  r[2] = fmadd(h, d[3], fnmadd(two5, d[2], d[1] + d[4]));
  r[3] = fmadd(two, d[3] - d[1], d[4] - d[2]);
  r[4] = fmadd(h, d[1] - d[3], d[4] - d[2]);
  r[5] = fmadd(one5, d[4] - d[2], d[1] + d[5]) - two * d[3];
}

// A^T m for one column of 6 vectors -> 4.
static inline void at6(const vf m[6], vf y[4]) {
  const vf s12 = m[1] + m[2], d12 = m[1] - m[2];
  y[0] = s12 + m[0] + m[3] + m[4];
  y[1] = fmadd(bcastf(0.5f), m[3], fnmadd(bcastf(2.0f), m[4], d12));
  y[2] = fmadd(bcastf(0.25f), m[3], fmadd(bcastf(4.0f), m[4], s12));
  y[3] = fmadd(bcastf(0.125f), m[3], fnmadd(bcastf(8.0f), m[4], d12)) + m[5];
}

// c[r][0..NV VL) = sum_k a[r * lda + k] * b[k * PANEL + 0..NV VL), r < MR; NV = 2 (NR
// channels) or 1 (the last VL channels of a narrower panel: K = 16 on AVX-512 would
// otherwise multiply 16 columns of zero padding). The accumulators stay in registers: every
// index below is a constant once the loops are unrolled.
template <int NV>
static inline void micro_kernel(const float* a, int64_t lda, const float* b, int64_t C,
                                float* c) {
  vf acc[MR][NV];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NV; ++j) acc[r][j] = zerof();
  for (int64_t k = 0; k < C; ++k) {
    vf bv[NV];
    for (int j = 0; j < NV; ++j) bv[j] = loadf(b + k * PANEL + j * VL);
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      const vf av = bcastf(a[r * lda + k]);
      for (int j = 0; j < NV; ++j) acc[r][j] = fmadd(av, bv[j], acc[r][j]);
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NV; ++j) storef(c + r * PANEL + j * VL, acc[r][j]);
}

struct Geometry {
  int64_t B, C, H, W, K, tiles_h, tiles_w, tiles;
  // tile index -> (batch, top-left input row and column of its 6 x 6 window)
  void locate(int64_t t, int64_t& b, int64_t& h0, int64_t& w0) const {
    b = t / (tiles_h * tiles_w);
    const int64_t r = t % (tiles_h * tiles_w);
    h0 = (r / tiles_w) * 4 - 1;
    w0 = (r % tiles_w) * 4 - 1;
  }
};

// Stores one vector of V: float32 as is, or rounded to bfloat16 (nearest, ties to even: the
// rounding torch's .to(torch.bfloat16) does for finite values) for the AVX-512 BF16 path.
static inline void store_v(float* p, vf v) { storef(p, v); }
static inline void store_v_bf16(uint16_t* p, vf v) {
  typedef typename lanes<vf>::ints vi;
  typedef uint16_t vh __attribute__((vector_size(VL * 2)));
  vi bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const vi rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16;
  const vh half = __builtin_convertvector(rounded, vh);
  std::memcpy(p, &half, sizeof(half));
}

// V[xi][tl][c] for the block's tiles: B^T d B per 6 x 6 window, channels VL at a time.
template <class Out, void (*Store)(Out*, vf)>
static void input_transform(const float* x, const Geometry& g, int64_t t0, int64_t nt,
                            int64_t T, Out* V) {
  const int64_t C = g.C, row = g.W * C;
  for (int64_t tl = 0; tl < nt; ++tl) {
    int64_t b, h0, w0;
    g.locate(t0 + tl, b, h0, w0);
    const float* xb = x + b * g.H * row;
    const bool inside = h0 >= 0 && w0 >= 0 && h0 + 6 <= g.H && w0 + 6 <= g.W;
    for (int64_t c = 0; c < C; c += VL) {
      vf d[6][6], t[6][6];
      for (int i = 0; i < 6; ++i)
        for (int j = 0; j < 6; ++j) {
          const int64_t h = h0 + i, w = w0 + j;
          d[i][j] = (inside || (h >= 0 && h < g.H && w >= 0 && w < g.W))
                        ? loadf(xb + h * row + w * C + c) : zerof();
        }
      for (int j = 0; j < 6; ++j) {           // columns: t[.][j] = B^T d[.][j]
        vf col[6], out[6];
        for (int i = 0; i < 6; ++i) col[i] = d[i][j];
        bt6(col, out);
        for (int i = 0; i < 6; ++i) t[i][j] = out[i];
      }
      for (int i = 0; i < 6; ++i) {           // rows: V[i][.] = t[i][.] B
        vf out[6];
        bt6(t[i], out);
        for (int j = 0; j < 6; ++j) Store(V + ((i * 6 + j) * T + tl) * C + c, out[j]);
      }
    }
  }
}

// y for output channels [k0, k0 + PANEL) of the block's tiles from M[xi][tl][0..PANEL).
static void output_transform(const float* M, const float* bias, const Geometry& g,
                             int64_t t0, int64_t nt, int64_t T, int64_t k0, float* y) {
  const int64_t K = g.K, row = g.W * K, kend = std::min(PANEL, K - k0);
  for (int64_t tl = 0; tl < nt; ++tl) {
    int64_t b, h0, w0;
    g.locate(t0 + tl, b, h0, w0);
    ++h0;                                      // output tile's top-left pixel
    ++w0;
    float* yb = y + b * g.H * row;
    for (int64_t kk = 0; kk < kend; kk += VL) {
      vf s[4][6];
      for (int j = 0; j < 6; ++j) {            // columns: s[.][j] = A^T m[.][j]
        vf col[6], out[4];
        for (int i = 0; i < 6; ++i) col[i] = loadf(M + ((i * 6 + j) * T + tl) * PANEL + kk);
        at6(col, out);
        for (int a = 0; a < 4; ++a) s[a][j] = out[a];
      }
      const vf bv = loadf(bias + k0 + kk);
      for (int a = 0; a < 4 && h0 + a < g.H; ++a) {   // rows: y[a][.] = s[a][.] A
        vf out[4];
        at6(s[a], out);
        for (int q = 0; q < 4 && w0 + q < g.W; ++q)
          storef(yb + (h0 + a) * row + (w0 + q) * K + k0 + kk, out[q] + bv);
      }
    }
  }
}

#if DSD_HAVE_AVX512
// c[r][0..32) = sum_k a[r][k] * b[k][0..32) over C = 2 * pairs input channels, a (bfloat16
// pairs, row stride lda elements) broadcast a pair at a time, b (pairs x 32 x 2 bfloat16).
// Its own function with the instruction set enabled (the caller runs on CPUs checked first).
__attribute__((target("avx512bf16"), noinline))
static void micro_kernel_bf16(const uint16_t* a, int64_t lda, const uint16_t* b,
                              int64_t pairs, float* c) {
  static_assert(VL == 16 && MR == 12, "the bfloat16 kernel is for the AVX-512 build");
  __m512 acc[MR][2];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < pairs; ++k) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + k * 64);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + k * 64 + 32);
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * k, sizeof(pair));
      const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) {
    _mm512_storeu_ps(c + r * PANEL, acc[r][0]);
    _mm512_storeu_ps(c + r * PANEL + VL, acc[r][1]);
  }
}
#endif

// The 36 products of one weight panel (output channels [p * 32, p * 32 + width)) for the
// block's nt tiles: M[xi][tl][0..32) = V[xi][tl][.] @ U[p][xi][.][0..32). Rows past nt read
// stale V and are never stored.
static void products_f32(const float* V, const float* up_p, int64_t T, int64_t nt, int64_t C,
                         int64_t width, float* M) {
  for (int64_t xi = 0; xi < NPOS; ++xi)
    for (int64_t sub = 0; sub < width; sub += NR)
      for (int64_t tp = 0; tp < nt; tp += MR) {
        const float* a = V + (xi * T + tp) * C;
        const float* b = up_p + xi * C * PANEL + sub;
        float* c = M + (xi * T + tp) * PANEL + sub;
        if (width - sub <= VL) micro_kernel<1>(a, C, b, C, c);
        else micro_kernel<2>(a, C, b, C, c);
      }
}

#if DSD_HAVE_AVX512
static void products_bf16(const uint16_t* V, const uint16_t* up_p, int64_t T, int64_t nt,
                          int64_t C, int64_t /*width: the kernel does whole panels*/,
                          float* M) {
  for (int64_t xi = 0; xi < NPOS; ++xi)
    for (int64_t tp = 0; tp < nt; tp += MR)
      micro_kernel_bf16(V + (xi * T + tp) * C, C, up_p + xi * C * PANEL, C / 2,
                        M + (xi * T + tp) * PANEL);
}
#endif

// Both forms' checks and loop. Elem: V's and u's element type (float, or uint16_t holding
// bfloat16). u_shape: what u must be, for the message.
template <class Elem, void (*Store)(Elem*, vf),
          void (*Products)(const Elem*, const Elem*, int64_t, int64_t, int64_t, int64_t, float*)>
static at::Tensor run(const char* name, const at::Tensor& x_in, const at::Tensor& u_in,
                      const at::Tensor& bias_in, at::ScalarType u_type) {
  TORCH_CHECK(x_in.device().is_cpu() && x_in.scalar_type() == at::kFloat &&
                  bias_in.device().is_cpu() && bias_in.scalar_type() == at::kFloat &&
                  u_in.device().is_cpu() && u_in.scalar_type() == u_type,
              "dsd_fast::", name, ": float32 x and bias, ", u_type, " u, on the CPU expected, "
              "got ", x_in.scalar_type(), ", ", bias_in.scalar_type(), ", ", u_in.scalar_type());
  TORCH_CHECK(x_in.dim() == 4, "dsd_fast::", name, ": x must be (B, C, H, W), got ",
              x_in.sizes());
  const int64_t B = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  const int64_t K = bias_in.numel();
  TORCH_CHECK(C % 16 == 0 && K % 16 == 0, "dsd_fast::", name,
              ": input and output channels must be multiples of 16, got ", C, " and ", K);
  const int64_t panels = (K + PANEL - 1) / PANEL;
  // float32: (panels, 36, C, 32); bfloat16: (panels, 36, C / 2, 32, 2): the same elements
  const bool pairs = sizeof(Elem) == 2;
  TORCH_CHECK(u_in.dim() == (pairs ? 5 : 4) && u_in.size(0) == panels && u_in.size(1) == NPOS &&
                  u_in.size(2) == (pairs ? C / 2 : C) && u_in.size(3) == PANEL &&
                  (!pairs || u_in.size(4) == 2),
              "dsd_fast::", name, ": u must be (", panels, ", 36, ", pairs ? C / 2 : C,
              pairs ? ", 32, 2)" : ", 32)", " for ", C, " input and ", K, " output channels ",
              pairs ? "(ops.winograd_weight_bf16)" : "(ops.winograd_weight)", ", got ",
              u_in.sizes());
  // NHWC storage: x.permute(0, 2, 3, 1) is contiguous for a channels_last x (free) and is
  // made so otherwise (a copy).
  const at::Tensor x = x_in.permute({0, 2, 3, 1}).contiguous();
  const at::Tensor u = u_in.contiguous(), bias = bias_in.contiguous();
  at::Tensor y = at::empty({B, K, H, W},
                           x_in.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (B * H * W == 0) return y;

  Geometry g{B, C, H, W, K, (H + 3) / 4, (W + 3) / 4, 0};
  g.tiles = B * g.tiles_h * g.tiles_w;
  // Tiles per block: V (36 x T x C elements) near V_BYTES, a whole number of micro-tiles,
  // and at least one block per thread where there are tiles enough (the low-resolution
  // layers have few: 20 at 8 x 8, batch 5; one block would leave the other threads idle).
  int64_t T = std::max<int64_t>(1, V_BYTES / (NPOS * C * (int64_t)sizeof(Elem)) / MR) * MR;
  const int64_t per_thread = (g.tiles + at::get_num_threads() - 1) / at::get_num_threads();
  T = std::min(T, std::max<int64_t>(1, (per_thread + MR - 1) / MR) * MR);
  const int64_t blocks = (g.tiles + T - 1) / T;
  const float* xp = x.data_ptr<float>();
  const Elem* up = static_cast<const Elem*>(u.data_ptr());
  const float* bp = bias.data_ptr<float>();
  float* yp = y.data_ptr<float>();

  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<Elem> V(NPOS * T * C);
    std::vector<float> M(NPOS * T * PANEL);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t t0 = blk * T, nt = std::min(T, g.tiles - t0);
      input_transform<Elem, Store>(xp, g, t0, nt, T, V.data());
      for (int64_t p = 0; p < panels; ++p) {
        Products(V.data(), up + p * NPOS * C * PANEL, T, nt, C,
                 std::min(PANEL, K - p * PANEL), M.data());
        output_transform(M.data(), bp, g, t0, nt, T, p * PANEL, yp);
      }
    }
  });
  return y;
}

}  // namespace

at::Tensor winograd_conv3x3_cpu(const at::Tensor& x, const at::Tensor& u,
                                const at::Tensor& bias) {
  return run<float, store_v, products_f32>("winograd_conv3x3", x, u, bias, at::kFloat);
}

at::Tensor winograd_conv3x3_bf16_cpu(const at::Tensor& x, const at::Tensor& u,
                                     const at::Tensor& bias) {
#if DSD_HAVE_AVX512
  return run<uint16_t, store_v_bf16, products_bf16>("winograd_conv3x3_bf16", x, u, bias,
                                                    at::kBFloat16);
#else
  (void)x; (void)u; (void)bias;
  TORCH_CHECK(false, "dsd_fast::winograd_conv3x3_bf16 is in the AVX-512 build of the kernels "
              "only (this is the ", DSD_LANES == 8 ? "AVX2" : "portable", " one)");
  return at::Tensor();
#endif
}

}  // namespace dsd
