"""The CPU a run is on, and the numeric precision chosen for it.

bf16 is fast only where the CPU has it in hardware (AVX512_BF16, AMX-BF16); elsewhere PyTorch
emulates it, and a MiniLM ran 8x slower at inference and about 20x slower in training than in
fp32. So ``trainer.precision: auto`` (the default) picks ``bf16-mixed`` only where bf16 is
native, else ``32-true``, and every inference path follows the same choice. Where the CPU
flags cannot be read (not Linux on x86), a short matmul probe decides.

``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` makes PyTorch on an AVX-512 machine behave
like an AVX2 one; the choice honours both, so the emulation also picks fp32.

Nothing here imports PyTorch until a function needs it: the runtime (an OpenVINO or ONNX
artifact) reads the CPU through ``cpu_info(with_torch=False)``.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import sys
import time

log = logging.getLogger(__name__)

# the ISA flags that decide speed, by their /proc/cpuinfo names
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
             "amx_int8")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# oneDNN ISA caps below which bf16 has no hardware support
_ONEDNN_CAPS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE",
                             "AVX512_CORE_VNNI")


@functools.cache
def cpu_info(with_torch: bool = True) -> dict:
    """CPU model, core count, ISA flags and what PyTorch may use of them. ``with_torch=False``
    does not import PyTorch: its CPU capability is then the one it would pick (AVX-512 where
    the CPU has it, unless ``ATEN_CPU_CAPABILITY`` caps it), and its version and thread count
    are left out."""
    model, flags = platform.processor() or platform.machine(), None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags" and flags is None:
                    flags = set(value.split())
    except OSError:
        pass
    # None: flags unreadable (not Linux, or not x86)
    isa = None if flags is None else [flag for flag in ISA_FLAGS if flag in flags]
    info = {"cpu": model, "cores": os.cpu_count(), "isa": isa,
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")}
    if not with_torch:
        capped = os.environ.get("ATEN_CPU_CAPABILITY", "").upper()
        return {**info, "torch_cpu_capability": capped or (
            "AVX512" if isa and "avx512f" in isa else "AVX2" if isa and "avx2" in isa else "DEFAULT")}
    import torch

    return {**info, "torch_threads": torch.get_num_threads(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": str(torch.__version__)}


def busy_cpu_seconds() -> float | None:
    """CPU seconds every process on this machine has spent busy since boot (``/proc/stat``),
    None where that cannot be read: with ``time.process_time()`` it tells how much other work
    ran beside a timing."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = values[3] + values[4]  # idle and waiting for I/O
    return (sum(values) - idle) / os.sysconf("SC_CLK_TCK")


def default_threads() -> int:
    """Threads for OpenVINO and ONNX Runtime when none are asked for: PyTorch's count where
    PyTorch is loaded (so that engines timed side by side use the same), else the CPUs this
    process may run on."""
    if "torch" in sys.modules:
        return sys.modules["torch"].get_num_threads()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the kernel.

    Training batches of varying length allocate tensors of changing sizes. By default glibc
    returns such blocks to the kernel (``munmap``, heap trimming) and faults fresh zeroed pages
    in for the next batch. With a 32 MiB mmap threshold (glibc's largest), a 1 GiB trim
    threshold and 256 MiB of top padding, 60 fp32 steps of a 3-layer MiniLM-wide model on a
    2-core Xeon limited to AVX2 took 27.4-30.9 s instead of 31.4-35.2 s, with 0.5-0.9 s of
    system time instead of 3.5-4.3 s and 147-281 thousand page faults instead of 1.5-1.7
    million (``scripts/training_speed_probe.py --rounds 3``). A process may grow by up to the
    padding plus what it frees.

    Called once by the training entry point. Nothing happens (returns False) off glibc, or when
    any ``MALLOC_*`` variable is set, so that a user's own allocator settings win. Under
    ``LD_PRELOAD`` of jemalloc or tcmalloc, glibc's malloc is unused and this is harmless.
    """
    if platform.libc_ver()[0] != "glibc" or any(name.startswith("MALLOC_") for name in os.environ):
        return False
    import ctypes

    libc = ctypes.CDLL(None)
    settings = ((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 256 << 20))
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in settings)


def native_bf16(info: dict | None = None) -> tuple[bool, str]:
    """Whether this CPU, as PyTorch may use it, runs bf16 in hardware, and why."""
    info = info or cpu_info()
    if info["isa"] is None:
        fp32, bf16 = matmul_probe()
        return bf16 > fp32, (f"CPU flags unreadable; a matmul probe ran bf16 at {bf16:.0f} "
                             f"GFLOP/s and fp32 at {fp32:.0f}")
    found = [flag for flag in NATIVE_BF16_FLAGS if flag in info["isa"]]
    if not found:
        return False, (f"{info['cpu']} has no native bf16 (no {' or '.join(NATIVE_BF16_FLAGS)}); "
                       "PyTorch would emulate it, several times slower than fp32")
    cap = (info.get("onednn_max_cpu_isa") or "").upper()
    if not info["torch_cpu_capability"].startswith("AVX512") or cap in _ONEDNN_CAPS_WITHOUT_BF16:
        return False, (f"{info['cpu']} has {found[0]}, but PyTorch is limited to "
                       f"{info['torch_cpu_capability']} (ATEN_CPU_CAPABILITY / "
                       f"ONEDNN_MAX_CPU_ISA={cap or 'unset'}), which emulates bf16")
    return True, f"{info['cpu']} runs bf16 natively ({found[0]})"


def resolve_precision(requested: str = "auto") -> tuple[str, str]:
    """The Lightning precision to use, and why: ``auto`` picks ``bf16-mixed`` where bf16 is
    native, else ``32-true``; any other value is kept as given."""
    if str(requested) != "auto":
        return str(requested), f"trainer.precision={requested} set explicitly"
    native, reason = native_bf16()
    return ("bf16-mixed" if native else "32-true"), reason


def autocast_dtype(precision: str):
    """The torch dtype inference autocasts to under a Lightning precision (None: plain fp32)."""
    import torch

    precision = str(precision)
    if precision == "auto":
        precision = resolve_precision("auto")[0]
    return torch.bfloat16 if precision.startswith("bf16") else None


def matmul_probe(size: int = 512, seconds: float = 0.2) -> tuple[float, float]:
    """GFLOP/s of a ``size`` x ``size`` matmul in fp32 and in bf16, each timed for about
    ``seconds``."""
    import torch

    rates = []
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        a @ b  # warm-up
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            a @ b
            runs += 1
        rates.append(2 * size**3 * runs / (time.perf_counter() - started) / 1e9)
    return rates[0], rates[1]


def machine_record(precision: str, reason: str) -> dict:
    """What ``checkpoint_info.json`` and ``results.json`` say about where a run ran."""
    return {**cpu_info(), "precision": precision, "precision_reason": reason}
