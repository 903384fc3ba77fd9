"""`dsd-fast doctor`: what this machine runs and whether it runs it right, for bug reports.

Prints the versions (dsd_fast, Python, torch, triton, CUDA), the CPU's vector extensions,
the GPUs, which implementation each fused op uses on each device and why, a parity check of
every op there against its PyTorch twin, and one timed denoiser step per backend. Exit
status 1 when a parity check fails (or a GPU's kernels cannot be used), else 0.
"""
from __future__ import annotations

import platform
import sys
import time

import torch

CPU_FLAGS = ("sse4_2", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
             "amx_tile")
OPS = ("ff_parser", "group_norm_silu", "gated_conv1x1", "linear_attention")


def cpu_description() -> tuple[str, list[str]]:
    from ..ops.cpu import cpu_flags          # the same flags the kernel build is chosen by
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = cpu_flags() or set()
    return name, [f for f in CPU_FLAGS if f in flags]


def op_inputs(name: str, device: str, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)
    if name == "ff_parser":
        return (r(2, 8, 16, 16), torch.randn(8, 16, 9, 2, generator=g).to(device))
    if name == "group_norm_silu":
        return (r(2, 16, 12, 12), r(16), r(16), 4, 1e-5, r(2, 16), r(2, 16))
    if name == "gated_conv1x1":
        return (r(2, 12, 10, 10), r(8, 12, 1, 1) / 4, r(8), r(2, 8, 10, 10))
    if name == "winograd_conv3x3":
        from ..ops.winograd import winograd_weight
        x = r(2, 16, 10, 7).contiguous(memory_format=torch.channels_last)
        return (x, winograd_weight(r(32, 16, 3, 3) / 12).to(device), r(32))
    return (r(2, 16, 9, 9), r(384, 16) / 4, r(16, 128) / 11, r(16))


def parity(name: str, device: str, impl) -> tuple[bool, float]:
    """(ok, max |impl - twin| / scale) on fixed random inputs."""
    from ..ops import reference as ref
    from ..ops import winograd
    from ..ops.guard import close_enough
    args = op_inputs(name, device)
    with torch.no_grad():
        twin = getattr(winograd if name == "winograd_conv3x3" else ref, f"{name}_ref")
        want = twin(*args)
        got = impl(*args)
    return close_enough(got, want)


def implementations(device: str) -> dict[str, tuple[str, object]]:
    """op -> (what runs and why, callable) on `device`."""
    from .. import ops
    out = {}
    if device == "cpu":
        for name in OPS:
            if ops.AVAILABLE:
                out[name] = (f"C++ kernel, {ops.ISA} build (dsd_fast._C_{ops.ISA})",
                             getattr(ops, name))
            else:
                out[name] = (f"PyTorch twin: {ops.CPU_REASON}", None)
        # the fast models' 3x3 convolutions (families/shared/winograd.py)
        if ops.WINOGRAD:
            bf16 = ("; its bfloat16 form for precision='bf16' too" if ops.WINOGRAD_BF16
                    else "; precision='bf16' keeps oneDNN's bfloat16 convolution")
            out["winograd_conv3x3"] = (f"C++ kernel, {ops.ISA} build{bf16}",
                                       ops.winograd_conv3x3)
        else:
            out["winograd_conv3x3"] = ("not used: the fast models' 3x3 convolutions are "
                                       "oneDNN's direct ones (" + (ops.CPU_REASON or
                                       "the extension predates the op: rebuild it") + ")",
                                       None)
        return out
    from ..ops.guard import kernel_mode
    registered = ops.fast_path_available(device)
    for name in OPS:
        if name == "linear_attention":
            out[name] = ("reassociated PyTorch (no Triton kernel)", None)
        elif registered:
            check = ", checked against its twin on first use" if kernel_mode() == "auto" else ""
            out[name] = (f"Triton kernel ({kernel_mode()}{check})", _direct_triton(name))
        else:
            why = ("DSD_FAST_KERNELS=reference" if kernel_mode() == "reference"
                   else "Triton unavailable")
            out[name] = (f"PyTorch twin ({why})", None)
    return out


def _direct_triton(name: str):
    """The Triton kernel itself, unguarded: the doctor wants its own verdict."""
    from ..ops.triton import ff_parser, gated_conv1x1, group_norm_silu
    return {"ff_parser": lambda x, w: ff_parser.ff_parser(x, w),
            "group_norm_silu": group_norm_silu.group_norm_silu,
            "gated_conv1x1": gated_conv1x1.gated_conv1x1}[name]


def time_denoiser(device: str) -> dict[str, float]:
    """Milliseconds of one forward of the bundled default config at batch 5, per backend."""
    from ..diffusion import flush_denormals
    from ..families import find_config
    fam, config = find_config("default")
    net = fam.build_reference(config).eval().to(device)
    x = torch.randn(5, 1, 64, 64, device=device)
    img = torch.rand(5, 3, 64, 64, device=device)
    t = torch.full((5,), 120, device=device, dtype=torch.long)
    out = {}
    for backend, model in (("reference", net), ("fast", fam.fast_model_for(net))):
        with torch.no_grad(), flush_denormals():
            model(x, img, t)
            model(x, img, t)
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(3):
                model(x, img, t)
            if device == "cuda":
                torch.cuda.synchronize()
        out[backend] = (time.perf_counter() - t0) / 3 * 1000
    return out


def run(out=None, timing: bool = True) -> int:
    from ..version import __version__
    out = out or sys.stdout
    bad = 0

    def say(*a):
        print(*a, file=out)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    say(f"dsd_fast {__version__}  Python {platform.python_version()}  torch "
        f"{torch.__version__}  triton {triton_version}  CUDA {torch.version.cuda or 'none'}")
    name, flags = cpu_description()
    say(f"CPU: {name}; {torch.get_num_threads()} torch threads; extensions: "
        f"{' '.join(flags) or 'none found'}")
    devices = ["cpu"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            say(f"GPU {i}: {p.name}, compute capability {p.major}.{p.minor}, "
                f"{p.total_memory / 2**30:.0f} GiB")
        devices.append("cuda")
    else:
        say("GPU: none visible to torch")
    for device in devices:
        say(f"\nops on {device}:")
        for op, (what, impl) in implementations(device).items():
            line = f"  {op:<18}{what}"
            if impl is not None:
                try:
                    ok, err = parity(op, device, impl)
                    line += f"; parity {'ok' if ok else 'FAILED'} (max error {err:.2g} of scale)"
                except Exception as e:
                    ok = False
                    line += f"; parity FAILED ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
                bad += not ok
            say(line)
        if timing:
            ms = time_denoiser(device)
            say(f"  denoiser step (default config, batch 5): reference {ms['reference']:.1f} ms, "
                f"fast {ms['fast']:.1f} ms")
    say("\nall checks passed" if not bad else f"\n{bad} check(s) FAILED")
    return 1 if bad else 0
