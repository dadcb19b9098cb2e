"""asyncio: the seed's own example (an async receiver with a torch tensor,
the metadata handed over an HTTP side channel) against a writer in another
process; hundreds of operations awaited at once from one loop, completing
in any order; waits that time out, cancellation, and closing under a
waiter."""
import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import urllib.request

import numpy as np
import pytest
import torch

import ferry

from conftest import pattern


class Receiver:
    """The seed example's class, unchanged but for the package name."""

    def __init__(self, connector, writer_url):
        self.connector = connector
        self.writer_url = writer_url

    async def request_remote_data(self, op_metadata):
        body = json.dumps({"metadata": op_metadata.to_json(), "size": self.size}).encode()
        req = urllib.request.Request(self.writer_url + "/write", data=body, method="POST")
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(None, lambda: urllib.request.urlopen(req, timeout=60))
        assert reply.status == 200

    async def recv_data(
      self,
      local_tensor: torch.Tensor
    ) -> None:
      descriptor = ferry.Descriptor(local_tensor)

      with self.connector.create_writable(descriptor) as write_op:
        op_metadata = write_op.metadata()

        # Send the metadata to the remote worker via sideband communication.
        await self.request_remote_data(op_metadata)
        # Wait the remote worker to complete its write operation to local_tensor.
        # AKA receive data from remote worker.
        await write_op.wait_for_completion()


@pytest.fixture(scope="module")
def http_writer():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [p for p in [os.environ.get("PYTHONPATH"), os.path.dirname(__file__)] if p]))
    p = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__),
                                                       "http_writer.py")],
                         stdout=subprocess.PIPE, env=env, text=True)
    port = int(p.stdout.readline())
    url = f"http://127.0.0.1:{port}"
    yield url
    urllib.request.urlopen(urllib.request.Request(url + "/quit", data=b"", method="POST"))
    assert p.wait(30) == 0


@pytest.mark.parametrize("size", [1, 4096, (1 << 20) + 3, 64 << 20])
def test_seed_example_recv_data(connector, http_writer, size):
    receiver = Receiver(connector, http_writer)
    receiver.size = size
    local_tensor = torch.zeros(size, dtype=torch.uint8)
    asyncio.run(receiver.recv_data(local_tensor))
    assert np.array_equal(local_tensor.numpy(), pattern(size))


def test_many_operations_awaited_at_once(connector, sender):
    n = 300
    dsts = [np.zeros(4096 + i, np.uint8) for i in range(n)]
    srcs = [pattern(4096 + i) for i in range(n)]
    finished = []

    async def receive(i, op):
        await op.wait_for_completion(timeout=120)
        finished.append(i)

    async def main():
        threads = threading.active_count()
        passive = [connector.create_writable(ferry.Descriptor(d)) for d in dsts]
        waiters = [asyncio.ensure_future(receive(i, op)) for i, op in enumerate(passive)]
        await asyncio.sleep(0)
        # Every waiter is parked on its future: no thread per waiting operation.
        assert threading.active_count() == threads
        order = list(range(n))
        random.Random(7).shuffle(order)
        active = []
        for i in order:
            active.append(sender.begin_write(ferry.Descriptor(srcs[i]), passive[i].metadata()))
            if len(active) % 32 == 0:
                await asyncio.sleep(0)  # let completions come in meanwhile
        await asyncio.gather(*(a.wait_for_completion(timeout=120) for a in active))
        await asyncio.gather(*waiters)
        for op in passive + active:
            assert op.status == ferry.OperationStatus.COMPLETE
            op.close()

    asyncio.run(main())
    assert sorted(finished) == list(range(n))
    for d, s in zip(dsts, srcs):
        assert np.array_equal(d, s)
    assert connector._live_ops == 0 and sender._live_ops == 0


def test_async_wait_times_out_then_completes(connector, sender):
    async def main():
        dst = bytearray(64)
        with connector.create_writable(ferry.Descriptor(dst)) as w:
            with pytest.raises(ferry.TimedOut):
                await w.wait_for_completion(timeout=0.05)
            assert w.status == ferry.OperationStatus.INITIALIZED
            with sender.begin_write(ferry.Descriptor(b"t" * 64), w.metadata()) as a:
                await a.wait_for_completion(10)
            await w.wait_for_completion(10)
            # Final already: answers at once, again.
            await w.wait_for_completion()
        assert bytes(dst) == b"t" * 64

    asyncio.run(main())


