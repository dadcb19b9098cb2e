"""10,000 create/complete/destroy cycles leave RSS flat and reference
counts where they were: every reference the package takes (descriptor
owners, the connector, the completion queue's) is given back."""
import asyncio
import gc
import sys

import numpy as np

import ferry

CYCLES = 10_000
WARMUP = 1_000
# A leak of one small object per cycle is about 100 B x 9,000 cycles; RSS
# alone cannot see that, so reference counts and the number of live objects
# are checked too. The RSS bound catches a leaked registration or buffer
# (4 KiB or more per cycle would be 36 MiB).
RSS_GROWTH_BOUND = 8 << 20


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def cycle(connector, sender, dst, src):
    with connector.create_writable(ferry.Descriptor(dst)) as w:
        with sender.begin_write(ferry.Descriptor(src), w.metadata()) as a:
            a.wait(30)
        w.wait(30)


async def async_cycles(connector, sender, dst, src, n):
    for _ in range(n):
        with connector.create_writable(ferry.Descriptor(dst)) as w:
            with sender.begin_write(ferry.Descriptor(src), w.metadata()) as a:
                await a.wait_for_completion(30)
            await w.wait_for_completion(30)


def test_cycles_leave_rss_and_refcounts_flat():
    connector = ferry.Connector("rss")
    sender = ferry.Connector("rss-sender")
    dst = np.zeros(4096, np.uint8)
    src = np.full(4096, 7, np.uint8)
    for _ in range(WARMUP):
        cycle(connector, sender, dst, src)
    asyncio.run(async_cycles(connector, sender, dst, src, WARMUP // 10))
    gc.collect()
    refs = (sys.getrefcount(dst), sys.getrefcount(src), sys.getrefcount(connector),
            sys.getrefcount(sender))
    objects = len(gc.get_objects())
    rss = rss_bytes()
    half = (CYCLES - WARMUP) // 2
    for _ in range(half):
        cycle(connector, sender, dst, src)
    asyncio.run(async_cycles(connector, sender, dst, src, CYCLES - WARMUP - half))
    gc.collect()
    assert (sys.getrefcount(dst), sys.getrefcount(src), sys.getrefcount(connector),
            sys.getrefcount(sender)) == refs
    assert len(gc.get_objects()) - objects < 100
    growth = rss_bytes() - rss
    assert growth < RSS_GROWTH_BOUND, f"RSS grew {growth} bytes over {CYCLES - WARMUP} cycles"
    assert np.all(dst == 7)
    assert connector._live_ops == 0 and sender._live_ops == 0
    connector.close()
    sender.close()
