"""A coordinator whose etcd user may not write where it must (a role that
lacks the prefix's ops/, as an operator's mistake or a revoked grant
leaves it), with the real binaries: etcd refuses the coordinator's own
credentials, which is not the client's fault, so a Register is answered
UNAVAILABLE, saying so, and nothing is written; the replica's health check
probes a write at start, so it says NOT_SERVING too. It was PERMISSION_DENIED,
which a client reads as "your token does not grant this" and gives up
on (libferry does; ferryctl exits 4). And one whose user may not even read
its prefix (a role on another prefix) says NOT_SERVING, so that readiness
probes and alerts see it: it said SERVING while failing every call.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import ferry_harness  # noqa: E402

import grpc  # noqa: E402

PREFIX = "/roles/"
TOKEN = "roles-token-0123456789"
TMP = ETCD = COORD = None


def etcdctl(*args, user="root:root-pw-0123456789"):
    cmd = ["etcdctl", "--endpoints", ETCD.endpoint, *args]
    if user is not None:
        cmd[1:1] = ["--user", user]
    env = dict(os.environ, ETCDCTL_API="3")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: {done.stdout}{done.stderr}")
    return done.stdout


def register(stub, request_id, owner):
    """A Register of a record of one host descriptor, on no lease."""
    from ferry.v1 import coordinator_pb2, types_pb2
    md = types_pb2.RdmaMetadata(
        version=1, kind=types_pb2.OPERATION_KIND_WRITE, worker_address=b"\x01" * 64,
        descriptors=[types_pb2.Descriptor(address=0x10000, size=4096,
                                          device=types_pb2.Device(kind=types_pb2.DEVICE_KIND_HOST),
                                          rkey=b"k" * 32)],
        notification_key=os.urandom(16), worker_name=owner, hostname="localhost")
    return stub.Register(coordinator_pb2.RegisterRequest(
        request_id=request_id, metadata=md, access_token=TOKEN, owner=owner), timeout=10)


def setUpModule():
    # Module cleanups run, last first, also when setUpModule fails, where
    # tearDownModule would not: nothing started is left behind.
    global TMP, ETCD, COORD
    TMP = tempfile.mkdtemp(prefix="ferry-roles-")
    unittest.addModuleCleanup(shutil.rmtree, TMP, ignore_errors=True)
    ferry_harness.generate_stubs(os.path.join(TMP, "gen"))
    ETCD = ferry_harness.Etcd(TMP)
    unittest.addModuleCleanup(ETCD.stop)
    ETCD.start()
    etcdctl("user", "add", "root:root-pw-0123456789", user=None)
    etcdctl("role", "add", "ferry-partial", user=None)
    # The lease key and reads of the whole prefix, but no write to ops/.
    etcdctl("role", "grant-permission", "ferry-partial", "readwrite", PREFIX + "keys/lease",
            user=None)
    etcdctl("role", "grant-permission", "ferry-partial", "read", PREFIX, "--prefix=true",
            user=None)
    etcdctl("user", "add", "ferry:ferry-pw-0123456789", user=None)
    etcdctl("user", "grant-role", "ferry", "ferry-partial", user=None)
    etcdctl("role", "add", "elsewhere", user=None)
    etcdctl("role", "grant-permission", "elsewhere", "readwrite", "/other/", "--prefix=true",
            user=None)
    etcdctl("user", "add", "lost:lost-pw-0123456789", user=None)
    etcdctl("user", "grant-role", "lost", "elsewhere", user=None)
    etcdctl("role", "add", "ferry-reader", user=None)
    etcdctl("role", "grant-permission", "ferry-reader", "read", PREFIX, "--prefix=true",
            user=None)
    etcdctl("user", "add", "reader:reader-pw-0123456789", user=None)
    etcdctl("user", "grant-role", "reader", "ferry-reader", user=None)
    etcdctl("auth", "enable", user=None)
    COORD = ferry_harness.Coordinator(TMP, ETCD.endpoint,
                                      extra=("--prefix", PREFIX, "--etcd-user", "ferry"))
    unittest.addModuleCleanup(stop_coordinator)
    os.environ["FERRY_ETCD_PASSWORD"] = "ferry-pw-0123456789"
    try:
        COORD.start()
    finally:
        del os.environ["FERRY_ETCD_PASSWORD"]


def stop_coordinator():
    started = COORD.port is not None  # else its start failed, and said why
    rc = COORD.stop()
    if started and rc != 0:
        raise AssertionError(f"coordinator exited with {rc} after SIGTERM")


class RefusedByEtcd(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        from ferry.v1 import coordinator_pb2_grpc
        cls.channel = grpc.insecure_channel(COORD.target)
        cls.stub = coordinator_pb2_grpc.CoordinatorStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()

    def test_register_is_unavailable_not_permission_denied(self):
        with self.assertRaises(grpc.RpcError) as caught:
            register(self.stub, "roles-1", "roles")
        self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAVAILABLE,
                         caught.exception.details())
        # Its write probe found this at start: said as health's cause.
        self.assertIn("etcd does not let this coordinator's user write its prefix, since ",
                      caught.exception.details())
        self.assertTrue(COORD.log_contains("refused the coordinator's credentials"))
        self.assertEqual(etcdctl("get", PREFIX + "ops/", "--prefix", "--keys-only").strip(), "")


class PrefixOutOfReach(unittest.TestCase):
    """A replica whose etcd user's role is on another prefix."""

    def setUp(self):
        self.coord = ferry_harness.Coordinator(
            TMP, ETCD.endpoint, name="lost",
            extra=("--prefix", PREFIX, "--etcd-user", "lost"),
            env={"FERRY_ETCD_PASSWORD": "lost-pw-0123456789"})
        self.coord.start()
        self.addCleanup(self.coord.stop)
        self.channel = grpc.insecure_channel(self.coord.target)
        self.addCleanup(self.channel.close)

    def test_not_serving_and_saying_why(self):
        from ferry.v1 import coordinator_pb2_grpc
        hpb, check = ferry_harness.health_client(self.channel, os.path.join(TMP, "gen"))

        def status(service):
            return check(hpb.HealthCheckRequest(service=service), timeout=5).status

        ferry_harness.wait_until(lambda: status("") == hpb.HealthCheckResponse.NOT_SERVING, 15,
                                 "the replica to say NOT_SERVING")
        self.assertEqual(status("liveness"), hpb.HealthCheckResponse.SERVING)
        self.assertTrue(self.coord.log_contains("read its prefix (prefix " + PREFIX))
        stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)
        with self.assertRaises(grpc.RpcError) as caught:
            register(stub, "lost-1", "lost")
        self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAVAILABLE,
                         caught.exception.details())
        self.assertIn("etcd does not let this coordinator's user read its prefix, since ",
                      caught.exception.details())



