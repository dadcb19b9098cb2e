"""ferryctl against real ferry-coordinator processes over a real etcd:
list (filters, paging, JSON), get, cancel, release, health, the exit codes,
several coordinators tried in order, and watch resuming on the next
coordinator when its replica goes away. Operations are registered from
Python (Debian's grpcio); ferryctl is run as a program.

Run with /usr/bin/python3, from CTest (ferryctl).
"""
import json
import os
import signal
import subprocess
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import ferry_harness  # noqa: E402

import grpc  # noqa: E402

FERRYCTL = os.path.join(ferry_harness.BUILD_DIR, "tools", "ferryctl")
TOKEN = "ferryctl-token-0123456789"
CLUSTER = None
C2 = None


def setUpModule():
    global CLUSTER, C2
    CLUSTER = ferry_harness.Cluster(ttl=30)
    C2 = ferry_harness.Coordinator(CLUSTER.tmp, CLUSTER.etcd.endpoint, name="c2", ttl=30)
    C2.start()


def tearDownModule():
    C2.stop()
    CLUSTER.close()


def ferryctl(*args, coordinator=None):
    coordinator = coordinator or CLUSTER.coordinator.target
    return subprocess.run([FERRYCTL, *args, "--coordinator", coordinator, "--timeout", "5"],
                          capture_output=True, text=True, timeout=60)


def metadata(pb, kind):
    return pb.RdmaMetadata(
        version=1, kind=kind, worker_address=b"\x01" * 64,
        descriptors=[pb.Descriptor(address=0x10000, size=4096,
                                   device=pb.Device(kind=pb.DEVICE_KIND_HOST), rkey=b"k" * 32)],
        notification_key=os.urandom(16), worker_name="py", hostname="localhost")


