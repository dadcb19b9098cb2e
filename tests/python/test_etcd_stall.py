"""Never wait behind etcd: with etcd frozen (SIGSTOP) and many writes (and
reads that need etcd: List, linearizable Get) in flight, the coordinator
still answers what it can answer without etcd.

  - Health.Check answers (within its 2 s deadline) and turns NOT_SERVING;
  - Lookup and Get of an ID the replica knows answer OK from its view;
  - after SIGCONT every call in flight has an answer within its deadline:
    OK, UNAVAILABLE, RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED, never a hang;
  - with a small --etcd-inflight and --etcd-queue, writes beyond them are
    refused at once with RESOURCE_EXHAUSTED;
  - a write that waited in the queue past its deadline writes nothing, and
    so does a Register that queued for a shared transaction (registry_batch.c);
  - a Register queued behind a transaction that frozen etcd holds for the
    whole etcd timeout is answered UNAVAILABLE before its own deadline (its
    transaction gets only the time its caller has left), not
    DEADLINE_EXCEEDED;
  - a lease renewal (KeepAlive) is taken ahead of a full write queue, and
    one with a wrong token is refused at once, without a worker;
  - a Register that fails after its lease was granted still revokes it
    (now in the background, off the caller's path);
  - on SIGTERM, Registers still waiting (for an etcd worker, or queued for
    a shared transaction) end UNAVAILABLE naming the replica that shuts
    down, never DEADLINE_EXCEEDED: the client retries on another replica.

Correctness only: "answers" means within the call's own gRPC deadline; no
timing is asserted beyond that. Run with /usr/bin/python3 from CTest.
"""
import base64
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import ferry_harness  # noqa: E402
from ferry_harness import wait_until  # noqa: E402

import grpc  # noqa: E402

WRITES = 64
READS = 16
WRITE_TIMEOUT = 20  # seconds: each write's gRPC deadline
CHECK_TIMEOUT = 2  # seconds: Health.Check and Lookup deadlines
BOUND = 30  # seconds: what "within a bounded time" means here
TOKEN = "stall-token-0123456789"
CLEAR_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
               grpc.StatusCode.DEADLINE_EXCEEDED)


def metadata(pb):
    return pb.RdmaMetadata(
        version=1, kind=pb.OPERATION_KIND_WRITE, worker_address=b"\x01" * 64,
        descriptors=[pb.Descriptor(address=0x10000, size=4096,
                                   device=pb.Device(kind=pb.DEVICE_KIND_HOST), rkey=b"k" * 32)],
        notification_key=os.urandom(16), worker_name="stall", hostname="localhost")


