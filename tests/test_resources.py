"""The resource meter: wall time and a peak of resident memory that sees an allocation made and
freed inside the block."""

import gc

import pytest
import torch

from effective_depth.resources import GIB, ResourceMeter, current_rss_bytes


@pytest.mark.skipif(current_rss_bytes() is None, reason="needs /proc/self/statm")
def test_meter_sees_a_transient_allocation_freed_before_the_block_ends():
    gc.collect()
    before = current_rss_bytes()
    with ResourceMeter("cpu", interval=0.005) as meter:
        x = torch.ones(64 * 1024 * 1024 // 4 * 4)  # 256 MiB, touched
        x += 1
        import time
        time.sleep(0.05)
        del x
        gc.collect()
    use = meter.use
    assert use.rss_kind == "sampled" and use.cuda_gib is None
    assert use.seconds >= 0.05
    # the peak saw the 256 MiB tensor although it was freed before the block ended
    assert use.rss_gib * GIB - before >= 0.9 * 256 * 1024 * 1024
    d = use.to_dict()
    assert set(d) == {"seconds", "peak_rss_gib", "peak_cuda_gib", "rss_kind"}
    assert d["peak_cuda_gib"] is None
