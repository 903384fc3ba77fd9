"""dsd_fast against the engines users would reach for, on the same model and inputs, one run.

    python bench/bench_peers.py [--models default,w32,isic2018,msd128,diffseg] [--repeats 3]
                                [--no-compile] [--segment]

Per model (random weights; batch 5 = one ensemble; 2 torch threads, 2 intra-op threads for
the peers): reference eager, torch.compile(reference), dsd_fast fast, ONNX Runtime (CPU EP,
the model exported by `dsd-fast export --onnx`'s code), OpenVINO (CPU, fp32 and, as the bf16 peer, its bf16 hint, converted with
ov.convert_model from the torch module: its ONNX reader rejects the FF-parser's DFT nodes);
and the fast network under precision="bf16" (autocast; this CPU's native bfloat16);
median milliseconds, each one's max error against the reference (as a fraction of the
output's scale), and GFLOP/s against a peak measured in the same run with the op the
networks are made of: a 3x3 convolution (256 -> 256 channels at 64 x 64, batch 5) in float32
and bfloat16, NCHW and channels_last. --segment adds segment() end to end on one PH2 image
with the bundled model: fast against the same DDIM loop driving an ONNX Runtime session.
Needs the [bench] extra (onnxruntime, onnxscript, openvino).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PH2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "ph2"


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def conv_peak(repeats: int) -> dict:
    """GFLOP/s of a (5, 256, 64, 64) -> 256, 3x3 convolution, per dtype and layout."""
    out = {}
    flops = 2 * 5 * 256 * 256 * 9 * 64 * 64
    for dtype in (torch.float32, torch.bfloat16):
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(5, 256, 64, 64).to(dtype).contiguous(memory_format=layout)
            w = torch.randn(256, 256, 3, 3).to(dtype).contiguous(memory_format=layout)
            ms = median_ms(lambda: F.conv2d(x, w, padding=1), repeats)
            name = f"{str(dtype).replace('torch.', '')} {'NHWC' if layout is torch.channels_last else 'NCHW'}"
            out[name] = flops / ms / 1e6
    return out


def models(names):
    import dsd_fast
    from dsd_fast.families.diffseg import DIFFSEG, DiffSegConfig
    from dsd_fast.families.medsegdiff import MEDSEGDIFF, MedSegDiffConfig
    table = {
        "default": lambda: dsd_fast.build_model(dsd_fast.get_config("default")),
        "w32": lambda: dsd_fast.build_model(dsd_fast.ModelConfig(
            32, 32, (1, 2, 4, 4), (1, 2, 4, 4), 8, ff_parser=True, image_size=128)),
        "isic2018": lambda: dsd_fast.build_model(dsd_fast.get_config("isic2018")),
        "msd128": lambda: MEDSEGDIFF.build_reference(MedSegDiffConfig(64, 128)),
        "diffseg": lambda: DIFFSEG.build_reference(DiffSegConfig()),
    }
    for n in names:
        torch.manual_seed(0)
        yield n, table[n]().eval()


def inputs(net, family, batch=5):
    c = family.config_of(net)
    s = family.preprocessing(c).image_size
    g = torch.Generator().manual_seed(0)
    t = torch.full((batch,), 0 if not family.mask_diffusion else 120, dtype=torch.long)
    if family.mask_diffusion:
        return (torch.randn(batch, 1, s, s, generator=g), torch.rand(batch, 3, s, s, generator=g), t)
    return (torch.randn(batch, 3, s, s, generator=g), t)


def run_models(names, repeats, compile_ref) -> None:
    import onnxruntime as ort
    import openvino as ov

    from dsd_fast.cli.export import export_onnx
    from dsd_fast.diffusion import flush_denormals
    from dsd_fast.families import family_of_network
    from dsd_fast.precision import Bf16Denoiser
    from torch.utils.flop_counter import FlopCounterMode
    peak = conv_peak(repeats)
    print("conv 3x3 peak, GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peak.items()))
    print("GFLOP counts the network's direct-convolution multiply-adds; the fast model runs "
          "its 3x3 convolutions by Winograd F(4x4, 3x3) (fewer), so its GFLOP/s is an "
          "effective rate and may pass the direct convolution's peak")
    f32 = max(v for k, v in peak.items() if k.startswith("float32"))
    bf = max(v for k, v in peak.items() if k.startswith("bfloat16"))
    header = (f"{'model':<10}{'GFLOP':>7}{'ref':>9}{'compile':>9}{'fast':>9}{'ORT':>9}"
              f"{'OpenVINO':>9}{'fast/best peer':>15}{'fast GFLOP/s':>13}{'% f32 peak':>11}"
              f"{'fast bf16':>10}{'bf16/fast':>10}{'% bf16 peak':>12}{'OV bf16':>9}"
              "   max err (fast, ORT, OV, bf16)")
    print(header)
    for name, net in models(names):
        fam = family_of_network(net)
        args = inputs(net, fam)
        with torch.no_grad():
            with FlopCounterMode(display=False) as fc:
                want = net(*args)
            gflop = fc.get_total_flops() / 1e9
            fast = fam.fast_model_for(net)
            ms, errs = {}, {}
            with flush_denormals():
                ms["ref"] = median_ms(lambda: net(*args), repeats)
                if compile_ref:
                    comp = torch.compile(net)
                    ms["compile"] = median_ms(lambda: comp(*args), repeats)
                ms["fast"] = median_ms(lambda: fast(*args), repeats)
                errs["fast"] = float((fast(*args) - want).abs().max() / want.abs().max())
                bf16 = Bf16Denoiser(fast)
                ms["bf16"] = median_ms(lambda: bf16(*args), repeats)
                errs["bf16"] = float((bf16(*args) - want).abs().max() / want.abs().max())
        with tempfile.TemporaryDirectory() as tmp:
            (path,) = export_onnx(net, Path(tmp) / f"{name}.onnx", batch=5)
            so = ort.SessionOptions()
            so.intra_op_num_threads = torch.get_num_threads()
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)}
            ms["ORT"] = median_ms(lambda: sess.run(None, feeds), repeats)
            errs["ORT"] = float(np.abs(sess.run(None, feeds)[0] - want.numpy()).max()
                                / want.abs().max())
            # OpenVINO's ONNX reader rejects the DFT nodes of the FF-parser's export (dynamic
            # rank after DFT), so OpenVINO gets the model through its own PyTorch frontend.
            ov_model = ov.convert_model(net, example_input=args)
            compiled = ov.Core().compile_model(ov_model, "CPU",
                                          {"INFERENCE_NUM_THREADS": torch.get_num_threads(),
                                           "INFERENCE_PRECISION_HINT": "f32"})
            req = compiled.create_infer_request()
            ov_in = [a.numpy() for a in args]
            ms["OpenVINO"] = median_ms(lambda: req.infer(ov_in), repeats)
            errs["OV"] = float(np.abs(req.infer(ov_in)[0] - want.numpy()).max()
                               / want.abs().max())
            # OpenVINO's own default on a CPU with native bfloat16: the bf16 peer
            req16 = ov.Core().compile_model(ov_model, "CPU", {
                "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                "INFERENCE_PRECISION_HINT": "bf16"}).create_infer_request()
            ms["OV bf16"] = median_ms(lambda: req16.infer(ov_in), repeats)
        best_peer = min(ms["ORT"], ms["OpenVINO"])
        rate = gflop / ms["fast"] * 1000
        print(f"{name:<10}{gflop:>7.1f}{ms['ref']:>9.1f}{ms.get('compile', float('nan')):>9.1f}"
              f"{ms['fast']:>9.1f}{ms['ORT']:>9.1f}{ms['OpenVINO']:>9.1f}"
              f"{best_peer / ms['fast']:>14.2f}x{rate:>13.0f}{100 * rate / f32:>10.0f}%"
              f"{ms['bf16']:>10.1f}{ms['fast'] / ms['bf16']:>9.2f}x"
              f"{100 * gflop / ms['bf16'] * 1000 / bf:>11.0f}%{ms['OV bf16']:>9.1f}"
              f"   {errs['fast']:.1e}, {errs['ORT']:.1e}, {errs['OV']:.1e}, {errs['bf16']:.1e}",
              flush=True)


def run_segment(repeats: int) -> None:
    """segment() of one PH2 image, 25 x 5, bundled model: fast vs an ORT-driven DDIM loop."""
    import onnxruntime as ort

    import dsd_fast
    from dsd_fast.cli.export import export_onnx
    from dsd_fast.diffusion import DDIMSampler, initial_noise
    from dsd_fast.images import to_chw
    pipe = dsd_fast.load()
    path = PH2 / "images" / f"{(PH2 / 'val.txt').read_text().split()[0]}.png"
    # 25 steps x 5 members spelled out: the bundled weights' own defaults are 25 members x 5
    # steps (batch 25), which would not be the loop the ORT side runs
    fast = median_ms(lambda: pipe.segment(path, backend="fast", steps=25, ensemble=5,
                                          spacing="leading"), repeats) / 1000
    with tempfile.TemporaryDirectory() as tmp:
        (onnx_path,) = export_onnx(pipe.model, Path(tmp) / "m.onnx", batch=5)
        so = ort.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]

        def ort_eps(x, image, t):
            return torch.from_numpy(sess.run(None, dict(zip(names, (x.numpy(), image.numpy(),
                                                                   t.numpy()))))[0])

        def ort_segment():
            chw = to_chw(path)
            inp = pipe.model_input([chw]).repeat_interleave(5, dim=0)
            x0 = DDIMSampler(pipe.schedule, 25).sample(ort_eps, inp, None,
                                                       x_init=initial_noise([0], 5, 64, 0))
            from dsd_fast.results import samples_to_result
            return samples_to_result(x0.view(5, 64, 64), tuple(chw.shape[1:]))
        onnx_s = median_ms(ort_segment, repeats) / 1000
    print(f"segment(), one PH2 image, DDIM 25 x 5, bundled model: fast {fast:.2f} s, "
          f"ONNX Runtime-driven loop {onnx_s:.2f} s ({onnx_s / fast:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="default,w32,isic2018,msd128,diffseg")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--segment", action="store_true")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    run_models(args.models.split(","), args.repeats, not args.no_compile)
    if args.segment:
        run_segment(args.repeats)


if __name__ == "__main__":
    main()
