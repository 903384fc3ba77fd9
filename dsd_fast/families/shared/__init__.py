"""What several families' networks share: reference layers (layers.py: readable, no fused
ops) and the fast path's building blocks (fast_blocks, fast_attention, fast_resample,
winograd: these import dsd_fast.ops)."""
