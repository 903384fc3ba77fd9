"""How much memory this process may use, and how many images fit in one network batch."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

AUTO_BATCH_MAX = 8             # more images per batch barely speeds a CPU up, and a Ctrl-C
                               # loses at most one batch of work
CPU_BUDGET_FRACTION = 0.4      # of the available memory
GPU_BUDGET_FRACTION = 0.6      # of the free GPU memory


def available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, capped by a cgroup limit."""
    avail = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            room = int(limit) - used
            avail = room if avail is None else min(avail, room)
    if avail is None:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return avail


def auto_batch_size(pipeline, ensemble: int, budget: int | None = None) -> int:
    """Images per network batch: as many as fit (each brings `ensemble` chains, of
    `family.chain_bytes` each) into 40% of the available memory (60% of the free GPU
    memory for a CUDA model), at most AUTO_BATCH_MAX."""
    import torch
    device = pipeline.device
    if budget is None:
        if device.type == "cuda":
            budget = int(torch.cuda.mem_get_info(device)[0] * GPU_BUDGET_FRACTION)
        else:
            avail = available_memory()
            budget = int(CPU_BUDGET_FRACTION * avail) if avail else 2 << 30
    per_image = max(1, pipeline.family.chain_bytes(pipeline.config) * ensemble)
    return int(max(1, min(AUTO_BATCH_MAX, budget // per_image)))
