"""What the machine offers, and the precision that runs fastest on it (`dtype: auto`, `deepspeed.precision: auto`).

bf16 pays off where the hardware computes in it: NVIDIA GPUs with bf16 (Ampere and later) and CPUs with AMX
(`amx_bf16` in /proc/cpuinfo's flags), where bf16 matmuls run several times faster than fp32. On CPUs without AMX
(AVX2, or AVX-512 with only avx512_bf16 dot products) torch's bf16 matmuls are slower than fp32, so `auto` is fp32
there. Training on a CPU stays fp32 (`training_precision`). The choice is made where the work runs (each scoring
actor, replica or training worker reads its own node).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable


@lru_cache(maxsize=1)
def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags of this machine (empty where /proc/cpuinfo is missing, e.g. macOS)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_amx_bf16(flags: Iterable[str] | None = None) -> bool:
    return "amx_bf16" in (cpu_flags() if flags is None else set(flags))


def cuda_bf16() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def _pinned() -> str | None:
    """RAYRM_AUTO_DTYPE=fp32|bf16 fixes what `auto` resolves to everywhere (one precision across a mixed fleet)."""
    import os

    value = os.environ.get("RAYRM_AUTO_DTYPE")
    if value is not None and value not in ("fp32", "bf16"):
        raise ValueError(f"RAYRM_AUTO_DTYPE must be fp32 or bf16, got {value!r}")
    return value


def inference_dtype(dtype: str, device_type: str, flags: Iterable[str] | None = None) -> str:
    """Scoring, serving and judging: `auto` -> bf16 on a bf16 GPU or an AMX CPU, fp32 elsewhere."""
    if dtype != "auto":
        return dtype
    if (pinned := _pinned()) is not None:
        return pinned
    if device_type == "cuda":
        return "bf16" if cuda_bf16() else "fp32"
    return "bf16" if has_amx_bf16(flags) else "fp32"


def training_precision(precision: str, device_type: str) -> str:
    """Training: `auto` -> bf16 on a bf16 GPU (DeepSpeed's bf16 mode), fp32 on every CPU. On an AMX CPU, bf16
    autocast (fp32 weights) runs the forward faster but the backward about twice as slow as fp32, so a training step
    takes longer (docs/benchmarks.md); `precision: bf16` still trains that way. The loss and the reward read-out stay
    fp32 either way."""
    if precision != "auto":
        return precision
    if (pinned := _pinned()) is not None:
        return pinned
    if device_type == "cuda":
        return "bf16" if cuda_bf16() else "fp32"
    return "fp32"


def packing_layout(packing: str, device_type: str) -> str:
    """Scoring and serving: `packing: auto|on|off` -> how a decoder's sequences are laid out: "off" (padded rows),
    "rows" (packed rows no longer than the longest sequence; SDPA with transformers' block-diagonal mask: CPUs) or
    "row" (one packed row through the flash varlen kernel: GPUs). `auto` is off: on a CPU, token-budget batches cut
    before 5% padding measured faster than packed rows (docs/benchmarks.md), and on a GPU packing has not been
    measured yet. Training resolves its own layout (`rayrm.train.engine.packing`)."""
    if packing == "off" or packing == "auto":
        return "off"
    return "row" if device_type == "cuda" else "rows"
