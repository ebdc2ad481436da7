"""The one place that chooses the compute device and the CPU thread count."""

from __future__ import annotations

import os

import torch

_DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")


def available_devices() -> list[str]:
    """Devices this machine can run on, best first (``cpu`` is always last)."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    found.append("cpu")
    return found


def select_device(name: str = "auto") -> torch.device:
    """Resolve ``auto``/``cpu``/``cuda``/``mps`` to a device this machine has.

    ``auto`` prefers CUDA, then Apple MPS, then the CPU. Asking for a device that is absent
    raises ``ValueError`` with the list of what is there, rather than silently falling back.
    """
    name = _resolve(name)
    found = available_devices()
    if name not in found:
        raise ValueError(f"device {name!r} is not available here; available: {', '.join(found)}")
    if name == "cpu":
        configure_cpu_threads()
    return torch.device(name)


def _resolve(name: str) -> str:
    """The device setting ``name`` lowered, ``auto`` replaced by the best device here (CUDA, MPS, then the CPU);
    ValueError for a name that is no device setting. Whether the device is present is the caller's question."""
    name = name.lower()
    if name not in _DEVICE_NAMES:
        raise ValueError(f"unknown device {name!r}; choose one of {', '.join(_DEVICE_NAMES)}")
    return available_devices()[0] if name == "auto" else name


def resolves_to_cuda(name: str | torch.device) -> bool:
    """Whether the device setting ``name`` (``auto`` resolved as :func:`select_device` does) is a CUDA GPU, without
    touching the CPU's thread settings."""
    if isinstance(name, torch.device):
        return name.type == "cuda"
    return _resolve(name) == "cuda"


def idle_cpu_count() -> int:
    """CPUs this process may use that are not already busy (1-minute load average)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        usable = os.cpu_count() or 1
    try:
        busy = round(os.getloadavg()[0])
    except (AttributeError, OSError):
        busy = 0
    return max(1, usable - busy)


def choose_cpu_threads() -> int:
    """Torch intra-op threads: the idle cores, but never more than the machine has.

    ``FACECLOAK_THREADS`` overrides. On small machines (<= 2 usable cores) one thread is used:
    two threads under load ran forward+backward 30-100x slower than one here, so we never
    oversubscribe.
    """
    override = os.environ.get("FACECLOAK_THREADS")
    if override:
        return max(1, int(override))
    idle = idle_cpu_count()
    return 1 if idle <= 2 else idle


def configure_cpu_threads(threads: int | None = None) -> int:
    """Apply the thread count to torch (and OpenCV) once; returns the count in force."""
    threads = threads or choose_cpu_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:
        import cv2

        cv2.setNumThreads(threads)
    except ImportError:  # pragma: no cover - cv2 is a dependency
        pass
    return threads


def device_label(device: torch.device | str) -> str:
    """The device as the settings and benchmarks name it, e.g. ``NVIDIA H200 (CUDA, 140 GB)`` or ``CPU (2 threads)``."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"{props.name} (CUDA, {props.total_memory / 1e9:.0f} GB)"
    if device.type == "mps":
        return "Apple GPU (MPS)"
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'' if threads == 1 else 's'})"


def cuda_has_bf16(device: torch.device | str) -> bool:
    """Native bfloat16 on this CUDA GPU (compute capability 8.0 and later: A100, RTX 30xx, H100 ...); older GPUs
    only emulate it, slower than float32."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on ``device`` (GPU work is asynchronous: a clock read without it measures the
    queueing, not the work). Nothing to wait for on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def reset_memory_peak(device: torch.device | str) -> None:
    """Start a new peak of :func:`memory_peak` (CUDA only; a no-op elsewhere)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def memory_peak(device: torch.device | str) -> int | None:
    """Bytes of device memory held by tensors at the peak since :func:`reset_memory_peak`; None off CUDA."""
    device = torch.device(device)
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
