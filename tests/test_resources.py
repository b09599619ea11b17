"""The resource meter: wall time and a peak of resident memory that sees an allocation made and
freed inside the block."""

import gc
import mmap
import time

import numpy as np
import pytest

from effective_depth.resources import GIB, ResourceMeter, current_rss_bytes

SIZE = 256 * 1024 * 1024


def _hold_fresh_pages(size: int, seconds: float) -> int:
    """Make ``size`` bytes of new pages resident for ``seconds``, then give them back to the
    kernel; returns the rise in RSS seen while they were held.

    An anonymous mmap is mapped and unmapped by the kernel itself: its pages are never on an
    allocator's free list, so they cannot be memory the process already holds (a tensor of the
    same size may reuse what earlier work freed and leave the RSS where it was)."""
    before = current_rss_bytes()
    buf = mmap.mmap(-1, size)
    view = np.frombuffer(buf, dtype=np.uint8)
    view[::mmap.PAGESIZE] = 1  # touch every page: now resident
    rise = current_rss_bytes() - before
    time.sleep(seconds)
    del view
    buf.close()  # munmap: the pages leave the process at once
    return rise


@pytest.mark.skipif(current_rss_bytes() is None, reason="needs /proc/self/statm")
def test_meter_sees_a_transient_allocation_freed_before_the_block_ends():
    gc.collect()
    before = current_rss_bytes()
    with ResourceMeter("cpu", interval=0.005) as meter:
        rise = _hold_fresh_pages(SIZE, 0.25)
    after = current_rss_bytes()
    # the allocation was resident while held and gone when the block ended, so only the meter's
    # sampling during the block can have seen it
    assert rise >= 0.9 * SIZE
    assert after - before < 0.5 * SIZE
    use = meter.use
    assert use.rss_kind == "sampled" and use.cuda_gib is None
    assert use.seconds >= 0.25
    # the peak saw the 256 MiB although they were freed before the block ended
    assert use.rss_gib * GIB - before >= 0.9 * SIZE
    d = use.to_dict()
    assert set(d) == {"seconds", "peak_rss_gib", "peak_cuda_gib", "rss_kind"}
    assert d["peak_cuda_gib"] is None
