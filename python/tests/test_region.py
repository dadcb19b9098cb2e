"""Memory registered once (issue #14): Connector.allocate and
register_memory give a Region, a writable buffer that operations take like
any buffer and that registers nothing per operation.

Bytes move between this process and real ferry-worker processes through a
real ferry-coordinator over a real etcd, each way, and every byte is
checked (by the pattern here, by ferry-worker's own check there). The
no-ucp_mem_map property is observed through libferry's public counter
(Connector.stats()["mem_maps"]), and libferry refuses to deregister a region
while an operation holds it (Busy). Then the release rules:
BufferError while exported, Busy while used, Misuse after close, the
connector kept alive and refusing to close before its regions, release at
garbage collection (deferred while libferry still uses the memory)."""
import ctypes
import gc
import os
import subprocess
import sys
import weakref

import numpy as np
import pytest
import torch

import ferry
from ferry import _ferry

from conftest import BUILD_DIR, TOKEN, pattern, split
from test_coordinator import finish, rid, start_passive, worker


def region_array(region):
    return np.frombuffer(region, np.uint8)


def slices(region, n):
    """n descriptors covering the region, as ferry-worker splits."""
    out, off = [], 0
    for part in split(range(region.size), n):
        out.append(region.descriptor(off, len(part)))
        off += len(part)
    return out


# ---- the object ---------------------------------------------------------------


def test_allocate_is_a_zeroed_writable_buffer(connector):
    with connector.allocate(4096) as r:
        assert isinstance(r, ferry.Region) and r.allocated and not r.closed
        assert len(r) == r.size == 4096 and r.device == "cpu"
        mv = memoryview(r)
        assert not mv.readonly and mv.nbytes == 4096 and mv.format == "B"
        assert _ferry._buffer_address(mv) == r.ptr
        assert bytes(mv) == bytes(4096)
        mv[:3] = b"abc"
        a = region_array(r)  # numpy over the same memory, no copy
        assert bytes(a[:3]) == b"abc"
        a[3] = 7
        t = torch.frombuffer(memoryview(r), dtype=torch.uint8)
        assert t.data_ptr() == r.ptr and int(t[3]) == 7
        t[4] = 9
        assert mv[4] == 9
        del mv, a, t
    assert r.closed


def test_descriptor_forms(connector):
    with connector.allocate(1 << 16) as r:
        d = ferry.Descriptor(r)
        assert (d.ptr, d.size, d.owner, d.readonly) == (r.ptr, r.size, r, False)
        d = r.descriptor(100, 50)
        assert (d.ptr, d.size, d.device) == (r.ptr + 100, 50, ferry.Device("cpu"))
        assert r.descriptor(1000).size == (1 << 16) - 1000
        for off, size in [(-1, 10), (0, 0), (0, (1 << 16) + 1), ((1 << 16) - 4, 5),
                          ((1 << 16) + 1, None)]:
            with pytest.raises(ValueError, match="Region.descriptor"):
                r.descriptor(off, size)
        with pytest.raises(ferry.InvalidArgument):
            ferry.Descriptor(r, device="cuda:0")
        del d
        assert r._exports == 0  # descriptors hold the region, not an export


@pytest.mark.parametrize("size,exc,match", [
    (0, ferry.InvalidArgument, r"allocate\(size=0\)"),
    (-1, ValueError, "size must be a positive number of bytes, got -1"),
    # 2^63: refused before UCX is asked ("the machine's memory"); no file can
    # be that long, so even without that check UCX fails at once instead of
    # filling /dev/shm (which sizes such as 2^62 do).
    (1 << 63, ferry.NoMemory, r"allocate\(size=9223372036854775808\).*machine's memory"),
    (1 << 64, ValueError, "size"),
    (1.5, TypeError, "size must be an int"),
    (True, TypeError, "size must be an int"),
])
def test_allocate_bad_sizes(connector, size, exc, match):
    before = connector._live_regions
    with pytest.raises(exc, match=match):
        connector.allocate(size)
    assert connector._live_regions == before


# ---- bytes through the coordinator, to and from ferry-worker processes ------

CASES = [(1, 1), (4096, 16), ((1 << 20) + 7, 1), ((1 << 20) + 7, 16), (16 << 20, 1)]


