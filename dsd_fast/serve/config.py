"""What a `dsd-fast serve` instance runs with: its models, limits and batching.

One frozen dataclass, built by the command line (command.py) or by a program
(`create_app(ServeConfig(models=("default",)))`), checked once in __post_init__ so a bad
value fails at start-up with a message rather than on the first request.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

# The bundled models a plain `dsd-fast serve` offers (api.BUNDLED; both are small 64 px
# networks, ~0.1 s to load). The first one listed is what a request without `model` gets.
DEFAULT_MODELS = ("default", "medsegdiff")


@dataclass(frozen=True)
class ServeConfig:
    # Model names (api.BUNDLED) or model files; requests name them by `model_names`, never
    # by path, so no request can make the server open a file.
    models: tuple = DEFAULT_MODELS
    host: str = "127.0.0.1"          # loopback: only this machine can reach it
    port: int = 8000
    # Upload limits: bytes of the whole request body, and decoded pixels (width x height),
    # checked from the image header before any pixel is decoded.
    max_upload_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 16_000_000
    # Work limits per request: a request asking for more is refused (422), so one client
    # cannot hold the worker for minutes.
    max_steps: int = 250
    max_ensemble: int = 64
    # Batching: requests for one model and one set of options that arrive within
    # `batch_wait_ms` of the first share the network's forwards, up to `max_batch` images.
    # A batch's requests are all answered when it ends: on one CPU core (bench_serve.py)
    # 16 images per batch gave no more requests/s than one at a time and twice the median
    # latency at 16 concurrent requests; 4 bounds that wait. Raise it where a batch runs
    # faster per image (a GPU).
    max_batch: int = 4
    batch_wait_ms: float = 15.0
    # Requests waiting for the worker (not yet running) beyond this are answered 429.
    max_queue: int = 64
    # A request not answered within this many seconds (queue wait included) gets 504.
    request_timeout_s: float = 120.0
    # torch threads of the worker (None: torch's default), and where the networks run
    # ("cpu", "cuda", "cuda:1"); batching gains most on a GPU, where one image's ensemble
    # leaves most of the device idle.
    threads: int | None = None
    device: str = "cpu"
    # Run one tiny segmentation per model at start-up so the first request does not pay
    # for building the fast network; /readyz says ready only after it.
    warmup: bool = True
    extra: dict = field(default_factory=dict, compare=False)   # reserved for deployments

    def __post_init__(self):
        if isinstance(self.models, str):
            object.__setattr__(self, "models", (self.models,))
        object.__setattr__(self, "models", tuple(str(m) for m in self.models))
        if not self.models:
            raise ValueError("serve needs at least one model (a bundled name or a model file)")
        ints = {"port": (0, 65535), "max_upload_bytes": (1, None), "max_pixels": (1, None),
                "max_steps": (1, None), "max_ensemble": (1, None), "max_batch": (1, None),
                "max_queue": (1, None)}
        for name, (lo, hi) in ints.items():
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo or \
                    (hi is not None and v > hi):
                bound = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
                raise ValueError(f"{name} must be an integer {bound}, got {v!r}")
        for name in ("batch_wait_ms", "request_timeout_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be an integer >= 1, got {self.threads!r}")

    def to_dict(self) -> dict:
        """Plain values (for Ray, which ships the config to its replicas)."""
        d = asdict(self)
        d["models"] = list(self.models)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ServeConfig":
        return cls(**{**d, "models": tuple(d["models"])})
