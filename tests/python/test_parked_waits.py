"""Parked Lookup waits (wait_ms) against a real etcd and coordinator.

  - a Lookup the client cancels while its first look reads etcd (etcd
    frozen, so the read is still in flight) is not left parked once that
    read misses: ferry_parked_waits returns to 0, though its wait_ms is
    2^62 and it has no deadline;
  - --max-waits bounds the parked waits: past it a Lookup that would park is
    refused RESOURCE_EXHAUSTED naming the flag, and once one ends another
    parks again;
  - a parked Lookup looks again (reads etcd) only when its own request ID
    changes: other clients registering hundreds of other IDs meanwhile cost
    no more etcd reads than the first look's, give or take a couple;
  - a Lookup parked while the view is not loaded (its loads fail:
    FERRY_TEST_LOAD_FAILS), whose ID is registered before the view loads,
    is answered when the view loads: no watch event ever tells of that
    Register (the watch starts after the load), so before, it waited out its
    wait_ms and ended DEADLINE_EXCEEDED with the record registered.

Deadlines, never sleeps, as synchronisation. Run with /usr/bin/python3.
"""
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import ferry_harness  # noqa: E402
from ferry_harness import wait_until  # noqa: E402

import grpc  # noqa: E402

TOKEN = "parked-token-0123456789"
BOUND = 20  # seconds: what "soon" means here
FOREVER = 1 << 62  # wait_ms


def metadata(pb, name):
    return pb.RdmaMetadata(
        version=1, kind=pb.OPERATION_KIND_WRITE, worker_address=b"\x01" * 64,
        descriptors=[pb.Descriptor(address=0x10000, size=4096,
                                   device=pb.Device(kind=pb.DEVICE_KIND_HOST), rkey=b"k" * 32)],
        notification_key=os.urandom(16), worker_name=name, hostname="localhost")


