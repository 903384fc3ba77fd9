"""Ahead-of-time compilation of the Triton kernels for NVIDIA GPUs, on any machine.

`triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))` builds PTX and a cubin
with the ptxas that ships with triton: no GPU needed. What a GPU would refuse at launch
shows here: a block's shared memory (`metadata.shared`) above the device's limit. This
module lists the kernel configurations the launchers choose for the shapes the engine
runs (`shape_classes`) and compiles them (`compile_class`); tests/ops/test_triton_aot.py
compiles a subset in CI, bench/aot_compile.py all of them (a 64 px FF-Parser takes ~2
minutes of CPU per architecture).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Opt-in shared memory per block (bytes), CUDA programming guide's table.
SHARED_LIMIT = {80: 166_912, 86: 101_376, 89: 101_376, 90: 232_448}
ARCHS = (80, 90)                   # A100; H100 / H200


@dataclass(frozen=True)
class KernelClass:
    kernel: str                    # "ff_parser", "gn_stats", "gn_apply", "gated_conv1x1"
    signature: dict = field(hash=False, compare=False)
    constexprs: dict = field(hash=False, compare=False)
    num_warps: int = 4
    num_stages: int = 3
    label: str = ""


def _ints(names):
    return {n: "i32" for n in names}


def ff_parser_class(size: int, dtype: str = "fp32") -> KernelClass:
    from .runtime import pad16
    p, k = pad16(size), pad16(size // 2 + 1)
    sig = {"x_ptr": f"*{dtype}", "w_ptr": "*fp32", "y_ptr": f"*{dtype}",
           **{n: "*fp32" for n in ("cw_ptr", "nsw_ptr", "ch_ptr", "sh_ptr", "icw_ptr",
                                   "isw_ptr")},
           **_ints(("C", "H", "W", "WF", "sxb", "sxc", "sxh", "sxw", "swc", "swh", "swk", "swr",
                    "syb", "syc", "syh", "syw")),
           "HP": "constexpr", "WP": "constexpr", "KP": "constexpr"}
    warps = 8 if p * max(p, k) >= 128 * 64 else 4
    return KernelClass("ff_parser", sig, {"HP": p, "WP": p, "KP": k}, warps, 3,
                       f"ff_parser {size}x{size} {dtype}")


def gn_classes(channels: int, groups: int, size: int, dtype: str = "fp32",
               scale: bool = True) -> list[KernelClass]:
    import triton
    from .group_norm_silu import MAX_CHUNKS, TILE
    cg, p = channels // groups, size * size
    bc = min(triton.next_power_of_2(cg), 64)
    bp = max(1, min(triton.next_power_of_2(p), TILE // bc))
    n_cblk = triton.cdiv(cg, bc)
    while n_cblk * triton.cdiv(p, bp) > MAX_CHUNKS:
        bp *= 2
    n_chunks = n_cblk * triton.cdiv(p, bp)
    warps = 4 if bc * bp >= 1024 else 2
    label = f"group_norm_silu C{channels} G{groups} {size}px {dtype}"
    out = []
    if n_chunks > 1:
        sig = {"x_ptr": f"*{dtype}", "part_ptr": "*fp32",
               **_ints(("G", "CG", "P", "sxb", "sxc", "sxp", "n_cblk", "n_chunks")),
               "BLOCK_C": "constexpr", "BLOCK_P": "constexpr"}
        out.append(KernelClass("gn_stats", sig, {"BLOCK_C": bc, "BLOCK_P": bp}, warps, 3,
                               label + " stats"))
    sig = {"x_ptr": f"*{dtype}", "y_ptr": f"*{dtype}", "part_ptr": "*fp32",
           **{n: "*fp32" for n in ("gamma_ptr", "beta_ptr", "scale_ptr", "shift_ptr")},
           **_ints(("G", "CG", "P")), "eps": "fp32",
           **_ints(("sxb", "sxc", "sxp", "syb", "syc", "syp", "ssb", "ssc", "stb", "stc",
                    "n_cblk", "n_chunks")),
           "HAS_SCALE": "constexpr", "SINGLE": "constexpr", "BLOCK_C": "constexpr",
           "BLOCK_P": "constexpr", "BLOCK_N": "constexpr"}
    out.append(KernelClass("gn_apply", sig, {"HAS_SCALE": scale, "SINGLE": n_chunks == 1,
                                             "BLOCK_C": bc, "BLOCK_P": bp,
                                             "BLOCK_N": triton.next_power_of_2(n_chunks)},
                           warps, 3, label + " apply"))
    return out


def gated_class(cx: int, cg: int, size: int, dtype: str = "fp32") -> KernelClass:
    from .runtime import pad16
    ieee = dtype == "fp32"
    bm = min(pad16(cx), 64)
    bk = min(pad16(cg), 32 if ieee else 64)
    bn = min(pad16(size * size), 128 if bm <= 32 else 64)
    sig = {"g_ptr": f"*{dtype}", "w_ptr": "*fp32", "bias_ptr": "*fp32", "x_ptr": f"*{dtype}",
           "y_ptr": f"*{dtype}",
           **_ints(("CX", "CG", "P", "sgb", "sgc", "sgp", "swo", "swi", "sxb", "sxc", "sxp",
                    "syb", "syc", "syp")),
           "IEEE": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr",
           "BLOCK_K": "constexpr"}
    return KernelClass("gated_conv1x1", sig, {"IEEE": ieee, "BLOCK_M": bm, "BLOCK_N": bn,
                                              "BLOCK_K": bk}, 4, 3,
                       f"gated_conv1x1 Cx{cx} Cg{cg} {size}px {dtype}")


def shape_classes() -> list[KernelClass]:
    """Every configuration the launchers pick for the engine's networks: the FF-Parser's
    plane sizes up to MAX_SIZE (larger planes go to cuFFT), and the GroupNorm and gated-conv
    shapes of the bundled default (16-64 channels at 8-64 px) and the published 128 px
    models (128-768 channels at 4-128 px), float32 and bfloat16 (deduplicated by config)."""
    from .ff_parser import MAX_SIZE
    classes = [ff_parser_class(s, d) for s in (4, 8, 16, 32, 64) if s <= MAX_SIZE
               for d in ("fp32", "bf16")]
    for c, s in ((16, 64), (32, 32), (64, 16), (64, 8), (128, 128), (256, 64), (512, 16),
                 (768, 4)):
        for d in ("fp32", "bf16"):
            classes += gn_classes(c, 8, s, d)
            classes.append(gated_class(c, 2 * c, s, d))
    seen, out = set(), []
    for k in classes:
        key = (k.kernel, tuple(sorted(k.signature.items())), tuple(sorted(k.constexprs.items())),
               k.num_warps)
        if key not in seen:
            seen.add(key)
            out.append(k)
    return out


def compile_class(k: KernelClass, cc: int) -> dict:
    """Compile one class for compute capability `cc` -> {"shared", "fits", "num_warps"}."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from . import ff_parser, gated_conv1x1, group_norm_silu
    fn = {"ff_parser": ff_parser._ff_parser_kernel, "gn_stats": group_norm_silu._gn_stats_kernel,
          "gn_apply": group_norm_silu._gn_apply_kernel,
          "gated_conv1x1": gated_conv1x1._gated_conv1x1_kernel}[k.kernel]
    src = ASTSource(fn=fn, signature=k.signature, constexprs=k.constexprs)
    compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                              options={"num_warps": k.num_warps, "num_stages": k.num_stages})
    shared = int(compiled.metadata.shared)
    return {"shared": shared, "fits": shared <= SHARED_LIMIT[cc],
            "num_warps": compiled.metadata.num_warps, "cubin": "cubin" in compiled.asm}