@pytest.mark.parametrize("size,n", CASES)
def test_c_sender_writes_into_an_allocation(connector, coordinator, cluster, size, n):
    with connector.allocate(size) as r:
        request_id = rid("alloc-recv")
        with connector.create_writable(slices(r, n)) as op:
            op.publish(coordinator, request_id, TOKEN)
            sender = worker(cluster, "send", request_id, size, n)
            op.wait(120)
            rc, out, err = finish(sender)
            assert rc == 0, err
        assert np.array_equal(region_array(r), pattern(size))


@pytest.mark.parametrize("size,n", [(1, 1), ((1 << 20) + 7, 16)])
def test_c_reader_reads_an_allocation(connector, coordinator, cluster, size, n):
    with connector.allocate(size) as r:
        region_array(r)[:] = pattern(size)
        request_id = rid("alloc-serve")
        with connector.create_readable(slices(r, n)) as op:
            token = op.publish(coordinator, request_id)
            reader = worker(cluster, "read", request_id, size, n, token=token)
            op.wait(120)
            rc, out, err = finish(reader)
            assert rc == 0, err  # ferry-worker checked every byte


@pytest.mark.parametrize("size,n", [(4096, 1), ((1 << 20) + 7, 16)])
def test_allocation_as_the_active_side(connector, coordinator, cluster, size, n):
    """Written from (to a C receiver, which checks every byte) and read into
    (from a C server)."""
    with connector.allocate(size) as r:
        region_array(r)[:] = pattern(size)
        request_id = rid("alloc-send")
        receiver = start_passive(cluster, "recv", request_id, size, n)
        with connector.begin_write_by_id(coordinator, request_id, TOKEN, slices(r, n),
                                         wait=30) as op:
            op.wait(120)
        rc, out, err = finish(receiver)
        assert rc == 0, err
        region_array(r)[:] = 0
        request_id = rid("alloc-read")
        server = start_passive(cluster, "serve", request_id, size, n)
        with connector.begin_read_by_id(coordinator, request_id, TOKEN, slices(r, n),
                                        wait=30) as op:
            op.wait(120)
        assert finish(server)[0] == 0
        assert np.array_equal(region_array(r), pattern(size))


# ---- many operations on one region: no registration of their own --------------


def mem_maps(c):
    return c.stats()["mem_maps"]


def writes_into(receiver, sender, descs, src):
    for i, d in enumerate(descs):
        with receiver.create_writable(d) as w:
            with sender.begin_write(ferry.Descriptor(src[i]), w.metadata()) as a:
                a.wait(30)
            w.wait(30)


def test_many_operations_on_one_region_map_nothing():
    """Thirty writes into thirty slices of one allocation: no ucp_mem_map on
    either side (libferry's mem_maps counter), where the same writes into
    plain memory map one descriptor per operation; and the sender unpacks
    the region's one key once."""
    n, part = 30, 4096
    receiver, sender = ferry.Connector("many-rx"), ferry.Connector("many-tx")
    src = [pattern(part * (i + 1))[-part:].copy() for i in range(n)]
    plain = np.zeros(n * part, np.uint8)
    before = mem_maps(receiver)
    writes_into(receiver, sender, [ferry.Descriptor(p) for p in np.split(plain, n)], src)
    assert mem_maps(receiver) - before == n  # per-operation registration
    r = receiver.allocate(n * part)
    assert mem_maps(receiver) - before == n + 1  # the region's one mapping
    unpacked = sender.stats()["rkeys_unpacked"]
    writes_into(receiver, sender, slices(r, n), src)
    assert mem_maps(receiver) - before == n + 1 and mem_maps(sender) == 0
    assert sender.stats()["rkeys_unpacked"] - unpacked <= 1
    assert np.array_equal(region_array(r), np.concatenate(src))
    # The sender's own allocation: writes from it map nothing either.
    s = sender.allocate(n * part)
    region_array(s)[:] = np.concatenate(src)
    dst = receiver.allocate(n * part)
    maps = mem_maps(receiver), mem_maps(sender)
    for i in range(n):
        with receiver.create_writable(dst.descriptor(i * part, part)) as w:
            with sender.begin_write(s.descriptor(i * part, part), w.metadata()) as a:
                a.wait(30)
            w.wait(30)
    assert (mem_maps(receiver), mem_maps(sender)) == maps
    assert np.array_equal(region_array(dst), np.concatenate(src))
    for region in (r, s, dst):
        region.close()
    receiver.close()
    sender.close()


