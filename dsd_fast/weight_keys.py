"""What a loader says when a file's weight names do not match the network built for it.

A file from another config or another version of a model's code lacks (or adds) whole
blocks, often dozens of tensors; naming only the first key hides that. The names are
grouped by their prefix up to the first index (`downs.3.1.block1.proj.weight` ->
`downs.3.*`), which is how the networks number their levels and blocks.
"""
from __future__ import annotations

from typing import Iterable, Sequence

SHOWN_GROUPS = 6          # groups listed in a message; the rest are counted


def key_group(key: str) -> str:
    """`downs.3.1.weight` -> `downs.3.*`; `init_conv.weight` -> `init_conv.*`; `betas` ->
    `betas`."""
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[:i + 1]) + ".*"
    return ".".join(parts[:-1]) + ".*" if len(parts) > 1 else key


def grouped(keys: Iterable[str]) -> str:
    """`downs.3.*: 12 tensors, final_conv.*: 2 tensors` (in first-seen order), the groups
    past SHOWN_GROUPS counted."""
    counts: dict[str, int] = {}
    for k in keys:
        g = key_group(k)
        counts[g] = counts.get(g, 0) + 1
    shown = [f"{g}: {n} tensor{'s' if n != 1 else ''}"
             for g, n in list(counts.items())[:SHOWN_GROUPS]]
    rest = len(counts) - SHOWN_GROUPS
    return ", ".join(shown) + (f" and {rest} more group{'s' if rest != 1 else ''}"
                               if rest > 0 else "")


def mismatch_message(expected: dict, missing: Sequence[str], unused: Sequence[str]) -> str:
    """One message for the weights a file lacks and those it has that the network does not
    use (`expected`: the network's state dict, for the count and the first missing shape)."""
    parts = []
    if missing:
        first = missing[0]
        parts.append(f"lacks {len(missing)} of the {len(expected)} weights the network "
                     f"built for it needs ({grouped(missing)}; the first: {first!r}, shape "
                     f"{tuple(expected[first].shape)})")
    if unused:
        parts.append(f"has {len(unused)} weight{'s' if len(unused) != 1 else ''} that "
                     f"network does not use ({grouped(unused)}; the first: {unused[0]!r})")
    return (f"the checkpoint {' and '.join(parts)}: it is probably from another config or "
            "another version of the model's code. For a file of the original code, give "
            "what its shapes cannot tell (config=, or settings such as attn_heads=; on the "
            "command line --model-setting KEY=VALUE)")
