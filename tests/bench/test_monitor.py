"""The benchmarks' process-tree monitor: peak PSS without sampling steady rounds."""

import time

import numpy as np

from fedray.bench.monitor import PeakPSS, tree_pss_bytes


def test_peak_pss_sees_a_growth_and_leaves_steady_memory_unsampled():
    base = tree_pss_bytes()
    with PeakPSS(interval_s=0.05) as mem:
        time.sleep(0.3)
        before = mem.samples  # the first look at the tree
        block = np.ones(200 << 20, np.uint8)  # 200 MB, every page touched
        deadline = time.monotonic() + 10  # a loaded machine (CI's -n 2) may be slow to look
        while mem.peak < base + (150 << 20) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # the sample that saw the block is counted
        grown = mem.samples - before
        time.sleep(0.5)  # steady: nothing new is mapped, so PSS is not read again
        steady = mem.samples - before - grown
        del block
    assert before >= 1 and grown >= 1
    assert steady == 0
    assert mem.peak >= base + (150 << 20)  # the peak held the block (200 MB; the rest of the
    # process may have freed some meanwhile: one run saw the block add 190 MB to the peak)