def test_operations_hold_the_region(connector, sender):
    """An operation on the region's memory holds it in libferry: close()
    raises Busy (nothing freed), the operation goes on and its bytes land;
    once it is closed the region closes. A descriptor over a plain buffer
    that lies inside a registered region holds it as well."""
    r = connector.allocate(8192)
    w = connector.create_writable(r.descriptor(0, 4096))
    with pytest.raises(ferry.Busy, match="operation") as e:
        r.close()
    assert e.value.code == ferry.Busy.code and not r.closed
    with sender.begin_write(ferry.Descriptor(b"q" * 4096), w.metadata()) as a:
        a.wait(30)
    w.wait(30)
    assert bytes(memoryview(r)[:4096]) == b"q" * 4096
    w.close()
    r.close()
    assert r.closed


def test_close_while_an_active_operation_runs(connector, sender):
    """An active write from a region holds it until its data stopped
    moving: close() during it raises Busy or, once the write is over,
    succeeds; never a crash, never memory freed under the transfer."""
    size = 16 << 20
    dst = np.zeros(size, np.uint8)
    r = sender.allocate(size)
    region_array(r)[:] = pattern(size)
    with connector.create_writable(ferry.Descriptor(dst)) as w:
        a = sender.begin_write(r, w.metadata())
        try:
            r.close()
            closed_early = True
        except ferry.Busy:
            closed_early = False
        if closed_early:  # only possible once the write let go of the region
            assert a.status.is_final
        a.wait(30)
        w.wait(30)
        a.close()
    assert np.array_equal(dst, pattern(size))
    r.close()


def test_close_refused_while_exported(connector):
    r = connector.allocate(4096)
    mv = memoryview(r)
    with pytest.raises(BufferError, match="export"):
        r.close()
    mv.release()
    arr = region_array(r)
    with pytest.raises(BufferError):
        r.close()
    del arr
    # torch.frombuffer releases its export at once and keeps only a
    # reference to the object it was given: given a memoryview (or a numpy
    # array, through from_numpy) the export lives as long as the tensor.
    t = torch.frombuffer(memoryview(r), dtype=torch.uint8)
    with pytest.raises(BufferError):
        r.close()
    del t
    t = torch.from_numpy(region_array(r))
    with pytest.raises(BufferError):
        r.close()
    del t
    gc.collect()
    assert r._exports == 0
    r.close()
    assert r.closed


def test_torch_frombuffer_keeps_the_region_alive():
    """torch.frombuffer(region) holds a reference (no export): the region,
    and so its memory, lives as long as the tensor."""
    c = ferry.Connector("region-torch")
    r = c.allocate(4096)
    ref = weakref.ref(r)
    t = torch.frombuffer(r, dtype=torch.uint8)
    del r
    gc.collect()
    assert ref() is not None and c._live_regions == 1
    t[:] = 5
    assert bytes(memoryview(ref())[:2]) == b"\x05\x05"
    del t
    gc.collect()
    assert ref() is None and c._live_regions == 0
    c.close()


def test_use_after_close(connector, sender):
    r = connector.allocate(4096)
    d = r.descriptor()
    r.close()
    r.close()  # idempotent
    with pytest.raises(BufferError, match="closed"):
        memoryview(r)
    with pytest.raises(ferry.Misuse, match="closed"):
        r.descriptor()
    with pytest.raises(ferry.Misuse, match="closed"):
        ferry.Descriptor(r)
    with pytest.raises(ferry.Misuse, match="descriptor 0: its region is closed"):
        connector.create_writable(d)
    with pytest.raises(ferry.Misuse, match="descriptor 1: its region is closed"):
        connector.create_readable([ferry.Descriptor(bytearray(8)), d])
    with connector.create_writable(ferry.Descriptor(bytearray(4096))) as w:
        with pytest.raises(ferry.Misuse, match="its region is closed"):
            sender.begin_write(d, w.metadata())
    assert "closed" in repr(r)


