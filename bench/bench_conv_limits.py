"""How far float32 convolution can go on this CPU, and where the published isic2018 network
stands against ONNX Runtime per thread count (the CPU-speed issue's float32 target).

    python bench/bench_conv_limits.py [--threads 1,2] [--repeats 5] [--no-peers]

Three measurements, one process:
  1. oneDNN's 3x3 convolution (torch.nn.functional.conv2d) at the isic2018 network's costliest
     shapes (batch 5 = one ensemble), NCHW and channels_last, GFLOP/s per thread count: the
     float32 ceiling a direct-convolution engine reaches here;
  2. the isic2018 fast forward against ONNX Runtime (the reference exported as
     `dsd-fast export --onnx` does) at each thread count, output checked first;
  3. Winograd F(2x2, 3x3) written with PyTorch ops (input transform, 16 batched matmuls,
     output transform) against the direct convolution at the same shapes, and its batched
     matmul alone: whether fewer multiplications pay when the transforms are separate passes.
Needs onnxruntime for 2 (the [bench] extra); --no-peers skips it.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from bench_peers import median_ms

# (batch, C_in, size, C_out): the 3x3 convolutions that take most of an isic2018 forward
# (torch.profiler, fast model): 61% of its convolution time is at these four shapes.
SHAPES = [(5, 320, 128, 128), (5, 128, 128, 128), (5, 448, 64, 256), (5, 256, 64, 256)]


def conv_gflops(shape, layout, repeats) -> float:
    n, ci, s, co = shape
    x = torch.randn(n, ci, s, s).contiguous(memory_format=layout)
    w = torch.randn(co, ci, 3, 3).contiguous(memory_format=layout)
    b = torch.randn(co)
    ms = median_ms(lambda: F.conv2d(x, w, b, padding=1), repeats)
    return 2 * n * ci * co * 9 * s * s / ms / 1e6


# Winograd F(2x2, 3x3) (Lavin & Gray 2016): Y = A^T [(G g G^T) . (B^T d B)] A per 4x4 tile
# d with stride 2, 16 multiplications per 2x2 outputs instead of 36.
_G = torch.tensor([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])


def winograd_weight(w: torch.Tensor) -> torch.Tensor:
    """(K, C, 3, 3) -> (16, C, K): G w G^T per (k, c), laid out for the batched matmul."""
    u = torch.einsum("ai,kcij,bj->abck", _G, w, _G)
    return u.reshape(16, w.shape[1], w.shape[0]).contiguous()


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """conv2d(x, w, bias, padding=1) for even H, W, from u = winograd_weight(w)."""
    n, c, h, w = x.shape
    k = u.shape[2]
    d = F.pad(x, (1, 1, 1, 1)).unfold(2, 4, 2).unfold(3, 4, 2)      # (N, C, th, tw, 4, 4)
    th, tw = d.shape[2:4]
    d0, d1, d2, d3 = d.unbind(-2)                                      # B^T d: rows
    r = torch.stack((d0 - d2, d1 + d2, d2 - d1, d1 - d3), 0)
    e0, e1, e2, e3 = r.unbind(-1)                                      # (B^T d) B: columns
    v = torch.stack((e0 - e2, e1 + e2, e2 - e1, e1 - e3), 1)          # (4, 4, N, C, th, tw)
    v = v.permute(0, 1, 2, 4, 5, 3).reshape(16, n * th * tw, c)
    m = torch.bmm(v, u).view(4, 4, n, th, tw, k)
    m0, m1, m2, m3 = m.unbind(0)                                       # A^T m: rows
    s = torch.stack((m0 + m1 + m2, m1 - m2 - m3), 0)
    s0, s1, s2, s3 = s.unbind(1)                                       # (A^T m) A: columns
    y = torch.stack((s0 + s1 + s2, s1 - s2 - s3), 1)                   # (2, 2, N, th, tw, K)
    y = y.permute(2, 5, 3, 0, 4, 1).reshape(n, k, 2 * th, 2 * tw)
    return y + bias.view(1, -1, 1, 1)


def run_winograd(repeats: int) -> None:
    print("Winograd F(2x2,3x3) in PyTorch ops vs the direct convolution (ms, float32):")
    for n, ci, s, co in SHAPES:
        x = torch.randn(n, ci, s, s)
        w = torch.randn(co, ci, 3, 3) / (9 * ci) ** 0.5
        b = torch.randn(co)
        u = winograd_weight(w)
        want = F.conv2d(x, w, b, padding=1)
        err = float((winograd_conv3x3(x, u, b) - want).abs().max() / want.abs().max())
        direct = median_ms(lambda: F.conv2d(x, w, b, padding=1), repeats)
        wino = median_ms(lambda: winograd_conv3x3(x, u, b), repeats)
        v = torch.randn(16, n * (s // 2) ** 2, ci)
        mm = median_ms(lambda: torch.bmm(v, u), repeats)
        mm_rate = 2 * 16 * v.shape[1] * ci * co / mm / 1e6
        print(f"  {(n, ci, s, co)}: direct {direct:.0f}, Winograd {wino:.0f} "
              f"({direct / wino:.2f}x), its batched matmul alone {mm:.0f} "
              f"({mm_rate:.0f} GFLOP/s), max error {err:.1e}")


def run_peers(threads, repeats: int) -> None:
    import onnxruntime as ort

    import dsd_fast
    from dsd_fast.cli.export import export_onnx
    from dsd_fast.families.dermosegdiff import DERMOSEGDIFF
    torch.manual_seed(0)
    net = dsd_fast.build_model(dsd_fast.get_config("isic2018")).eval()
    fast = DERMOSEGDIFF.fast_model_for(net)
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(5, 1, 128, 128, generator=g), torch.rand(5, 3, 128, 128, generator=g),
            torch.full((5,), 120, dtype=torch.long))
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        want = net(*args)
        (path,) = export_onnx(net, Path(tmp) / "isic2018.onnx", batch=5)
        for th in threads:
            torch.set_num_threads(th)
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.inter_op_num_threads = th, 1
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)}
            err_f = float((fast(*args) - want).abs().max() / want.abs().max())
            err_o = float((torch.from_numpy(sess.run(None, feeds)[0]) - want).abs().max()
                          / want.abs().max())
            t_fast = median_ms(lambda: fast(*args), repeats)
            t_ort = median_ms(lambda: sess.run(None, feeds), repeats)
            print(f"isic2018 forward, {th} thread(s): fast {t_fast / 1000:.2f} s, ONNX Runtime "
                  f"{t_ort / 1000:.2f} s, ORT / fast {t_ort / t_fast:.2f} "
                  f"(errors {err_f:.1e}, {err_o:.1e})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-peers", action="store_true")
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    torch.set_flush_denormal(True)
    print(f"torch {torch.__version__}")
    with torch.no_grad():
        for th in threads:
            torch.set_num_threads(th)
            for layout, name in ((torch.contiguous_format, "NCHW"), (torch.channels_last, "NHWC")):
                rates = [conv_gflops(s, layout, a.repeats) for s in SHAPES]
                print(f"3x3 conv float32 {name}, {th} thread(s), GFLOP/s at "
                      + ", ".join(f"{s}: {r:.0f}" for s, r in zip(SHAPES, rates)), flush=True)
        torch.set_num_threads(1)
        run_winograd(a.repeats)
    if not a.no_peers:
        run_peers(threads, max(3, a.repeats // 2))


if __name__ == "__main__":
    main()