class EtcdStall(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ferry-stall-")
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

    def tearDown(self):
        if self.frozen:
            self.etcd.proc.send_signal(signal.SIGCONT)
        for ch in self.channels:
            ch.close()
        if self.coord is not None:
            self.coord.stop()

    def start_coordinator(self, extra=()):
        self.coord = ferry_harness.Coordinator(self.tmp, self.etcd.endpoint, ttl=60, extra=extra)
        self.coord.start()

    def stub(self):
        ch = grpc.insecure_channel(self.coord.target)
        self.channels.append(ch)
        return self.grpc_mod.CoordinatorStub(ch), ch

    def register_req(self, rid):
        return self.cpb.RegisterRequest(request_id=rid, metadata=metadata(self.pb),
                                        access_token=TOKEN, ttl_seconds=60, owner="stall")

    def freeze(self):
        ferry_harness.freeze(self.etcd.proc)
        self.frozen = True

    def thaw(self):
        self.etcd.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    def test_reads_and_health_answer_while_writes_wait_on_frozen_etcd(self):
        self.start_coordinator()
        stub, _ = self.stub()
        health_ch = grpc.insecure_channel(self.coord.target)
        self.channels.append(health_ch)
        hpb, check = ferry_harness.health_client(health_ch, self.gen_dir)
        read_stub, _ = self.stub()
        wait_until(lambda: check(hpb.HealthCheckRequest(service=""), timeout=CHECK_TIMEOUT).status
                   == hpb.HealthCheckResponse.SERVING, BOUND, "SERVING")
        stub.Register(self.register_req("known"), timeout=WRITE_TIMEOUT)

        self.freeze()
        # Writes from several channels, so that they are in flight at once.
        write_stubs = [self.stub()[0] for _ in range(4)]
        futures = [write_stubs[i % 4].Register.future(self.register_req(f"w{i}"),
                                                      timeout=WRITE_TIMEOUT)
                   for i in range(WRITES)]
        # And reads that only etcd can answer (List, a linearizable Get):
        # they wait on etcd too, but on workers of their own.
        reads = [write_stubs[i % 4].List.future(self.cpb.ListRequest(), timeout=WRITE_TIMEOUT)
                 for i in range(READS)]
        reads += [write_stubs[i % 4].Get.future(
            self.cpb.GetRequest(request_id="known", linearizable=True), timeout=WRITE_TIMEOUT)
            for i in range(READS)]

        # Health answers every check within its deadline, and says
        # NOT_SERVING once the coordinator has seen etcd stop answering.
        deadline = time.monotonic() + BOUND
        status = None
        while time.monotonic() < deadline:
            try:
                status = check(hpb.HealthCheckRequest(service=""), timeout=CHECK_TIMEOUT).status
            except grpc.RpcError as e:
                self.fail(f"Health.Check did not answer within {CHECK_TIMEOUT} s while etcd "
                          f"was frozen with {WRITES} writes and {2 * READS} etcd reads in "
                          f"flight: {e.code()}")
            if status == hpb.HealthCheckResponse.NOT_SERVING:
                break
            time.sleep(0.05)
        self.assertEqual(status, hpb.HealthCheckResponse.NOT_SERVING)

        # Reads of a known ID are served from memory, not behind the writes.
        try:
            got = read_stub.Lookup(self.cpb.LookupRequest(request_id="known", access_token=TOKEN),
                                   timeout=CHECK_TIMEOUT)
            self.assertEqual(got.operation.request_id, "known")
            got = read_stub.Get(self.cpb.GetRequest(request_id="known"), timeout=CHECK_TIMEOUT)
            self.assertEqual(got.operation.request_id, "known")
        except grpc.RpcError as e:
            self.fail(f"a read of a known ID failed while etcd was frozen: {e.code()} "
                      f"{e.details()}")

        self.thaw()
        codes = {}
        for i, f in enumerate(futures):
            # The client's own deadline ends each call; result() waits past
            # it only by a margin, so a hang fails here.
            try:
                f.result(timeout=WRITE_TIMEOUT + 10)
                code = grpc.StatusCode.OK
            except grpc.FutureTimeoutError:
                self.fail(f"write w{i} had no answer {WRITE_TIMEOUT + 10} s after it was sent")
            except grpc.RpcError as e:
                code = e.code()
                self.assertIn(code, CLEAR_CODES, f"w{i}: {code} {e.details()}")
            codes[code] = codes.get(code, 0) + 1
        print(f"FIGURE writes during the stall: {codes}", flush=True)
        for i, f in enumerate(reads):
            try:
                f.result(timeout=WRITE_TIMEOUT + 10)
            except grpc.FutureTimeoutError:
                self.fail(f"read {i} had no answer {WRITE_TIMEOUT + 10} s after it was sent")
            except grpc.RpcError as e:
                self.assertIn(e.code(), CLEAR_CODES, f"read {i}: {e.code()} {e.details()}")

        wait_until(lambda: check(hpb.HealthCheckRequest(service=""), timeout=CHECK_TIMEOUT).status
                   == hpb.HealthCheckResponse.SERVING, BOUND, "SERVING after SIGCONT")
        stub.Register(self.register_req("after"), timeout=WRITE_TIMEOUT)

    def test_writes_beyond_the_limit_are_refused(self):
        self.start_coordinator(extra=("--etcd-inflight", "2", "--etcd-queue", "2"))
        stub, _ = self.stub()
        stub.Register(self.register_req("known"), timeout=WRITE_TIMEOUT)
        self.freeze()
        futures = [stub.Register.future(self.register_req(f"x{i}"), timeout=WRITE_TIMEOUT)
                   for i in range(16)]
        # At most 2 running and 2 queued: the other 12 are refused, at once,
        # while etcd is still frozen.
        wait_until(lambda: self._refused(futures) >= 12, BOUND,
                   "12 writes refused with RESOURCE_EXHAUSTED")
        self.thaw()
        for f in futures:
            try:
                f.result(timeout=WRITE_TIMEOUT + 10)
            except grpc.RpcError as e:
                self.assertIn(e.code(), CLEAR_CODES, e.details())
                if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    self.assertIn("etcd", e.details())
        wait_until(lambda: self._register_ok(stub, "after"), BOUND, "a write after SIGCONT")

    def test_a_renewal_is_not_refused_behind_a_full_queue(self):
        """KeepAlive goes ahead of the writes waiting for an etcd worker, with
        a bound of its own: with the write queue full (etcd frozen, writes
        beyond it refused), a renewal with its lease's token is still taken
        and renewed once etcd is back, where it was refused with
        RESOURCE_EXHAUSTED (a long enough burst let leases expire). A
        renewal with a wrong token is refused PERMISSION_DENIED at once,
        without a worker, while etcd is still frozen."""
        self.start_coordinator(extra=("--etcd-inflight", "2", "--etcd-queue", "2"))
        stub, _ = self.stub()
        known = stub.Register(self.register_req("known"), timeout=WRITE_TIMEOUT)
        self.assertNotEqual(known.lease_id, 0)
        self.freeze()
        futures = [stub.Register.future(self.register_req(f"x{i}"), timeout=WRITE_TIMEOUT)
                   for i in range(16)]
        wait_until(lambda: self._refused(futures) >= 12, BOUND,
                   "12 writes refused with RESOURCE_EXHAUSTED")
        renewal = stub.KeepAlive.future(
            self.cpb.KeepAliveRequest(lease_id=known.lease_id, lease_token=known.lease_token),
            timeout=WRITE_TIMEOUT)
        forged = stub.KeepAlive.future(
            self.cpb.KeepAliveRequest(lease_id=known.lease_id, lease_token="0" * 64),
            timeout=WRITE_TIMEOUT)
        wait_until(forged.done, BOUND, "the forged renewal's answer while etcd is frozen")
        self.assertEqual(forged.code(), grpc.StatusCode.PERMISSION_DENIED, forged.details())
        self.assertIn("lease_token", forged.details())
        self.thaw()
        try:
            self.assertGreater(renewal.result(timeout=WRITE_TIMEOUT + 10).ttl_seconds, 0)
        except grpc.RpcError as e:
            self.fail(f"the renewal behind a full write queue: {e.code()} {e.details()}")
        for f in futures:
            try:
                f.result(timeout=WRITE_TIMEOUT + 10)
            except grpc.RpcError as e:
                self.assertIn(e.code(), CLEAR_CODES, e.details())

    @staticmethod
    def _refused(futures):
        return sum(1 for f in futures
                   if f.done() and f.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)

    def test_queued_write_past_its_deadline_writes_nothing(self):
        """With one etcd worker and etcd frozen, a Register with a long
        deadline holds the worker for the whole etcd timeout; four with a
        short deadline wait in the queue past it and write nothing."""
        self.start_coordinator(extra=("--etcd-inflight", "1", "--metrics-listen", "127.0.0.1:0"))
        port = self.coord.metrics_port()
        stub, _ = self.stub()
        stub.Register(self.register_req("known"), timeout=WRITE_TIMEOUT)
        self.freeze()
        held = stub.Register.future(self.register_req("held"), timeout=WRITE_TIMEOUT)
        wait_until(lambda: self._registers_in_flight(port) == 1, BOUND,
                   "the held Register in flight")
        ids = [f"late{i}" for i in range(4)]
        futures = [stub.Register.future(self.register_req(rid), timeout=1) for rid in ids]
        for f in futures:
            with self.assertRaises(grpc.RpcError) as cm:
                f.result(timeout=WRITE_TIMEOUT)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        with self.assertRaises(grpc.RpcError) as cm:
            held.result(timeout=WRITE_TIMEOUT)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE, cm.exception.details())
        self.thaw()
        # The queue is FIFO: once a later write is through, those are done.
        wait_until(lambda: self._register_ok(stub, "after"), BOUND, "a write after SIGCONT")
        for rid in ids:
            with self.assertRaises(grpc.RpcError) as cm:
                stub.Get(self.cpb.GetRequest(request_id=rid, linearizable=True),
                         timeout=WRITE_TIMEOUT)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND, rid)

    def test_register_behind_a_stuck_transaction_hears_unavailable_in_its_time(self):
        """With etcd frozen, a Register leads a transaction that etcd holds
        for the coordinator's whole etcd timeout (5 s); a second, with a 7 s
        deadline, queues behind it. Its own transaction gets only what its
        caller has left, less a margin for the answer, so the caller hears
        UNAVAILABLE (etcd did not answer: retry) before its deadline. It
        used to get the etcd timeout again, 10 s in all, and end
        DEADLINE_EXCEEDED, which leaves a client unsure what was written."""
        self.start_coordinator(extra=("--metrics-listen", "127.0.0.1:0"))
        port = self.coord.metrics_port()
        stub, _ = self.stub()
        known = stub.Register(self.register_req("known"), timeout=WRITE_TIMEOUT)

        def on_lease(rid):
            return self.cpb.RegisterRequest(request_id=rid, metadata=metadata(self.pb),
                                            access_token=TOKEN, owner="stall",
                                            lease_id=known.lease_id,
                                            lease_token=known.lease_token)

        self.freeze()
        first = stub.Register.future(on_lease("first"), timeout=WRITE_TIMEOUT)
        wait_until(lambda: self._registers_in_flight(port) == 1, BOUND,
                   "the first Register in flight")
        second = stub.Register.future(on_lease("second"), timeout=7)
        with self.assertRaises(grpc.RpcError) as cm:
            second.result(timeout=WRITE_TIMEOUT)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE,
                         cm.exception.details())
        with self.assertRaises(grpc.RpcError) as cm:
            first.result(timeout=WRITE_TIMEOUT)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE,
                         cm.exception.details())
        self.thaw()

    def test_register_queued_for_a_shared_transaction_past_its_deadline_writes_nothing(self):
        """Registers that queue for a shared etcd transaction (the one in
        flight is held by frozen etcd) and whose deadline passes there are
        never sent: after SIGCONT none of them is in etcd."""
        self.start_coordinator(extra=("--metrics-listen", "127.0.0.1:0"))
        port = self.coord.metrics_port()
        stub, _ = self.stub()
        known = stub.Register(self.register_req("known"), timeout=WRITE_TIMEOUT)
        lease = dict(lease_id=known.lease_id, lease_token=known.lease_token)

        def on_lease(rid):
            return self.cpb.RegisterRequest(request_id=rid, metadata=metadata(self.pb),
                                            access_token=TOKEN, owner="stall", **lease)

        self.freeze()
        first = stub.Register.future(on_lease("first"), timeout=WRITE_TIMEOUT)
        # "first" leads a transaction that frozen etcd holds; the next ones
        # queue behind it.
        wait_until(lambda: self._registers_in_flight(port) == 1, BOUND,
                   "the first Register in flight")
        ids = [f"queued{i}" for i in range(4)]
        futures = [stub.Register.future(on_lease(rid), timeout=1) for rid in ids]
        for f in futures:
            with self.assertRaises(grpc.RpcError) as cm:
                f.result(timeout=WRITE_TIMEOUT)
            # Their deadline, or (on a loaded machine, once the etcd client
            # gave up on the frozen member first) UNAVAILABLE: either way
            # what matters is checked below, that none of them is in etcd.
            self.assertIn(cm.exception.code(), (grpc.StatusCode.DEADLINE_EXCEEDED,
                                                grpc.StatusCode.UNAVAILABLE))
        # The server's deadline is a little after the client's: thaw once
        # it has ended those calls too.
        wait_until(lambda: self._registers_in_flight(port) <= 1, BOUND,
                   "the server to end the calls")
        self.thaw()
        try:
            first.result(timeout=WRITE_TIMEOUT)
        except grpc.RpcError as e:
            self.assertIn(e.code(), CLEAR_CODES, e.details())
        wait_until(lambda: self._register_ok(stub, "after"), BOUND, "a write after SIGCONT")
        for rid in ids:
            with self.assertRaises(grpc.RpcError) as cm:
                stub.Get(self.cpb.GetRequest(request_id=rid, linearizable=True),
                         timeout=WRITE_TIMEOUT)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND, rid)

    def test_registers_waiting_at_shutdown_end_unavailable(self):
        """With etcd frozen and one Register held in a transaction, two
        queue for the next shared transaction and two for an etcd worker
        (--etcd-inflight 3). SIGTERM, with a grace period longer than the
        etcd timeout: the four waiting end UNAVAILABLE ("shutting down"),
        not DEADLINE_EXCEEDED, and at once, not when the held transaction
        ends."""
        self.start_coordinator(extra=("--metrics-listen", "127.0.0.1:0",
                                      "--etcd-inflight", "3", "--grace-ms", "15000"))
        port = self.coord.metrics_port()
        stub, _ = self.stub()
        known = stub.Register(self.register_req("known"), timeout=WRITE_TIMEOUT)
        lease = dict(lease_id=known.lease_id, lease_token=known.lease_token)

        def on_lease(rid):
            return self.cpb.RegisterRequest(request_id=rid, metadata=metadata(self.pb),
                                            access_token=TOKEN, owner="stall", **lease)

        self.freeze()
        first = stub.Register.future(on_lease("first"), timeout=WRITE_TIMEOUT)
        wait_until(lambda: self._registers_in_flight(port) == 1, BOUND,
                   "the first Register in flight")
        futures = [stub.Register.future(on_lease(f"waiting{i}"), timeout=WRITE_TIMEOUT)
                   for i in range(4)]
        wait_until(lambda: self._registers_in_flight(port) == 5, BOUND,
                   "four Registers waiting behind it")
        # With etcd frozen, the held transaction (and "first" with it) ends
        # only at its etcd timeout, 5 s after "first" was sent.
        self.assertFalse(first.done(), "the held transaction ended before SIGTERM: the case "
                         "is not tested")
        self.coord.proc.send_signal(signal.SIGTERM)
        for i, f in enumerate(futures):
            with self.assertRaises(grpc.RpcError) as cm:
                f.result(timeout=WRITE_TIMEOUT)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE,
                             f"waiting{i}: {cm.exception.details()}")
            self.assertIn("'c1' is shutting down", cm.exception.details())
        # At once: answered while the held transaction still waits on etcd,
        # not once it ended (then "first" is answered before them).
        self.assertFalse(first.done(), "the waiting Registers were answered only once the held "
                         "transaction had ended")
        self.thaw()
        try:
            first.result(timeout=WRITE_TIMEOUT)
        except grpc.RpcError as e:
            self.assertIn(e.code(), CLEAR_CODES, e.details())

    @staticmethod
    def _registers_in_flight(port):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith('ferry_rpc_in_flight{method="/ferry.v1.Coordinator/'
                                   'Register"}'):
                    return int(float(line.split()[-1]))
        return 0

    def test_failed_register_revokes_its_lease(self):
        """A Register that fails after its lease was granted revokes the
        lease off the caller's path (an etcd work-queue job), but revokes
        it: no lease is left behind."""
        self.start_coordinator()
        stub, _ = self.stub()
        stub.Register(self.register_req("dup"), timeout=WRITE_TIMEOUT)
        before = self._leases()
        for _ in range(3):
            with self.assertRaises(grpc.RpcError) as cm:
                stub.Register(self.register_req("dup"), timeout=WRITE_TIMEOUT)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.ALREADY_EXISTS)
        wait_until(lambda: self._leases() == before, BOUND,
                   "the failed registrations' leases to be revoked")

    def test_unanswered_register_on_the_callers_lease_is_taken_back_and_fenced(self):
        """A Register on the caller's own lease, the token left to the
        coordinator, that frozen etcd does not answer: its caller hears
        UNAVAILABLE, and once etcd is back the coordinator's removal leaves
        no record (whether etcd applied the write or not) and a fence key
        on the caller's lease, which the write's transaction asks to be
        absent, so that a member that held the write and applies it later
        writes nothing. Both KV APIs, each with its own coordinator."""
        for api in ("grpc", "gateway"):
            with self.subTest(kv_api=api):
                if self.coord is not None:
                    self.coord.stop()
                self.start_coordinator(extra=("--etcd-kv-api", api))
                stub, _ = self.stub()
                session = stub.Register(self.register_req(f"session-{api}"),
                                        timeout=WRITE_TIMEOUT)
                req = self.cpb.RegisterRequest(
                    request_id=f"unanswered-{api}", metadata=metadata(self.pb), owner="stall",
                    lease_id=session.lease_id, lease_token=session.lease_token)
                self.freeze()
                with self.assertRaises(grpc.RpcError) as cm:
                    stub.Register(req, timeout=3)
                self.assertIn(cm.exception.code(), CLEAR_CODES, cm.exception.details())
                self.thaw()
                wait_until(lambda: self._keys("/ferry/fences/"), BOUND,
                           "the removal's fence in etcd")
                fences = self._keys("/ferry/fences/")
                self.assertEqual(len(fences), 1)
                self.assertEqual(fences[0]["lease"], str(session.lease_id))
                self.assertEqual(self._keys(f"/ferry/ops/unanswered-{api}"), [])
                # The ID is free: the caller's retry registers it.
                stub.Register(req, timeout=WRITE_TIMEOUT)
                self.assertEqual(len(self._keys(f"/ferry/ops/unanswered-{api}")), 1)
                self._delete("/ferry/fences/")

    def _keys(self, prefix):
        """The kvs under prefix (base64 fields as etcd's gateway gives them,
        key decoded)."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        body = json.dumps({"key": base64.b64encode(prefix.encode()).decode(),
                           "range_end": base64.b64encode(end.encode()).decode()}).encode()
        req = urllib.request.Request(self.etcd.endpoint + "/v3/kv/range", data=body)
        with urllib.request.urlopen(req, timeout=5) as r:
            return [dict(kv, key=base64.b64decode(kv["key"]).decode())
                    for kv in json.loads(r.read()).get("kvs", [])]

    def _delete(self, prefix):
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        body = json.dumps({"key": base64.b64encode(prefix.encode()).decode(),
                           "range_end": base64.b64encode(end.encode()).decode()}).encode()
        req = urllib.request.Request(self.etcd.endpoint + "/v3/kv/deleterange", data=body)
        with urllib.request.urlopen(req, timeout=5):
            pass

    def _leases(self):
        req = urllib.request.Request(self.etcd.endpoint + "/v3/lease/leases", data=b"{}",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return {lease["ID"] for lease in json.loads(r.read()).get("leases", [])}

    def _register_ok(self, stub, rid):
        try:
            stub.Register(self.register_req(rid), timeout=WRITE_TIMEOUT)
            return True
        except grpc.RpcError as e:
            return e.code() == grpc.StatusCode.ALREADY_EXISTS


if __name__ == "__main__":
    unittest.main(verbosity=2)