def test_a_region_of_another_connector_is_refused(connector, sender):
    """libferry holds a region for its own connector's operations only: an
    operation of another connector over a Region's descriptor, or a region
    made over it, would leave the owner's close() free to free the memory
    under them (a peer's write then landed in unmapped memory, a segfault).
    Both are refused, naming the descriptor and what to pass instead; a
    memoryview of the region works there, and keeps the region open while
    the operation lives. Registering a Region's memory as a region again is
    refused on its own connector too."""
    r = connector.allocate(8192)
    with pytest.raises(ferry.InvalidArgument, match="descriptor 0: .*Region of another "
                       "Connector.*memoryview"):
        sender.create_writable(r.descriptor())
    with pytest.raises(ferry.InvalidArgument, match="descriptor 1: .*another Connector"):
        sender.create_readable([ferry.Descriptor(bytearray(8)), ferry.Descriptor(r)])
    theirs = sender.allocate(4096)
    with connector.create_writable(ferry.Descriptor(bytearray(4096))) as w:
        with pytest.raises(ferry.InvalidArgument, match="another Connector"):
            connector.begin_write(theirs, w.metadata())
    theirs.close()
    for c, whose in ((sender, "another"), (connector, "this")):
        with pytest.raises(ferry.InvalidArgument, match=f"Region of {whose} Connector"):
            c.register_memory(r.descriptor(0, 4096))
    # Through a view: the operation's descriptor holds an export of the
    # region, which refuses to close meanwhile, and the bytes land in it.
    with sender.create_writable(ferry.Descriptor(memoryview(r)[:4096])) as w:
        with pytest.raises(BufferError):
            r.close()
        with connector.begin_write(ferry.Descriptor(b"x" * 4096), w.metadata()) as a:
            a.wait(30)
        w.wait(30)
    del w
    gc.collect()
    assert bytes(memoryview(r)[:4096]) == b"x" * 4096
    r.close()
    assert r.closed


def test_connector_kept_alive_and_refuses_to_close_before_regions():
    c = ferry.Connector("region-owner")
    ref = weakref.ref(c)
    r = c.allocate(4096)
    with pytest.raises(ferry.Busy, match="region"):
        c.close()
    assert not c.closed
    del c
    gc.collect()
    assert ref() is not None and r.connector is ref()  # the region keeps it
    r.close()
    ref().close()
    del r
    gc.collect()
    assert ref() is None


def test_garbage_collection_releases_the_region():
    c = ferry.Connector("region-gc")
    r = c.allocate(1 << 20)
    ref = weakref.ref(r)
    assert c._live_regions == 1
    del r
    gc.collect()
    assert ref() is None and c._live_regions == 0
    c.close()


def test_collected_while_used_is_released_later(sender):
    """A region dropped while an operation made from its bare address still
    holds it in libferry keeps its memory (the write still lands) and is
    deregistered by its connector once free."""
    c = ferry.Connector("region-orphan")
    r = c.allocate(4096)
    ptr = r.ptr
    d = ferry.Descriptor((ptr, 4096, "cpu"))  # no reference to the region
    w = c.create_writable(d)
    del r
    gc.collect()
    assert c._live_regions == 1  # an orphan: libferry said Busy
    with sender.begin_write(ferry.Descriptor(b"o" * 4096), w.metadata()) as a:
        a.wait(30)
    w.wait(30)
    assert ctypes.string_at(ptr, 4096) == b"o" * 4096
    w.close()
    c.close()  # reaps the orphan first, then closes
    assert c.closed and c._live_regions == 0


def test_an_orphan_keeps_its_connector_alive():
    """A region dropped while libferry holds it keeps its reference to the
    connector until it is deregistered: the connector cannot be collected
    (its libferry connector would then be destroyed Busy, and leak) while
    the orphan is in use; once the orphan is reaped, the connector goes."""
    c = ferry.Connector("region-orphan-owner")
    cref = weakref.ref(c)
    r = c.allocate(4096)
    w = c.create_writable(ferry.Descriptor((r.ptr, 4096, "cpu")))
    held = sys.getrefcount(c)
    del r
    gc.collect()
    assert c._live_regions == 1  # an orphan: libferry said Busy
    assert sys.getrefcount(c) == held  # the orphan has the region's reference
    w.close()  # lets go of the region: reaped at once
    assert c._live_regions == 0 and sys.getrefcount(c) == held - 1
    del w, c
    gc.collect()
    assert cref() is None


def test_unfinished_operation_over_a_memoryview_of_a_region_does_not_block_closing():
    """A descriptor over memoryview(region) closed unfinished is not parked
    on the connector (libferry holds the region while data may move, and
    refuses to deregister it meanwhile): parking it would keep an export on
    the region, so the region would refuse to close (BufferError) and the
    connector (a live region, Busy), for good. Both close, and the bytes
    written before are intact."""
    c = ferry.Connector("region-view-parked")
    sender = ferry.Connector("region-view-sender")
    r = c.allocate(8192)
    m = memoryview(r)
    with c.create_writable(ferry.Descriptor(m[:4096])) as w:
        with sender.begin_write(ferry.Descriptor(b"v" * 4096), w.metadata()) as a:
            a.wait(30)
        w.wait(30)
    w2 = c.create_writable(ferry.Descriptor(m[4096:]))
    w2.close()  # unfinished
    assert bytes(m[:4096]) == b"v" * 4096
    m.release()
    r.close()
    assert r.closed
    c.close()
    assert c.closed
    sender.close()


