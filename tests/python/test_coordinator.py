"""Drives ferry-coordinator from Python with Debian's grpcio: the contract
is not C-specific. Run with /usr/bin/python3 (the Debian interpreter that
has grpcio), from CTest.
"""
import os
import signal
import subprocess
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import ferry_harness  # noqa: E402

import grpc  # noqa: E402

CLUSTER = None


def setUpModule():
    global CLUSTER
    CLUSTER = ferry_harness.Cluster(ttl=3)


def tearDownModule():
    rc = CLUSTER.close()
    if rc != 0:
        raise AssertionError(f"coordinator exited with {rc} after SIGTERM")


def metadata(pb, kind=None):
    kind = kind or pb.OPERATION_KIND_WRITE
    return pb.RdmaMetadata(
        version=1, kind=kind, worker_address=b"\x01" * 64,
        descriptors=[pb.Descriptor(address=0x10000, size=4096,
                                   device=pb.Device(kind=pb.DEVICE_KIND_HOST), rkey=b"k" * 32)],
        notification_key=os.urandom(16), worker_name="py-receiver", hostname="localhost")


class CoordinatorFromPython(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        from ferry.v1 import coordinator_pb2, coordinator_pb2_grpc, types_pb2
        cls.pb, cls.cpb = types_pb2, coordinator_pb2
        cls.channel = grpc.insecure_channel(CLUSTER.coordinator.target)
        cls.stub = coordinator_pb2_grpc.CoordinatorStub(cls.channel)
        cls.hpb, cls.health_check = ferry_harness.health_client(cls.channel, CLUSTER.gen_dir)

    def register(self, rid, token="", kind=None):
        return self.stub.Register(self.cpb.RegisterRequest(
            request_id=rid, metadata=metadata(self.pb, kind), access_token=token,
            owner="py"), timeout=10)

    def test_health_serving(self):
        r = self.health_check(self.hpb.HealthCheckRequest(service=""), timeout=10)
        self.assertEqual(r.status, self.hpb.HealthCheckResponse.SERVING)
        r = self.health_check(self.hpb.HealthCheckRequest(service="ferry.v1.Coordinator"),
                              timeout=10)
        self.assertEqual(r.status, self.hpb.HealthCheckResponse.SERVING)

    def test_register_lookup_claim_complete_watch(self):
        rid = "py-flow-1"
        watch = self.stub.Watch(self.cpb.WatchRequest(request_id=rid), timeout=30)
        first = next(watch)
        self.assertTrue(first.created)

        reg = self.register(rid)
        self.assertGreaterEqual(len(reg.access_token), 16)
        self.assertGreater(reg.lease_id, 0)
        self.assertEqual(len(reg.lease_token), 64)

        look = self.stub.Lookup(self.cpb.LookupRequest(
            request_id=rid, access_token=reg.access_token), timeout=10)
        self.assertEqual(look.operation.state, self.pb.OPERATION_STATE_REGISTERED)
        self.assertEqual(look.operation.metadata.worker_address, b"\x01" * 64)
        self.assertEqual(look.operation.metadata.descriptors[0].size, 4096)
        self.assertEqual(look.operation.token_sha256, b"")

        claim = self.stub.Claim(self.cpb.ClaimRequest(
            request_id=rid, access_token=reg.access_token, claimant="py-writer",
            kind=self.pb.OPERATION_KIND_WRITE), timeout=10)
        self.assertEqual(claim.operation.state, self.pb.OPERATION_STATE_CLAIMED)
        self.assertGreater(claim.claim_lease_id, 0)

        done = self.stub.Complete(self.cpb.CompleteRequest(
            request_id=rid, access_token=reg.access_token,
            claim_lease_id=claim.claim_lease_id, lease_token=claim.lease_token), timeout=10)
        self.assertEqual(done.operation.state, self.pb.OPERATION_STATE_COMPLETE)

        states = []
        for msg in watch:
            for ev in msg.events:
                states.append(ev.operation.state)
                self.assertFalse(ev.operation.HasField("metadata"))
            if self.pb.OPERATION_STATE_COMPLETE in states:
                break
        watch.cancel()
        self.assertEqual(states, [self.pb.OPERATION_STATE_REGISTERED,
                                  self.pb.OPERATION_STATE_CLAIMED,
                                  self.pb.OPERATION_STATE_COMPLETE])

        got = self.stub.Get(self.cpb.GetRequest(request_id=rid), timeout=10)
        self.assertEqual(got.operation.state, self.pb.OPERATION_STATE_COMPLETE)
        self.assertFalse(got.operation.HasField("metadata"))

    def test_an_etcd_version_that_revokes_live_leases_is_warned_of(self):
        """etcd before 3.4.28 (3.5 before 3.5.11) revokes live leases when a
        leader frozen past their TTL wakes (etcd-io/etcd#15247; Debian 12's
        is 3.4.23): the coordinator says so once, naming the version."""
        out = subprocess.run(["etcd", "--version"], capture_output=True, text=True,
                             timeout=30).stdout
        version = out.split("etcd Version:")[1].split()[0]
        major, minor, patch = (int(x) for x in version.split(".")[:3])
        affected = (major, minor) < (3, 4) or (minor == 4 and patch < 28) or \
            (minor == 5 and patch < 11)
        warning = f"etcd: version {version} revokes live leases"
        ferry_harness.wait_until(lambda: CLUSTER.coordinator.log_contains("serving on"), 30,
                                 "the coordinator to serve")
        if affected:
            ferry_harness.wait_until(lambda: CLUSTER.coordinator.log_contains(warning), 30,
                                     "the version warning")
        else:
            self.assertFalse(CLUSTER.coordinator.log_contains(warning))

    def test_health_unknown_service_is_not_found(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.health_check(self.hpb.HealthCheckRequest(service="no.such.Service"), timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_duplicate_is_already_exists(self):
        self.register("py-dup")
        with self.assertRaises(grpc.RpcError) as cm:
            self.register("py-dup")
        self.assertEqual(cm.exception.code(), grpc.StatusCode.ALREADY_EXISTS)
        self.assertIn("py-dup", cm.exception.details())

    def test_wrong_token_is_permission_denied(self):
        self.register("py-token", token="right-token-0123456789")
        with self.assertRaises(grpc.RpcError) as cm:
            self.stub.Lookup(self.cpb.LookupRequest(
                request_id="py-token", access_token="wrong-token-0123456789"), timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        self.assertNotIn("right-token", cm.exception.details())

    def test_unknown_id_is_not_found(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.stub.Get(self.cpb.GetRequest(request_id="py-nobody"), timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        with self.assertRaises(grpc.RpcError) as cm:
            self.stub.Lookup(self.cpb.LookupRequest(
                request_id="py-nobody", access_token="some-token-0123456789"), timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_bad_request_id_names_the_field(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.register("bad id with spaces")
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("request_id", cm.exception.details())

    def test_lookup_wait_times_out(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.stub.Lookup(self.cpb.LookupRequest(
                request_id="py-never", access_token="wait-token-0123456789", wait_ms=300),
                timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)

    def test_lookup_wait_is_satisfied_by_a_later_register(self):
        token = "wait-token-0123456789"
        result = {}

        def lookup():
            try:
                result["r"] = self.stub.Lookup(self.cpb.LookupRequest(
                    request_id="py-wait", access_token=token, wait_ms=10000), timeout=15)
            except grpc.RpcError as e:
                result["e"] = e
        t = threading.Thread(target=lookup)
        t.start()
        # Register once the coordinator says the lookup is parked.
        ferry_harness.wait_until(
            lambda: CLUSTER.coordinator.log_contains("op py-wait: lookup from"),
            10, "the lookup to wait")
        self.register("py-wait", token=token)
        t.join(20)
        self.assertNotIn("e", result)
        self.assertEqual(result["r"].operation.request_id, "py-wait")

    def test_nul_and_bad_utf8_are_refused(self):
        # A Python str may hold a NUL: it must not reach the coordinator cut short.
        with self.assertRaises(grpc.RpcError) as cm:
            self.register("a\0/../claims/x")
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("request_id", cm.exception.details())
        with self.assertRaises(grpc.RpcError) as cm:
            self.stub.Get(self.cpb.GetRequest(request_id="a"), timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        # Bad UTF-8 takes a raw call: grpcio's messages refuse to carry it.
        req = self.cpb.RegisterRequest(request_id="py-utf8", metadata=metadata(self.pb),
                                       owner="owner-~").SerializeToString()
        raw = self.channel.unary_unary("/ferry.v1.Coordinator/Register",
                                       request_serializer=None, response_deserializer=None)
        with self.assertRaises(grpc.RpcError) as cm:
            raw(req.replace(b"owner-~", b"owner-\xff"), timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("owner is not valid UTF-8", cm.exception.details())
        # Nothing was stored, so List over everything still decodes.
        self.stub.List(self.cpb.ListRequest(page_size=1000), timeout=10)

    def test_linearizable_get_and_lookup(self):
        token = "lin-token-0123456789"
        self.register("py-lin", token=token)
        got = self.stub.Get(self.cpb.GetRequest(request_id="py-lin", linearizable=True),
                            timeout=10)
        self.assertEqual(got.operation.state, self.pb.OPERATION_STATE_REGISTERED)
        r = self.stub.Lookup(self.cpb.LookupRequest(request_id="py-lin", access_token=token,
                                                    linearizable=True), timeout=10)
        self.assertTrue(r.operation.HasField("metadata"))

    def test_calls_cancelled_as_they_start_cannot_take_it_down(self):
        # Clients that cancel a call at once (before its message is sent) or
        # give it a deadline of a millisecond, from several threads: the
        # server ends such a call on one thread while another still decodes
        # it. Before the rpc fix this aborted the coordinator (a double free)
        # within a fraction of a second of the first round, every run.
        from ferry.v1 import coordinator_pb2_grpc
        target = CLUSTER.coordinator.target
        proc = CLUSTER.coordinator.proc

        def storm(k):
            with grpc.insecure_channel(target) as channel:
                stub = coordinator_pb2_grpc.CoordinatorStub(channel)
                for i in range(1000):
                    if proc.poll() is not None:
                        return
                    stub.Get.future(self.cpb.GetRequest(request_id=f"py-storm-{k}-{i}"),
                                    timeout=10).cancel()
                    stub.Claim.future(self.cpb.ClaimRequest(
                        request_id=f"py-storm-{k}-{i}", access_token="storm-token-0123456789",
                        claimant="py-storm"), timeout=0.001)

        threads = [threading.Thread(target=storm, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertIsNone(proc.poll(), "the coordinator died under cancelled calls")
        with self.assertRaises(grpc.RpcError) as cm:
            self.stub.Get(self.cpb.GetRequest(request_id="py-storm-0-0"), timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)


class Signals(unittest.TestCase):
    def test_sighup_drains_as_sigterm_does(self):
        """SIGHUP (a closed terminal, a supervisor's reload) drains and
        exits 0, as SIGTERM does: its default action killed the coordinator
        mid-call (exit 129, no drain, no log line)."""
        cluster = ferry_harness.Cluster(ttl=3)
        try:
            proc = cluster.coordinator.proc
            proc.send_signal(signal.SIGHUP)
            rc = proc.wait(30)
            self.assertEqual(rc, 0)
            self.assertTrue(cluster.coordinator.log_contains(
                f"signal {int(signal.SIGHUP)}: draining in-flight calls"))
        finally:
            cluster.close()


class EtcdDownLog(unittest.TestCase):
    def test_an_outage_is_warned_of_not_once_per_request(self):
        """With etcd gone every request made for a client fails: a warning
        each flooded the log (40 lines a second in a soak). One every 5 s
        now; the rest go at debug, and the next warning counts them."""
        from ferry.v1 import coordinator_pb2, coordinator_pb2_grpc, types_pb2
        cluster = ferry_harness.Cluster(ttl=3)
        channel = grpc.insecure_channel(cluster.coordinator.target)
        try:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            with open(cluster.coordinator.log_path) as f:
                offset = len(f.read())
            cluster.etcd.stop()
            failed = 0
            for i in range(20):
                try:
                    stub.Register(coordinator_pb2.RegisterRequest(
                        request_id=f"down-{i}", metadata=metadata(types_pb2), owner="py"),
                        timeout=10)
                except grpc.RpcError as e:
                    self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE, e.details())
                    failed += 1
            self.assertEqual(failed, 20)
            with open(cluster.coordinator.log_path) as f:
                lines = f.read()[offset:].splitlines()
            warned = [ln for ln in lines if " warn  etcd: unavailable: " in ln]
            quiet = [ln for ln in lines if " debug etcd: unavailable: " in ln]
            self.assertGreaterEqual(len(warned), 1, "the outage was not warned of")
            self.assertGreaterEqual(len(warned) + len(quiet), 20, "\n".join(lines[-20:]))
            # At most one per started 5 s (the Registers took far less).
            self.assertLessEqual(len(warned), 2, "\n".join(warned))
        finally:
            channel.close()
            cluster.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