class Ferryctl(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        from ferry.v1 import coordinator_pb2, coordinator_pb2_grpc, types_pb2
        cls.pb, cls.cpb = types_pb2, coordinator_pb2
        cls.channel = grpc.insecure_channel(CLUSTER.coordinator.target)
        cls.stub = coordinator_pb2_grpc.CoordinatorStub(cls.channel)

    def register(self, rid, kind=None):
        return self.stub.Register(self.cpb.RegisterRequest(
            request_id=rid, metadata=metadata(self.pb, kind or self.pb.OPERATION_KIND_WRITE),
            access_token=TOKEN, owner="py-owner"), timeout=10)

    def claim(self, rid):
        return self.stub.Claim(self.cpb.ClaimRequest(
            request_id=rid, access_token=TOKEN, claimant="py-claimant"), timeout=10)

    def json_out(self, r):
        self.assertEqual(r.returncode, 0, r.stderr)
        return [json.loads(line) for line in r.stdout.splitlines()]

    def test_list_filters_and_pages(self):
        for i in range(5):
            self.register(f"ls-a-{i}", self.pb.OPERATION_KIND_WRITE)
        self.register("ls-b-0", self.pb.OPERATION_KIND_READ)
        self.claim("ls-a-1")

        out = self.json_out(ferryctl("list", "--prefix", "ls-", "--page-size", "2", "--json"))
        self.assertEqual(len(out), 1)
        ids = [op["request_id"] for op in out[0]["operations"]]
        self.assertEqual(ids, ["ls-a-0", "ls-a-1", "ls-a-2", "ls-a-3", "ls-a-4", "ls-b-0"])
        self.assertNotIn("next_page_token", out[0])
        self.assertGreater(out[0]["revision"], 0)

        # One page at a time: the token of the first page starts the second.
        first = self.json_out(ferryctl("list", "--prefix", "ls-", "--page-size", "4",
                                       "--pages", "1", "--json"))[0]
        self.assertEqual(len(first["operations"]), 4)
        rest = self.json_out(ferryctl("list", "--prefix", "ls-", "--page-size", "4",
                                      "--page-token", first["next_page_token"], "--json"))[0]
        self.assertEqual([op["request_id"] for op in rest["operations"]], ["ls-a-4", "ls-b-0"])

        claimed = self.json_out(ferryctl("list", "--prefix", "ls-", "--state", "claimed",
                                         "--json"))[0]["operations"]
        self.assertEqual([(op["request_id"], op["state"], op["claimant"]) for op in claimed],
                         [("ls-a-1", "CLAIMED", "py-claimant")])
        reads = self.json_out(ferryctl("list", "--prefix", "ls-", "--kind", "read",
                                       "--json"))[0]["operations"]
        self.assertEqual([op["request_id"] for op in reads], ["ls-b-0"])

        table = ferryctl("list", "--prefix", "ls-a-1")
        self.assertEqual(table.returncode, 0, table.stderr)
        lines = table.stdout.splitlines()
        self.assertEqual(lines[0].split()[:4], ["REQUEST", "ID", "STATE", "KIND"])
        self.assertEqual(lines[1].split()[:5],
                         ["ls-a-1", "CLAIMED", "WRITE", "py-owner", "py-claimant"])

    def test_list_interrupted_prints_what_it_read_and_where_to_go_on(self):
        """Ctrl-C during a list of many pages: it used to read every page
        first. The coordinator is frozen while ferryctl waits for its first
        page, ferryctl gets SIGINT, then the coordinator goes on: one page
        printed, the token to go on with, exit 130."""
        for i in range(3):
            self.register(f"int-{i}")
        ferry_harness.freeze(C2.proc)
        try:
            proc = subprocess.Popen(
                [FERRYCTL, "list", "--prefix", "int-", "--page-size", "1", "--json",
                 "--coordinator", C2.target, "--timeout", "30"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            ferry_harness.wait_until(lambda: connected_to(proc.pid, C2.port), 30,
                                     "ferryctl to connect to the frozen coordinator")
            proc.send_signal(signal.SIGINT)
        finally:
            C2.proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 130, err)
        self.assertIn("interrupted after 1 page(s)", err)
        pages = [json.loads(line) for line in out.splitlines()]
        self.assertEqual([op["request_id"] for op in pages[0]["operations"]], ["int-0"])
        rest = self.json_out(ferryctl("list", "--prefix", "int-", "--page-size", "1",
                                      "--page-token", pages[0]["next_page_token"], "--json"))
        self.assertEqual([op["request_id"] for op in rest[0]["operations"]], ["int-1", "int-2"])

    def test_get_and_unknown(self):
        self.register("get-1")
        out = self.json_out(ferryctl("get", "get-1", "--json"))[0]
        self.assertEqual(out["operation"]["request_id"], "get-1")
        self.assertEqual(out["operation"]["state"], "REGISTERED")
        self.assertEqual(out["operation"]["owner"], "py-owner")
        self.assertNotIn("metadata", out["operation"])

        r = ferryctl("get", "get-nobody")
        self.assertEqual(r.returncode, 3, r.stderr)
        self.assertIn("NOT_FOUND", r.stderr)
        r = ferryctl("get", "bad id")
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("request_id", r.stderr)

    def test_table_escapes_control_bytes(self):
        """Names and messages are any worker's text: in a table a newline, a
        terminal escape, a C1 control or a bidirectional override in one
        prints as \\xNN, on the one row, and JSON keeps the text as it is."""
        owner = "w\n2026-01-01 forged-row\x1b[31m \u009b32m \u202egpj.exe"
        self.stub.Register(self.cpb.RegisterRequest(
            request_id="esc-1", metadata=metadata(self.pb, self.pb.OPERATION_KIND_WRITE),
            access_token=TOKEN, owner=owner), timeout=10)
        r = ferryctl("get", "esc-1")
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertEqual(len(lines), 2, r.stdout)  # the header and one row
        self.assertIn("w\\x0a2026-01-01 forged-row\\x1b[31m \\xc2\\x9b32m "
                      "\\xe2\\x80\\xaegpj.exe", lines[1])
        for acting in ("\x1b", "\u009b", "\u202e"):  # ESC, C1 CSI, right-to-left override
            self.assertNotIn(acting, r.stdout)
        out = self.json_out(ferryctl("get", "esc-1", "--json"))[0]
        self.assertEqual(out["operation"]["owner"], owner)

    def test_cancel_and_release(self):
        self.register("cr-1")
        r = ferryctl("release", "cr-1", "--token", TOKEN)
        self.assertEqual(r.returncode, 5, r.stderr)  # not final: FAILED_PRECONDITION
        r = ferryctl("cancel", "cr-1", "--token", "wrong-token-0123456789")
        self.assertEqual(r.returncode, 4, r.stderr)  # PERMISSION_DENIED
        out = self.json_out(ferryctl("cancel", "cr-1", "--token", TOKEN, "--reason", "drain",
                                     "--json"))[0]
        self.assertEqual(out["operation"]["state"], "CANCELLED")
        self.assertEqual(out["operation"]["error_message"], "drain")
        out = self.json_out(ferryctl("release", "cr-1", "--token", TOKEN, "--json"))[0]
        self.assertEqual(out["released"], "cr-1")
        self.assertGreater(out["revision"], 0)
        r = ferryctl("get", "cr-1", "--linearizable")
        self.assertEqual(r.returncode, 3, r.stderr)
        r = ferryctl("cancel", "cr-1")
        self.assertEqual(r.returncode, 2, r.stderr)  # no --token
        self.assertIn("--token", r.stderr)

    def test_health_and_coordinators_in_order(self):
        dead = f"127.0.0.1:{ferry_harness.free_port()}"
        both = f"{CLUSTER.coordinator.target},{C2.target}"
        out = self.json_out(ferryctl("health", "--json", coordinator=both))
        self.assertEqual([o["status"] for o in out], ["SERVING", "SERVING"])

        r = ferryctl("health", coordinator=f"{dead},{C2.target}")
        self.assertEqual(r.returncode, 7, r.stdout + r.stderr)  # one did not answer
        r = ferryctl("health", coordinator=dead)
        self.assertEqual(r.returncode, 6, r.stdout + r.stderr)

        # Other commands take the first coordinator that answers.
        self.register("order-1")
        out = self.json_out(ferryctl("get", "order-1", "--json", "--linearizable",
                                     coordinator=f"{dead},{C2.target}"))[0]
        self.assertEqual(out["coordinator"], "c2")
        r = ferryctl("get", "order-1", coordinator=f"{dead},{dead}")
        self.assertEqual(r.returncode, 6, r.stderr)

    def test_watch_replays_from_start_revision(self):
        reg = self.register("sr-1")
        self.assertGreater(reg.header.revision, 0)
        proc = subprocess.Popen(
            [FERRYCTL, "watch", "sr-1", "--json", "--start-revision", str(reg.header.revision),
             "--coordinator", CLUSTER.coordinator.target],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()  # the replayed registration, nothing new needed
        finally:
            rc, err = stop_watch(proc)
        self.assertEqual(rc, 0, err)
        ev = json.loads(line)
        self.assertEqual((ev["type"], ev["operation"]["request_id"], ev["operation"]["state"]),
                         ("PUT", "sr-1", "REGISTERED"))
        self.assertEqual(ev["revision"], reg.header.revision)

    def test_usage(self):
        for args in (["nosuch"], ["get"], ["list", "--state", "nosuch"],
                     ["list", "--page-size", "1001"], ["watch"],
                     ["watch", "x", "--prefix", "y"]):
            r = ferryctl(*args)
            self.assertEqual(r.returncode, 2, f"{args}: {r.stderr}")


class Tls(unittest.TestCase):
    """ferryctl's TLS flags, as ferry-worker's, against a coordinator that
    requires client certificates."""

    def test_health_over_tls(self):
        cluster = ferry_harness.Cluster(ttl=30, tls=True)
        try:
            certs = cluster.certs
            tls = ["--tls-ca", os.path.join(certs, "ca.pem"),
                   "--tls-server-name", "ferry.test"]
            cert = ["--tls-cert", os.path.join(certs, "client.pem"),
                    "--tls-key", os.path.join(certs, "client.key")]
            target = cluster.coordinator.target
            out = self.assertOk(ferryctl("health", "--json", *tls, *cert, coordinator=target))
            self.assertEqual(json.loads(out)["status"], "SERVING")
            r = ferryctl("get", "tls-nobody", *tls, *cert, coordinator=target)
            self.assertEqual(r.returncode, 3, r.stderr)
            # Without a client certificate the handshake fails: nothing answers.
            r = ferryctl("get", "tls-nobody", *tls, coordinator=target)
            self.assertEqual(r.returncode, 6, r.stderr)
        finally:
            cluster.close()

    def assertOk(self, r):
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout


def register_on_c2(rid):
    from ferry.v1 import coordinator_pb2, coordinator_pb2_grpc, types_pb2
    c2 = coordinator_pb2_grpc.CoordinatorStub(grpc.insecure_channel(C2.target))
    c2.Register(coordinator_pb2.RegisterRequest(
        request_id=rid, metadata=metadata(types_pb2, types_pb2.OPERATION_KIND_WRITE),
        access_token=TOKEN), timeout=10)


def connected_to(pid, port):
    """Whether pid has an established TCP connection to `port`."""
    return any(state == "01" and remote == port
               for state, _, remote in ferry_harness.tcp_sockets(pid))


def stop_watch(proc):
    """Interrupts a `ferryctl watch`; its exit code and stderr."""
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(15)
    err = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    return rc, err


class Watch(unittest.TestCase):
    """Runs last (unittest runs classes in name order): it stops c1."""

    def test_a_frozen_coordinator_is_left_for_the_next(self):
        """c1 stops answering without closing its connection (SIGSTOP: as a
        host that vanished, or a partition). The stream's keepalive pings go
        unanswered, the connection is dropped, and ferryctl resumes on c2;
        without them it waited on c1 in silence until TCP gave up."""
        register = register_on_c2

        env = dict(os.environ, FERRY_RPC_KEEPALIVE_MS="1000")
        proc = subprocess.Popen(
            [FERRYCTL, "watch", "--prefix", "fz-", "--json", "--timeout", "5",
             "--coordinator", f"{CLUSTER.coordinator.target},{C2.target}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        events = []

        def reader():
            for line in proc.stdout:
                events.append(json.loads(line))

        threading.Thread(target=reader, daemon=True).start()
        frozen = False
        try:
            def once(prefix):
                register(f"{prefix}-{os.urandom(4).hex()}")
                return any(e["operation"]["request_id"].startswith(prefix) for e in events)

            ferry_harness.wait_until(lambda: once("fz-1"), 30, "an event through c1")
            self.assertEqual(events[-1]["coordinator"], "c1")
            ferry_harness.freeze(CLUSTER.coordinator.proc)
            frozen = True
            ferry_harness.wait_until(lambda: once("fz-2"), 30, "an event through c2")
            self.assertEqual(events[-1]["coordinator"], "c2")
        finally:
            if frozen:
                CLUSTER.coordinator.proc.send_signal(signal.SIGCONT)
            rc, err = stop_watch(proc)
        self.assertEqual(rc, 0, err)
        self.assertIn("watching again", err)

    def test_watch_resumes_on_the_next_coordinator(self):
        register = register_on_c2

        proc = subprocess.Popen(
            [FERRYCTL, "watch", "--prefix", "w-", "--json", "--timeout", "5",
             "--coordinator", f"{CLUSTER.coordinator.target},{C2.target}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        events = []
        seen = threading.Condition()

        def reader():
            for line in proc.stdout:
                with seen:
                    events.append(json.loads(line))
                    seen.notify_all()

        t = threading.Thread(target=reader, daemon=True)
        t.start()

        registered = []

        def register_until(what, cond):
            # ferryctl says nothing on stdout until an event: until its stream
            # is open a registration may come before it; keep registering
            # until one shows.
            def once():
                rid = f"w-{os.urandom(4).hex()}"
                register(rid)
                registered.append(rid)
                return cond()
            ferry_harness.wait_until(once, 30, what)

        try:
            register_until("an event through c1", lambda: len(events) > 0)
            self.assertEqual(events[0]["coordinator"], "c1")
            self.assertEqual(events[0]["type"], "PUT")
            self.assertEqual(events[0]["operation"]["state"], "REGISTERED")

            self.assertEqual(CLUSTER.coordinator.stop(), 0)
            register_until("an event through c2",
                           lambda: any(e["coordinator"] == "c2" for e in events))
            # Everything registered since the first event arrived, once each,
            # also what was registered while ferryctl moved from c1 to c2 (it
            # resumes with start_revision).
            first = events[0]["operation"]["request_id"]
            want = registered[registered.index(first):]
            with seen:
                ok = seen.wait_for(lambda: {e["operation"]["request_id"] for e in events}
                                   >= set(want), timeout=30)
                got = [e["operation"]["request_id"] for e in events]
            self.assertTrue(ok, f"missing {set(want) - set(got)}")
            self.assertEqual(len(got), len(set(got)), f"an event twice: {got}")
        finally:
            rc, err = stop_watch(proc)
        self.assertEqual(rc, 0, err)
        self.assertIn("watching again", err)
        self.assertIn("resumed on " + C2.target + " from revision", err)


if __name__ == "__main__":
    unittest.main(verbosity=2)