class ParkedWaits(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ferry-parked-")
        # Cleanups run even when setUp fails (tearDown does not), after
        # tearDown: etcd is stopped and the directory removed either way.
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.gen_dir = os.path.join(self.tmp, "gen")
        ferry_harness.generate_stubs(self.gen_dir)
        from ferry.v1 import coordinator_pb2, coordinator_pb2_grpc, types_pb2
        self.pb, self.cpb, self.grpc_mod = types_pb2, coordinator_pb2, coordinator_pb2_grpc
        self.etcd = ferry_harness.Etcd(self.tmp)
        self.addCleanup(self.etcd.stop)
        self.etcd.start()
        self.coord = None
        self.channels = []
        self.frozen = False
        self.metrics_port = None

    def tearDown(self):
        if self.frozen:
            self.etcd.proc.send_signal(signal.SIGCONT)
        for ch in self.channels:
            ch.close()
        if self.coord is not None:
            self.coord.stop()

    def start_coordinator(self, extra=(), env=None):
        self.coord = ferry_harness.Coordinator(
            self.tmp, self.etcd.endpoint, ttl=60,
            extra=("--metrics-listen", "127.0.0.1:0", *extra), env=env)
        self.coord.start()
        self.metrics_port = self.coord.metrics_port()

    def stub(self):
        ch = grpc.insecure_channel(self.coord.target)
        self.channels.append(ch)
        return self.grpc_mod.CoordinatorStub(ch)

    def metric(self, name, /, **labels):
        return ferry_harness.metric(self.metrics_port, name, **labels)

    def parked(self):
        return self.metric("ferry_parked_waits")

    def lookup(self, stub, rid, wait_ms=FOREVER, timeout=None):
        return stub.Lookup.future(
            self.cpb.LookupRequest(request_id=rid, access_token=TOKEN, wait_ms=wait_ms),
            timeout=timeout)

    def test_cancelled_while_its_look_reads_etcd_is_not_left_parked(self):
        self.start_coordinator()
        stub = self.stub()
        wait_until(lambda: self.metric("ferry_healthy") == 1, BOUND, "healthy")
        ferry_harness.freeze(self.etcd.proc)
        self.frozen = True
        fut = self.lookup(stub, "pw-cancel")  # no deadline, wait_ms 2^62
        wait_until(lambda: self.coord.log_contains("op pw-cancel: not in the view; reading etcd"),
                   BOUND, "the Lookup's look to read etcd")
        fut.cancel()
        wait_until(lambda: self.metric("ferry_rpc_in_flight",
                                       method="/ferry.v1.Coordinator/Lookup") == 0,
                   BOUND, "the cancelled Lookup to end")
        self.etcd.proc.send_signal(signal.SIGCONT)
        self.frozen = False
        # The look's etcd read now misses and the call would park: it must
        # not stay parked.
        wait_until(lambda: self.coord.log_contains("op pw-cancel: lookup from"),
                   BOUND, "the missed look to try to park")
        wait_until(lambda: self.parked() == 0, BOUND, "ferry_parked_waits to return to 0")

    def test_max_waits_bounds_parked_lookups(self):
        self.start_coordinator(extra=("--max-waits", "2"))
        stubs = [self.stub() for _ in range(3)]
        first = self.lookup(stubs[0], "pw-a", timeout=60)
        second = self.lookup(stubs[1], "pw-b", timeout=60)
        wait_until(lambda: self.parked() == 2, BOUND, "two parked Lookups")
        with self.assertRaises(grpc.RpcError) as cm:
            stubs[2].Lookup(self.cpb.LookupRequest(request_id="pw-c", access_token=TOKEN,
                                                   wait_ms=60000), timeout=BOUND)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("--max-waits", cm.exception.details())
        self.assertEqual(self.parked(), 2)
        # Counted by the bound it met, which is exported beside it.
        self.assertEqual(self.metric("ferry_limit_refusals_total", limit="max_waits"), 1)
        self.assertEqual(self.metric("ferry_limit", name="max_waits"), 2)
        # One ends (its client cancels): another parks again.
        first.cancel()
        wait_until(lambda: self.parked() == 1, BOUND, "the cancelled wait to go")
        third = self.lookup(stubs[2], "pw-c", timeout=60)
        wait_until(lambda: self.parked() == 2, BOUND, "a new Lookup to park")
        self.assertFalse(third.done())
        for f in (second, third):
            f.cancel()
        wait_until(lambda: self.parked() == 0, BOUND, "every wait to go")

    def test_other_ids_do_not_make_parked_lookups_read_etcd(self):
        n_lookups = 10
        self.start_coordinator()
        reg_stubs = [self.stub() for _ in range(4)]
        look_stub = self.stub()
        range_before = self.metric("ferry_etcd_requests_total", kind="kv/range")
        stop = threading.Event()
        registered = [0]

        def storm(k):
            i = 0
            while not stop.is_set():
                reg_stubs[k].Register(self.cpb.RegisterRequest(
                    request_id=f"pw-other-{k}-{i}", metadata=metadata(self.pb, "storm"),
                    access_token=TOKEN, ttl_seconds=60, owner="storm"), timeout=BOUND)
                registered[0] += 1
                i += 1

        threads = [threading.Thread(target=storm, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: registered[0] >= 20, BOUND, "the registers to flow")
            futs = [self.lookup(look_stub, f"pw-target-{i}", wait_ms=120000, timeout=120)
                    for i in range(n_lookups)]
            wait_until(lambda: self.parked() == n_lookups, BOUND, "the Lookups to park")
            start = registered[0]
            # A few hundred other IDs change while they wait.
            wait_until(lambda: registered[0] >= start + 600, 90, "600 other registers")
        finally:
            stop.set()
            for t in threads:
                t.join()
        ranges = self.metric("ferry_etcd_requests_total", kind="kv/range") - range_before
        self.assertEqual(self.parked(), n_lookups)
        # The parked Lookups' reads of etcd, from the coordinator's debug
        # log (ferry_etcd_requests_total{kind="kv/range"} counts every
        # read of the replica's, not only theirs): one each for the first
        # look, and a couple to spare.
        with open(self.coord.log_path) as f:
            log = f.read()
        reads = sum(log.count(f"op pw-target-{i}: not in the view; reading etcd\n")
                    for i in range(n_lookups))
        self.assertLessEqual(reads, n_lookups + 2,
                             f"{reads} etcd reads for {n_lookups} parked Lookups ({ranges:.0f} "
                             f"kv/range in all) while {registered[0]} other IDs were registered")
        for f in futs:
            f.cancel()
        wait_until(lambda: self.parked() == 0, BOUND, "every wait to go")

    def test_lookup_parked_before_the_view_loads_is_answered_by_the_load(self):
        # The first load and six retries fail (100, 200, ... 3200 ms apart):
        # the view loads about 6.3 s after the start, within the wait.
        # Its wait (and its call's deadline) is ten minutes: an answer within
        # answer_by came from the load, not from the end of the wait (which
        # answers from the view, loaded by then).
        self.start_coordinator(env={"FERRY_TEST_LOAD_FAILS": "7"})
        stub = self.stub()
        wait_ms = 600000
        answer_by = 60  # seconds
        started = time.monotonic()
        fut = self.lookup(stub, "pw-reload", wait_ms=wait_ms, timeout=wait_ms / 1000 + BOUND)
        wait_until(lambda: self.coord.log_contains("op pw-reload: lookup from"),
                   BOUND, "the Lookup to park")
        stub.Register(self.cpb.RegisterRequest(
            request_id="pw-reload", metadata=metadata(self.pb, "reload"), access_token=TOKEN,
            ttl_seconds=60, owner="reload"), timeout=BOUND)
        # Written while the view is not loaded: no watch event will tell of it.
        self.assertFalse(self.coord.log_contains("registry: loaded"),
                         "the view loaded before the Register: the case is not tested")
        try:
            look = fut.result(timeout=answer_by)
        except grpc.FutureTimeoutError:
            fut.cancel()
            self.fail(f"the Lookup was not answered within {answer_by} s, though its ID was "
                      f"registered and the view loaded: it waits out its wait_ms ({wait_ms})")
        except grpc.RpcError as e:
            self.fail(f"the Lookup ended {e.code()} ({e.details()}) after "
                      f"{time.monotonic() - started:.1f} s, though its ID was registered "
                      f"(its wait_ms is {wait_ms})")
        self.assertEqual(look.operation.request_id, "pw-reload")
        self.assertTrue(self.coord.log_contains("registry: loaded"))
        # Answered by the load: the view going live made the parked wait
        # look again (service_waits_recheck).
        wait_until(lambda: self.coord.log_contains(
            "service: view live: 1 parked waits whose record it holds look again"),
            BOUND, "the load to wake the parked Lookup")
        self.assertEqual(self.parked(), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