def test_cancel_wakes_the_async_waiter(connector):
    async def main():
        w = connector.create_writable(ferry.Descriptor(bytearray(64)))
        waiter = asyncio.ensure_future(w.wait_for_completion())
        await asyncio.sleep(0)
        w.cancel()
        with pytest.raises(ferry.Cancelled):
            await asyncio.wait_for(waiter, 10)
        w.close()

    asyncio.run(main())


def test_closed_between_its_check_and_arming(connector):
    """Another thread may close the operation while wait_for_completion
    sets up (its code lets go of the GIL): the waiter gets the closed
    outcome (Cancelled), not Misuse ("operation: closed")."""
    w = connector.create_writable(ferry.Descriptor(bytearray(64)))
    watch = connector._watch

    def closing_watch(loop):  # the other thread's close, in that window
        w.close()
        watch(loop)

    connector._watch = closing_watch
    try:
        with pytest.raises(ferry.Cancelled):
            asyncio.run(w.wait_for_completion(10))
    finally:
        del connector._watch
    assert w.closed


def test_one_failed_wake_up_loses_no_other(connector):
    """Operations that end together are drained from the completion queue
    at once, and each is queued once: when waking one's waiters fails, the
    others' still wake (their waits would otherwise never return), and the
    failure goes to the loop's exception handler."""
    async def main():
        loop = asyncio.get_running_loop()
        reported = []
        loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx))
        ops = [connector.create_writable(ferry.Descriptor(bytearray(64))) for _ in range(3)]
        waiters = [asyncio.ensure_future(op.wait_for_completion()) for op in ops]
        await asyncio.sleep(0)

        def failing():
            raise RuntimeError("a wake-up that fails")

        ops[0]._wake_waiters = failing
        ended = threading.Thread(target=lambda: [op.cancel() for op in ops])
        ended.start()  # libferry's own cancels, from another thread
        ended.join(10)
        for w in waiters[1:]:
            with pytest.raises(ferry.Cancelled):
                await asyncio.wait_for(w, 10)
        assert any("a wake-up that fails" in str(c.get("exception")) for c in reported)
        waiters[0].cancel()
        del ops[0]._wake_waiters
        for op in ops:
            op.close()

    asyncio.run(main())


def test_a_loop_closed_under_a_waiter_is_let_go(connector):
    """A loop closed while a wait_for_completion was pending on it is
    dropped from the connector's loops at the next wait on any loop, not
    kept (with its reader) until the abandoned task is collected."""
    w = connector.create_writable(ferry.Descriptor(bytearray(64)))
    old = asyncio.new_event_loop()
    task = old.create_task(w.wait_for_completion())
    task._log_destroy_pending = False  # abandoned on purpose: its loop closes
    old.run_until_complete(asyncio.sleep(0))
    assert old in connector._loops
    old.close()

    async def main():
        waiter = asyncio.ensure_future(w.wait_for_completion())
        await asyncio.sleep(0)
        assert old not in connector._loops
        w.cancel()
        with pytest.raises(ferry.Cancelled):
            await asyncio.wait_for(waiter, 10)

    asyncio.run(main())
    w.close()
    del task


def test_close_under_an_async_waiter(connector):
    async def main():
        w = connector.create_writable(ferry.Descriptor(bytearray(64)))
        waiter = asyncio.ensure_future(w.wait_for_completion())
        await asyncio.sleep(0)
        w.close()
        with pytest.raises(ferry.Cancelled):
            await asyncio.wait_for(waiter, 10)

    asyncio.run(main())


def test_task_cancelled_while_waiting_leaves_nothing_behind(connector):
    async def main():
        w = connector.create_writable(ferry.Descriptor(bytearray(64)))
        waiter = asyncio.ensure_future(w.wait_for_completion())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert w._waiters is None and not connector._loops
        w.close()

    asyncio.run(main())


def test_an_armed_operation_dropped_never_comes_back_through_the_queue():
    """An operation armed for the completion queue and then dropped is
    cancelled and destroyed with the GIL released; the completion its own
    cancel reports meanwhile must not be queued, or another thread's drain
    would hand out an operation being freed. Here nothing completes except
    by those cancels, so the draining thread must get nothing at all."""
    c = ferry.Connector("armed-dropped")
    stop = threading.Event()
    drained = []

    def drainer():
        while not stop.is_set():
            drained.extend(type(op).__name__ for op in c._drain())

    t = threading.Thread(target=drainer, daemon=True)
    t.start()
    try:
        buf = bytearray(64)
        for _ in range(3000):
            w = c.create_writable(ferry.Descriptor(buf))
            w._arm()
            del w  # dealloc: cancel and destroy, the GIL released around both
    finally:
        stop.set()
        t.join(30)
    assert not t.is_alive()
    assert drained == []
    assert c._live_ops == 0
    c.close()