def test_unfinished_operation_over_a_numpy_view_of_a_region_lets_go_of_it():
    """Whether memory is parked is decided by address (libferry holds a
    region its operation uses while data may move), not by how the
    descriptor was made: over numpy.frombuffer(region) closed unfinished, the
    array is let go at once. It was parked until connector.close(), its
    export keeping the region from closing (BufferError) and so the
    connector (Busy), for the life of the process."""
    c = ferry.Connector("region-numpy-parked")
    r = c.allocate(8192)
    a = np.frombuffer(r, np.uint8)
    ref = weakref.ref(a)
    c.create_writable(ferry.Descriptor(a[:4096])).close()
    del a
    gc.collect()
    assert ref() is None and r._exports == 0
    r.close()
    c.close()
    assert r.closed and c.closed


def test_unfinished_operations_over_a_torch_view_of_a_region_let_go_of_it():
    """README's pattern, torch.frombuffer(memoryview(pool)): a passive and an
    active operation over the tensor, closed unfinished, keep nothing of it,
    however many are cancelled."""
    c = ferry.Connector("region-torch-parked")
    sender = ferry.Connector("region-torch-sender")
    pool = c.allocate(8192)
    kv = torch.frombuffer(memoryview(pool), dtype=torch.uint8)
    ref = weakref.ref(kv)
    for _ in range(10):
        c.create_writable(ferry.Descriptor(kv[:4096])).close()
    with sender.create_readable(ferry.Descriptor(b"t" * 4096)) as rd:
        c.begin_read(rd.metadata(), ferry.Descriptor(kv[4096:])).close()
    del kv
    gc.collect()
    assert ref() is None and pool._exports == 0
    pool.close()
    c.close()
    sender.close()


def test_memory_of_an_unfinished_operation_nobody_claimed_goes_at_close():
    """Of one operation closed unfinished, with nobody admitted, the array
    inside a region (register_memory's own array, not a view of the Region)
    and the one outside every region are both let go at once, and the
    region closes: nothing can land in either. (Memory an admitted peer may
    still reach is held: test_api's stopped-peer test, per descriptor.)"""
    c = ferry.Connector("region-mixed-parked")
    buf = np.zeros(8192, np.uint8)
    r = c.register_memory(buf)
    inside, outside = buf[:4096], np.zeros(4096, np.uint8)
    refs = weakref.ref(inside), weakref.ref(outside)
    c.create_writable([ferry.Descriptor(inside), ferry.Descriptor(outside)]).close()
    del inside, outside
    gc.collect()
    assert refs[0]() is None
    assert refs[1]() is None
    r.close()
    c.close()


def test_with_block_does_not_hide_an_exception(connector):
    r = connector.allocate(4096)
    with pytest.raises(KeyError):
        with r:
            mv = memoryview(r)
            raise KeyError("inner")
    assert not r.closed  # the export still lives: released later, not hidden
    mv.release()
    r.close()


# ---- register_memory ------------------------------------------------------------


def test_register_memory(connector, sender):
    buf = bytearray(1 << 16)
    r = connector.register_memory(buf)
    assert not r.allocated and r.size == len(buf)
    assert r.ptr == _ferry._buffer_address(memoryview(buf))
    with pytest.raises(BufferError):
        buf.extend(b"x")  # the region keeps it exported
    with pytest.raises(ferry.AlreadyExists, match="register_memory.*overlaps"):
        connector.register_memory(memoryview(buf)[100:200])
    # Any descriptor inside the region uses it, made from the region or not.
    with connector.create_writable(ferry.Descriptor(memoryview(buf)[:4096])) as w:
        with pytest.raises(ferry.Busy):
            r.close()
        with sender.begin_write(ferry.Descriptor(b"r" * 4096), w.metadata()) as a:
            a.wait(30)
        w.wait(30)
    assert buf[:4096] == b"r" * 4096 and bytes(memoryview(r)[:4096]) == b"r" * 4096
    r.close()
    buf.extend(b"x")  # released with the region
    with pytest.raises(ferry.InvalidArgument, match="read-only"):
        connector.register_memory(b"x" * 64)
    t = torch.zeros(4096, dtype=torch.uint8)
    with connector.register_memory(t) as rt:
        assert rt.ptr == t.data_ptr() and rt.size == 4096


