"""What a piece of work cost: wall time and peak memory, measured around it.

:class:`ResourceMeter` is a context manager. On a CUDA device it reads PyTorch's allocator peak
(reset on entry, so the figure belongs to the block alone). On the CPU it samples the process's
resident set size (RSS) from ``/proc/self/statm`` in a background thread every
``interval`` seconds, so a peak shorter than the interval can be missed; where ``/proc`` does not
exist (macOS, Windows) it falls back to the process's lifetime high-water mark from
``resource.getrusage`` and says so (``rss_kind = "lifetime_max"``).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["ResourceMeter", "ResourceUse", "current_rss_bytes"]

GIB = 1024 ** 3


def _statm_rss() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _lifetime_max_rss() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    import sys
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB else


def current_rss_bytes() -> int | None:
    """The process's resident set size now, in bytes (``None`` where it cannot be read)."""
    return _statm_rss()


@dataclass(frozen=True)
class ResourceUse:
    """Seconds and peak memory of one block of work. ``rss_gib``: the process's peak resident
    memory while it ran (weights and caches included); ``cuda_gib``: the CUDA allocator's peak,
    ``None`` off CUDA; ``rss_kind``: ``sampled`` or ``lifetime_max`` (see the module)."""

    seconds: float
    rss_gib: float | None
    cuda_gib: float | None
    rss_kind: str

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 3),
                "peak_rss_gib": None if self.rss_gib is None else round(self.rss_gib, 3),
                "peak_cuda_gib": None if self.cuda_gib is None else round(self.cuda_gib, 3),
                "rss_kind": self.rss_kind}


class ResourceMeter:
    """``with ResourceMeter(device) as m: ...`` then ``m.use``: a :class:`ResourceUse`."""

    def __init__(self, device: Any = "cpu", interval: float = 0.05) -> None:
        self.device, self.interval = str(device), interval
        self.use: ResourceUse | None = None
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = _statm_rss()
            if rss is not None and rss > self._peak:
                self._peak = rss

    def __enter__(self) -> ResourceMeter:
        self._cuda = self.device.startswith("cuda")
        if self._cuda:
            import torch
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        first = _statm_rss()
        self._sampled = first is not None
        self._peak = first or 0
        if self._sampled:
            self._thread = threading.Thread(target=self._sample, name="rss-meter", daemon=True)
            self._thread.start()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        cuda = None
        if self._cuda:
            import torch
            torch.cuda.synchronize(self.device)
            cuda = torch.cuda.max_memory_allocated(self.device) / GIB
        seconds = time.perf_counter() - self._start
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            last = _statm_rss()
            peak: int | None = max(self._peak, last or 0)
            kind = "sampled"
        else:
            peak, kind = _lifetime_max_rss(), "lifetime_max"
        self.use = ResourceUse(seconds, None if peak is None else peak / GIB, cuda, kind)
