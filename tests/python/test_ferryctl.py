"""ferryctl against real ferry-coordinator processes over a real etcd:
list (filters, paging, JSON), get, cancel, release, health, the exit codes,
several coordinators tried in order, and watch resuming on the next
coordinator when its replica goes away. Operations are registered from
Python (Debian's grpcio); ferryctl is run as a program. What only a broken
or hostile coordinator sends (a page token again and again, a revision of
2^63 - 1, bytes that are not UTF-8, terminal escapes in a status message)
comes from a fake one served from Python (Fake).

Run with /usr/bin/python3, from CTest (ferryctl).
"""
import json
import os
import signal
import socket
import subprocess
import tempfile
import sys
import threading
import time
import unittest
from concurrent import futures

sys.path.insert(0, os.path.dirname(__file__))
import ferry_harness  # noqa: E402

import grpc  # noqa: E402

FERRYCTL = os.path.join(ferry_harness.BUILD_DIR, "tools", "ferryctl")
TOKEN = "ferryctl-token-0123456789"
CLUSTER = None
C2 = None


def setUpModule():
    # Module cleanups run, last first, also when setUpModule fails, where
    # tearDownModule would not: nothing started is left behind.
    global CLUSTER, C2
    CLUSTER = ferry_harness.Cluster(ttl=30)
    unittest.addModuleCleanup(CLUSTER.close)
    C2 = ferry_harness.Coordinator(CLUSTER.tmp, CLUSTER.etcd.endpoint, name="c2", ttl=30)
    unittest.addModuleCleanup(C2.stop)
    C2.start()


def ferryctl(*args, coordinator=None, timeout="5", env=None, run_timeout=60, **kw):
    coordinator = coordinator or CLUSTER.coordinator.target
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run([FERRYCTL, *args, "--coordinator", coordinator, "--timeout", timeout],
                          env=env, timeout=run_timeout, **kw)