def test_async_wait_on_an_allocation(connector, sender):
    import asyncio

    async def main():
        with connector.allocate(4096) as r:
            with connector.create_writable(r) as w:
                with sender.begin_write(ferry.Descriptor(b"z" * 4096), w.metadata()) as a:
                    await a.wait_for_completion(30)
                await w.wait_for_completion(30)
            assert bytes(memoryview(r)) == b"z" * 4096

    asyncio.run(main())


# ---- the GIL while a region closes ------------------------------------------------

UNMAP_GATE = os.path.join(BUILD_DIR, "tests", "worker", "libferry_unmap_gate.so")
GATE_BYTES = 3 << 20

# Run in a child with libferry_unmap_gate.so preloaded (tests/worker/
# unmap_gate.c): each close of a GATE_BYTES region stops inside
# ucp_mem_unmap, with the connector's lock held, until this script lets it
# go. Meanwhile a thread makes a call that takes that lock, and this
# thread must see it in flight (it let go of the GIL) before it lets the
# unmap go; with the GIL held the script cannot run until the gate's own
# deadline, after the call has returned.
GIL_SCRIPT = r"""
import os, sys, threading, time
import ferry

entered, release = int(sys.argv[2]), int(sys.argv[3])  # the ends the gate does not use
c = ferry.Connector("region-gil")
buf = bytearray(4096)


def seen_in_flight(what, call, in_flight):
    region = c.allocate(int(sys.argv[1]))
    closer = threading.Thread(target=region.close)
    closer.start()
    assert os.read(entered, 1) == b"e"  # the lock is held from here
    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 20
    seen = False
    while not seen and time.monotonic() < deadline:
        seen = in_flight()
        time.sleep(0.001)
    os.write(release, b"r")
    closer.join(30)
    caller.join(30)
    assert not closer.is_alive() and not caller.is_alive() and region.closed
    print(f"{what}: {'in flight while the lock was held' if seen else 'never seen in flight'}",
          flush=True)


op = c.create_writable(ferry.Descriptor(buf))
seen_in_flight("arm", op._arm, lambda: op._busy > 0)
seen_in_flight("token", lambda: op.access_token, lambda: op._busy > 0)
stats = []
seen_in_flight("stats", lambda: stats.append(c.stats()), lambda: c._live_ops > 1)
assert stats and stats[0]["mem_maps"] >= 1
op.close()
c.close()
"""


@pytest.mark.skipif(not os.path.exists(UNMAP_GATE),
                    reason=f"no {UNMAP_GATE} (a sanitizer build does not make it)")
def test_lock_taking_calls_let_go_of_the_gil():
    """A region's close holds the connector's lock across ucp_mem_unmap
    (half a second for 2 GiB). The first wait_for_completion of an operation
    (_arm), an operation's access_token and Connector.stats() take that
    lock: they let go of the GIL
    first, so every other thread (an event loop) runs meanwhile, where they
    stopped the whole interpreter for as long as the unmap took. Their
    in-flight counts (the operation's busy, the connector's live_ops) keep
    close() away while they run."""
    entered_r, entered_w = os.pipe()
    release_r, release_w = os.pipe()
    env = dict(os.environ, LD_PRELOAD=UNMAP_GATE, FERRY_TEST_GATE_BYTES=str(GATE_BYTES),
               FERRY_TEST_GATE_ENTERED=str(entered_w), FERRY_TEST_GATE_RELEASE=str(release_r),
               FERRY_TEST_GATE_MS="30000")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", GIL_SCRIPT, str(GATE_BYTES), str(entered_r), str(release_w)],
            env=env, pass_fds=(entered_r, entered_w, release_r, release_w),
            capture_output=True, text=True, timeout=120)
    finally:
        for fd in (entered_r, entered_w, release_r, release_w):
            os.close(fd)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "arm: in flight while the lock was held" in proc.stdout, out
    assert "stats: in flight while the lock was held" in proc.stdout, out
    assert "token: in flight while the lock was held" in proc.stdout, out
    assert proc.stderr.count("unmap-gate: released by the test") == 3, out