class WriteRefused(unittest.TestCase):
    """A replica whose etcd user may read its prefix but not write it: a
    read-only role, then the write grant given, then taken back. It said
    SERVING throughout, its health check being a read, while every Register
    failed. Now it says NOT_SERVING until a write has passed since start
    (a Secret or role wrong for a rollout's new pods keeps them out of the
    Service), and not after: a grant taken back from a role every replica
    shares would take them all out, and the keep-alives etcd still takes
    with them (review-s30 M2); the refusals are counted in
    ferry_etcd_requests_total instead."""
    KV_API = "grpc"

    def setUp(self):
        self.coord = ferry_harness.Coordinator(
            TMP, ETCD.endpoint, name="reader-" + self.KV_API,
            extra=("--prefix", PREFIX, "--etcd-user", "reader", "--etcd-kv-api", self.KV_API,
                   "--metrics-listen", "127.0.0.1:0"),
            env={"FERRY_ETCD_PASSWORD": "reader-pw-0123456789"})
        self.coord.start()
        self.addCleanup(self.coord.stop)
        self.channel = grpc.insecure_channel(self.coord.target)
        self.addCleanup(self.channel.close)
        self.addCleanup(etcdctl, "role", "grant-permission", "ferry-reader", "read", PREFIX,
                        "--prefix=true")

    def etcd_requests(self, kind, result):
        import re
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=5) as r:
            text = r.read().decode()
        m = re.search(r'^ferry_etcd_requests_total\{kind="%s",result="%s"\} (\d+)$'
                      % (re.escape(kind), re.escape(result)), text, re.M)
        return int(m.group(1)) if m else 0

    def test_not_serving_until_etcd_takes_its_writes(self):
        self.metrics = self.coord.metrics_port()
        from ferry.v1 import coordinator_pb2_grpc
        hpb, check = ferry_harness.health_client(self.channel, os.path.join(TMP, "gen"))
        stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)

        def status():
            return check(hpb.HealthCheckRequest(service=""), timeout=5).status

        def register_reader(request_id):
            return register(stub, request_id, "reader")

        serving, not_serving = hpb.HealthCheckResponse.SERVING, hpb.HealthCheckResponse.NOT_SERVING
        ferry_harness.wait_until(lambda: status() == not_serving, 15,
                                 "the read-only replica to say NOT_SERVING")
        self.assertTrue(self.coord.log_contains(
            "etcd does not let this coordinator's user write its prefix (prefix " + PREFIX))
        with self.assertRaises(grpc.RpcError) as caught:
            register_reader(f"reader-{self.KV_API}-1")
        self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAVAILABLE,
                         caught.exception.details())
        self.assertIn("write its prefix", caught.exception.details())

        # The grant given: SERVING, and a Register is written.
        etcdctl("role", "grant-permission", "ferry-reader", "readwrite", PREFIX, "--prefix=true")
        ferry_harness.wait_until(lambda: status() == serving, 15,
                                 "the replica to say SERVING once it may write")
        register_reader(f"reader-{self.KV_API}-2")
        self.assertIn(f"{PREFIX}ops/reader-{self.KV_API}-2",
                      etcdctl("get", PREFIX + "ops/", "--prefix", "--keys-only"))

        # Taken back: a Register is refused, counted, and health, checked
        # twice since, says SERVING still.
        etcdctl("role", "grant-permission", "ferry-reader", "read", PREFIX, "--prefix=true")
        refused = self.etcd_requests("kv/txn", "permission_denied")
        with self.assertRaises(grpc.RpcError) as caught:
            register_reader(f"reader-{self.KV_API}-3")
        self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAVAILABLE,
                         caught.exception.details())
        self.assertIn("etcd refused this coordinator's credentials", caught.exception.details())
        self.assertGreater(self.etcd_requests("kv/txn", "permission_denied"), refused)
        pings = self.etcd_requests("probe/maintenance/status", "ok")
        ferry_harness.wait_until(
            lambda: self.etcd_requests("probe/maintenance/status", "ok") >= pings + 2, 15,
            "two health checks after the refusal")
        self.assertEqual(status(), serving)
        self.assertNotIn(f"{PREFIX}ops/reader-{self.KV_API}-3",
                         etcdctl("get", PREFIX + "ops/", "--prefix", "--keys-only"))



class WriteRefusedGateway(WriteRefused):
    """The same with key-value requests (the probe among them) over etcd's
    JSON gateway, whose refusal is an HTTP 403."""
    KV_API = "gateway"


if __name__ == "__main__":
    unittest.main()