class Fake:
    """A ferry.v1.Coordinator served from this process (grpcio), answering
    as the test says: what a broken or hostile replica could send, which the
    real one never does. handlers: method name -> fn(request bytes, context)
    returning the response's bytes (Watch: yielding them); bytes, so that a
    test can send what the Python messages would refuse to build. `health`:
    the same for grpc.health.v1.Health/Check. The requests each method got
    are kept (requests[name], decoded by the caller). close() also wakes the
    handlers that wait on `done`."""

    def __init__(self, health=None, **handlers):
        self.requests = {name: [] for name in handlers}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        methods = {}
        for name, fn in handlers.items():
            kind = (grpc.unary_stream_rpc_method_handler if name == "Watch"
                    else grpc.unary_unary_rpc_method_handler)
            methods[name] = kind(self._kept(name, fn))
        generic = [grpc.method_handlers_generic_handler("ferry.v1.Coordinator", methods)]
        if health is not None:
            generic.append(grpc.method_handlers_generic_handler(
                "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(health)}))
        self.server.add_generic_rpc_handlers(generic)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{self.port}"
        self.server.start()

    def _kept(self, name, fn):
        def handler(request, context):
            with self.lock:
                self.requests[name].append(request)
            return fn(request, context)
        return handler

    def count(self, name):
        with self.lock:
            return len(self.requests[name])

    def wait(self, request, context):
        """A handler that never answers (until close)."""
        self.done.wait(60)
        context.abort(grpc.StatusCode.UNAVAILABLE, "fake closed")

    def close(self):
        self.done.set()
        self.server.stop(0)


def pb():
    from ferry.v1 import coordinator_pb2, types_pb2
    return types_pb2, coordinator_pb2


class Silent:
    """A TCP server that accepts connections and never says a word (a
    replica that hangs after accept, a proxy to nowhere)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.target = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept
        except OSError:
            pass
        self.sock.close()
        for conn in self.accepted:
            conn.close()


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

    def test_warnings_and_causes_of_the_layers_below_reach_stderr(self):
        """A FERRY_RPC_KEEPALIVE_MS out of range is named (it was ignored
        without a word: ferryctl set no log level), and so is the cause of a
        TLS file that cannot be used (it said only "invalid argument")."""
        env = dict(os.environ, FERRY_RPC_KEEPALIVE_MS="5")
        r = ferryctl("health", env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("FERRY_RPC_KEEPALIVE_MS=5 is not 1000..2000000 ms", r.stderr)
        missing = os.path.join(tempfile.mkdtemp(prefix="ferryctl-"), "ca.pem")
        r = ferryctl("health", "--tls-ca", missing)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn(f"{missing}: No such file or directory", r.stderr)

    def test_empty_token_is_none_and_other_commands_flags_are_refused(self):
        """FERRY_TOKEN="" is no token, as ferry-worker has it (it was sent,
        for the coordinator to refuse); a flag that is not the command's is
        refused, naming it (it was ignored: `watch x --state claimed`
        printed every state, `get --prefix` did nothing)."""
        self.register("l8-1")
        r = ferryctl("cancel", "l8-1", env=dict(os.environ, FERRY_TOKEN=""))
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("cancel needs --token", r.stderr)
        for args, flag in ((["get", "l8-1", "--prefix", "l8-"], "--prefix"),
                           (["health", "--token", TOKEN], "--token"),
                           (["list", "--start-revision", "3"], "--start-revision"),
                           (["release", "l8-1", "--token", TOKEN, "--reason", "r"], "--reason"),
                           (["cancel", "l8-1", "--token", TOKEN, "--linearizable"],
                            "--linearizable"),
                           (["watch", "l8-1", "--state", "claimed"], "--state")):
            try:
                r = ferryctl(*args, run_timeout=10)
            except subprocess.TimeoutExpired:
                self.fail(f"{args}: still running after 10 s (the flag was ignored)")
            self.assertEqual(r.returncode, 2, f"{args}: {r.stderr}")
            self.assertIn(f"{args[0]} does not take {flag}", r.stderr)
        self.assertEqual(self.stub.Get(self.cpb.GetRequest(request_id="l8-1"), timeout=10)
                         .operation.state, self.pb.OPERATION_STATE_REGISTERED)

    def test_lost_output_is_a_failure(self):
        """stdout that cannot be written (a full disk) is exit 1, not 0 with
        no output."""
        self.register("l3-1")
        with open("/dev/full", "w") as full:
            r = ferryctl("get", "l3-1", "--json", stdout=full, stderr=subprocess.PIPE,
                         capture_output=False)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("cannot write the output", r.stderr)

    def test_signals_end_one_call_commands_at_once(self):
        """get, cancel, release and health against a coordinator that
        accepts and never answers, --timeout 60: Ctrl-C ends them at once
        (they only set a flag nothing looked at, and waited out the
        timeout)."""
        for args in (["get", "m2-1"], ["release", "m2-1", "--token", TOKEN],
                     ["cancel", "m2-1", "--token", TOKEN], ["health"]):
            silent = Silent()
            proc = subprocess.Popen([FERRYCTL, *args, "--coordinator", silent.target,
                                     "--timeout", "60"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                ferry_harness.wait_until(lambda: silent.accepted, 30,
                                         f"{args[0]} to connect to the silent coordinator")
                proc.send_signal(signal.SIGINT)
                try:
                    rc = proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.fail(f"{args[0]} still running 5 s after SIGINT")
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                proc.stdout.close()
                proc.stderr.close()
                silent.close()
            self.assertIn(rc, (-signal.SIGINT, 130), args)

    def test_list_interrupted_while_its_first_page_waits_exits_130(self):
        """Ctrl-C while list waits for a page from a coordinator that never
        answers: once that call ends (its --timeout) the list is an
        interrupted one, exit 130, not the call's failure (6)."""
        silent = Silent()
        proc = subprocess.Popen([FERRYCTL, "list", "--coordinator", silent.target,
                                 "--timeout", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ferry_harness.wait_until(lambda: silent.accepted, 30,
                                     "list to connect to the silent coordinator")
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
            silent.close()
        self.assertEqual(proc.returncode, 130, err)
        self.assertIn("interrupted after 0 page(s)", err)

    def test_a_write_goes_to_the_next_coordinator_only_when_unsent(self):
        """release with a first coordinator that takes the call and never
        answers, then the real one: DEADLINE_EXCEEDED and the call is not
        sent again (the first may have applied it: a second would answer
        NOT_FOUND for a release that succeeded); the record is still there.
        A read (get) moves on and finds it. A first coordinator that cannot
        be reached at all (nothing sent) is skipped, the write too."""
        cpb = self.cpb
        self.register("m3-1")
        self.stub.Cancel(cpb.CancelRequest(request_id="m3-1", access_token=TOKEN,
                                           reason="final"), timeout=10)
        fake = Fake(Release=lambda req, ctx: fake.wait(req, ctx),
                    Get=lambda req, ctx: fake.wait(req, ctx))
        real = CLUSTER.coordinator.target
        try:
            r = ferryctl("release", "m3-1", "--token", TOKEN, timeout="1",
                         coordinator=f"{fake.target},{real}")
            self.assertEqual(r.returncode, 6, r.stderr)
            self.assertIn("DEADLINE_EXCEEDED", r.stderr)
            self.assertIn("not sent to another coordinator", r.stderr)
            self.assertEqual(fake.count("Release"), 1)
            got = self.stub.Get(cpb.GetRequest(request_id="m3-1", linearizable=True), timeout=10)
            self.assertEqual(got.operation.state, self.pb.OPERATION_STATE_CANCELLED)

            out = self.json_out(ferryctl("get", "m3-1", "--json", timeout="1",
                                         coordinator=f"{fake.target},{real}"))[0]
            self.assertEqual((out["operation"]["request_id"], out["coordinator"]),
                             ("m3-1", "c1"))
        finally:
            fake.close()
        dead = f"127.0.0.1:{ferry_harness.free_port()}"
        out = self.json_out(ferryctl("release", "m3-1", "--token", TOKEN, "--json",
                                     coordinator=f"{dead},{real}"))[0]
        self.assertEqual(out["released"], "m3-1")

    def test_list_stops_when_the_coordinator_repeats_a_page_token(self):
        """A coordinator whose every page says "go on from 'again'": ferryctl
        read page after page, keeping each, until it ran out of memory."""
        types, cpb = pb()
        page = cpb.ListResponse(
            header=types.ResponseHeader(revision=7, coordinator="fake"),
            operations=[types.Operation(request_id="loop-1")],
            next_page_token="again").SerializeToString()
        fake = Fake(List=lambda req, ctx: page)
        try:
            r = ferryctl("list", coordinator=fake.target, run_timeout=30)
        except subprocess.TimeoutExpired:
            self.fail("list still reading pages after 30 s")
        finally:
            fake.close()
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("next_page_token 'again' was sent before", r.stderr)
        self.assertEqual(r.stdout, "")

    def test_list_prints_what_it_read_when_a_later_page_fails(self):
        """The second page fails (OUT_OF_RANGE: etcd compacted the list's
        snapshot): the first page prints, with the token that failed, and the
        exit code is the failure's; before, nothing printed."""
        types, cpb = pb()
        first = cpb.ListResponse(
            header=types.ResponseHeader(revision=7, coordinator="fake"),
            operations=[types.Operation(request_id="lp-0")],
            next_page_token="p2").SerializeToString()

        def list_(req, ctx):
            if cpb.ListRequest.FromString(req).page_token == "":
                return first
            ctx.abort(grpc.StatusCode.OUT_OF_RANGE, "revision 7 compacted")

        fake = Fake(List=list_)
        try:
            r = ferryctl("list", "--json", coordinator=fake.target)
            table = ferryctl("list", coordinator=fake.target)
        finally:
            fake.close()
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("OUT_OF_RANGE: revision 7 compacted", r.stderr)
        out = [json.loads(line) for line in r.stdout.splitlines()]
        self.assertEqual(len(out), 1, r.stdout)
        self.assertEqual([op["request_id"] for op in out[0]["operations"]], ["lp-0"])
        self.assertEqual(out[0]["next_page_token"], "p2")
        self.assertEqual(table.returncode, 1, table.stderr)
        self.assertEqual(table.stdout.splitlines()[1].split()[0], "lp-0")
        self.assertIn("more: --page-token p2", table.stderr)

    def test_list_stops_at_what_one_list_holds(self):
        """A store past 1,000,000 records (or a coordinator that makes one
        up): list stops there, prints what it read and the token to read on
        from, exit 130 as an interrupted list; before, it held every page."""
        types, cpb = pb()
        page = cpb.ListResponse(
            header=types.ResponseHeader(revision=7, coordinator="fake"),
            operations=[types.Operation(request_id=f"cap-{i}") for i in range(1000)]
        ).SerializeToString()
        served = [0]

        def list_(req, ctx):
            served[0] += 1
            if served[0] > 1100:  # a last page: a list that reads on ends, bounded
                return page
            # A field again overrides it: the page with its own next token.
            return page + cpb.ListResponse(next_page_token=f"t{served[0]}").SerializeToString()

        fake = Fake(List=list_)
        try:
            r = ferryctl("list", "--page-size", "1000", coordinator=fake.target,
                         run_timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         capture_output=False)
        finally:
            fake.close()
        self.assertEqual(r.returncode, 130, r.stderr)
        self.assertIn("stopped after 1000000 operations in 1000 page(s)", r.stderr)
        self.assertIn("more: --page-token t1000\n", r.stderr)

    def test_messages_from_the_coordinator_are_shown_escaped(self):
        """A status message is the coordinator's text (and quotes clients'
        names): ESC, C1 controls and newlines in it print as \\xNN on stderr,
        and on stdout for health; so does a page token."""
        evil = "\x1b]0;owned\x07 \u009b2J \n forged"
        types, cpb = pb()
        page = cpb.ListResponse(operations=[types.Operation(request_id="esc-0")],
                                next_page_token=f"tok{evil}").SerializeToString()
        gone = Fake(Get=lambda req, ctx: ctx.abort(grpc.StatusCode.UNAVAILABLE, f"gone{evil}"))
        fake = Fake(Get=lambda req, ctx: ctx.abort(grpc.StatusCode.NOT_FOUND, f"none{evil}"),
                    List=lambda req, ctx: page,
                    health=lambda req, ctx: ctx.abort(grpc.StatusCode.NOT_FOUND, f"hc{evil}"))
        try:
            runs = [ferryctl("get", "esc-0", coordinator=f"{gone.target},{fake.target}"),
                    ferryctl("list", "--pages", "1", coordinator=fake.target),
                    ferryctl("health", coordinator=fake.target)]
        finally:
            gone.close()
            fake.close()
        self.assertEqual([r.returncode for r in runs], [3, 0, 3],
                         [r.stderr for r in runs])
        shown = "\\x1b]0;owned\\x07 \\xc2\\x9b2J \\x0a forged"
        self.assertIn(f"gone{shown}; trying the next coordinator", runs[0].stderr)
        self.assertIn(f"none{shown}", runs[0].stderr)
        self.assertIn(f"--page-token tok{shown}", runs[1].stderr)
        self.assertIn(f"hc{shown}", runs[2].stdout)
        for r in runs:
            for acting in ("\x1b", "\x07", "\u009b", "\n forged"):
                self.assertNotIn(acting, r.stdout + r.stderr)

    def test_json_is_utf8_and_exact(self):
        """Text that is not UTF-8 (only a broken or hostile coordinator sends
        it: the real one refuses it at its RPC layer) is U+FFFD in JSON, so
        the line parses; 64-bit numbers past 2^53 print exactly."""
        types, cpb = pb()
        bad = b"\xff\xc0\x80\xe2\x82b\xed\xa0\xf4\x90"
        raw = cpb.GetResponse(
            header=types.ResponseHeader(revision=2**53 + 1, coordinator="fake"),
            operation=types.Operation(request_id="l5-1", owner="@" * len(bad),
                                      created_unix_ms=2**62 + 1,
                                      state=types.OPERATION_STATE_REGISTERED)
        ).SerializeToString().replace(b"@" * len(bad), bad)
        fake = Fake(Get=lambda req, ctx: raw)
        try:
            r = ferryctl("get", "l5-1", "--json", coordinator=fake.target, text=False)
        finally:
            fake.close()
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout)  # bytes: strict UTF-8
        self.assertEqual(out["operation"]["owner"], bad.decode("utf-8", "replace"))
        self.assertEqual(out["operation"]["owner"], "\ufffd" * 4 + "b" + "\ufffd" * 4)
        self.assertEqual(out["revision"], 2**53 + 1)
        self.assertEqual(out["operation"]["created_unix_ms"], 2**62 + 1)

    def watch_until_event(self, prefix, coordinators):
        """Runs `ferryctl watch --prefix P --json` and registers P-<n> on c1
        until an event shows. The events, its exit code and its stderr."""
        proc = subprocess.Popen(
            [FERRYCTL, "watch", "--prefix", prefix, "--json", "--timeout", "5",
             "--coordinator", coordinators],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        events = []

        def reader():
            for line in proc.stdout:
                events.append(json.loads(line))

        threading.Thread(target=reader, daemon=True).start()

        def once():
            if proc.poll() is not None:
                raise AssertionError(f"watch exited {proc.returncode}: {proc.stderr.read()}")
            self.register(f"{prefix}{os.urandom(4).hex()}")
            return len(events) > 0
        try:
            ferry_harness.wait_until(once, 30, "an event")
        finally:
            if proc.poll() is None:
                rc, err = stop_watch(proc)
            else:
                rc, err = proc.returncode, proc.stderr.read()
        return events, rc, err

    def test_watch_moves_on_from_a_full_replica(self):
        """A replica at its --max-watches refuses the Watch with
        RESOURCE_EXHAUSTED (retry later or on another replica): watch goes
        on to the next one; it exited 1."""
        fake = Fake(Watch=lambda req, ctx: ctx.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "too many Watch streams open on this replica (10000; --max-watches)"))
        try:
            events, rc, err = self.watch_until_event(
                "m7-", f"{fake.target},{CLUSTER.coordinator.target}")
        finally:
            fake.close()
        self.assertEqual(rc, 0, err)
        self.assertEqual(events[0]["coordinator"], "c1")
        self.assertIn("RESOURCE_EXHAUSTED", err)

    def test_watch_json_marks_a_gap_in_the_output(self):
        """--start-revision past what the replica holds (OUT_OF_RANGE):
        watch goes on from now, and with --json says so in its output, not
        only on stderr, where a script reading the lines never looked: a
        GAP line before the first event after it."""
        types, cpb = pb()

        def watch(req, ctx):
            if cpb.WatchRequest.FromString(req).start_revision > 0:
                ctx.abort(grpc.StatusCode.OUT_OF_RANGE, "start_revision 5 is no longer held")
            header = types.ResponseHeader(revision=50, coordinator="fake")
            yield cpb.WatchResponse(header=header, created=True).SerializeToString()
            yield cpb.WatchResponse(
                header=types.ResponseHeader(revision=51, coordinator="fake"),
                events=[cpb.WatchEvent(type=cpb.WATCH_EVENT_TYPE_PUT,
                                       operation=types.Operation(request_id="gap-1"))]
            ).SerializeToString()
            fake.done.wait(30)

        fake = Fake(Watch=watch)
        proc = subprocess.Popen([FERRYCTL, "watch", "--prefix", "gap-", "--start-revision", "5",
                                 "--json", "--coordinator", fake.target],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = []
        threading.Thread(target=lambda: lines.extend(json.loads(l) for l in proc.stdout),
                         daemon=True).start()
        try:
            ferry_harness.wait_until(lambda: len(lines) >= 2 or proc.poll() is not None, 30,
                                     "the gap and the event")
        finally:
            fake.close()
            if proc.poll() is None:
                rc, err = stop_watch(proc)
            else:
                rc, err = proc.wait(), proc.stderr.read()
        self.assertTrue(lines, err)
        self.assertEqual(lines[0], {"revision": 50, "coordinator": "fake", "type": "GAP",
                                    "after_revision": 4}, err)
        self.assertEqual(lines[1]["type"], "PUT")
        self.assertEqual(lines[1]["operation"]["request_id"], "gap-1")

    def test_watch_refuses_a_revision_it_cannot_go_on_from(self):
        """A replica whose Watch starts at revision 2^63 - 1 and ends: the
        resume after it computed revision + 1 (signed overflow: the next
        replica was asked from revision -2^63). Now refused as a protocol
        error, and the next replica is watched."""
        types, cpb = pb()
        requests = []

        def watch(req, ctx):
            requests.append(cpb.WatchRequest.FromString(req).start_revision)
            yield cpb.WatchResponse(
                header=types.ResponseHeader(revision=2**63 - 1, coordinator="fake"),
                created=True).SerializeToString()
            ctx.set_code(grpc.StatusCode.UNAVAILABLE)

        fake = Fake(Watch=watch)
        try:
            events, rc, err = self.watch_until_event(
                "l4-", f"{fake.target},{CLUSTER.coordinator.target}")
        finally:
            fake.close()
        self.assertEqual(rc, 0, err)
        self.assertEqual(events[0]["coordinator"], "c1")
        self.assertIn("DATA_LOSS", err)
        self.assertIn(str(2**63 - 1), err)
        self.assertTrue(all(r >= 0 for r in requests), requests)

    def test_watch_backs_off_when_streams_end_at_once(self):
        """A replica that opens each Watch and ends it at once (a crash loop,
        a broken one): the backoff holds between tries; it was reset at each
        open, and watch asked again as fast as the replica answered."""
        types, cpb = pb()

        def watch(req, ctx):
            yield cpb.WatchResponse(header=types.ResponseHeader(revision=5, coordinator="fake"),
                                    created=True).SerializeToString()
            ctx.set_code(grpc.StatusCode.UNAVAILABLE)

        fake = Fake(Watch=watch)
        proc = subprocess.Popen(
            [FERRYCTL, "watch", "--prefix", "m6-", "--coordinator", fake.target],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ferry_harness.wait_until(lambda: fake.count("Watch") > 0, 30, "a first Watch")
            time.sleep(2)  # the window counted, not a wait for anything
            opened = fake.count("Watch")
        finally:
            rc, err = stop_watch(proc)
            fake.close()
        self.assertEqual(rc, 0, err)
        # 200 ms doubling: opens at 0, 0.2, 0.6, 1.4 s (and 3.0).
        self.assertLess(opened, 8, f"{opened} Watch streams in 2 s")
        self.assertIn("watching again", err)


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
