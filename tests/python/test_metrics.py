"""ferry-coordinator's Prometheus metrics (--metrics-listen): scraped from a
real coordinator over a real etcd before and after a known sequence of
calls, parsed with python3-prometheus-client's parser, and each counter
checked to have moved by exactly that much.

Run with /usr/bin/python3, from CTest (python_metrics).
"""
import os
import sys
import threading
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import ferry_harness  # noqa: E402

import grpc  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

CLUSTER = None
METRICS_PORT = None
TOKEN = "metrics-token-0123456789"
COORD = "/ferry.v1.Coordinator/"


def setUpModule():
    global CLUSTER, METRICS_PORT
    # Port 0: the coordinator binds a free one and logs it (no free port to
    # race another process for).
    CLUSTER = ferry_harness.Cluster(ttl=120, extra=("--metrics-listen", "127.0.0.1:0"))
    METRICS_PORT = CLUSTER.coordinator.metrics_port()


def tearDownModule():
    rc = CLUSTER.close()
    if rc != 0:
        raise AssertionError(f"coordinator exited with {rc} after SIGTERM")


def scrape(port=None):
    """{(sample name, frozenset(labels)): value} of one GET /metrics."""
    port = METRICS_PORT if port is None else port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def metadata(pb):
    return pb.RdmaMetadata(
        version=1, kind=pb.OPERATION_KIND_WRITE, worker_address=b"\x01" * 64,
        descriptors=[pb.Descriptor(address=0x10000, size=4096,
                                   device=pb.Device(kind=pb.DEVICE_KIND_HOST), rkey=b"k" * 32)],
        notification_key=os.urandom(16), worker_name="py", hostname="localhost")


class Metrics(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        from ferry.v1 import coordinator_pb2, coordinator_pb2_grpc, types_pb2
        cls.pb, cls.cpb = types_pb2, coordinator_pb2
        cls.stub = coordinator_pb2_grpc.CoordinatorStub(
            grpc.insecure_channel(CLUSTER.coordinator.target))

    def register(self, rid, timeout=10):
        return self.stub.Register(self.cpb.RegisterRequest(
            request_id=rid, metadata=metadata(self.pb), access_token=TOKEN), timeout=timeout)

    def expect_code(self, code, fn, *args):
        with self.assertRaises(grpc.RpcError) as cm:
            fn(*args, timeout=10)
        self.assertEqual(cm.exception.code(), code)

    def settled(self):
        """One scrape once no call is in flight, so that every earlier call,
        other tests' too, is in it: a call leaves ferry_rpc_in_flight in the
        same step as it is counted (metrics.c, under one lock), which may be
        just after its answer reached its client."""
        snap = {}

        def idle():
            snap.clear()
            snap.update(scrape())
            return all(v == 0 for (name, _), v in snap.items() if name == "ferry_rpc_in_flight")

        ferry_harness.wait_until(idle, 20, "no call in flight")
        return snap

    def test_requests_by_method_and_code(self):
        before = self.settled()
        self.register("m-a")
        self.register("m-b")
        self.expect_code(grpc.StatusCode.ALREADY_EXISTS, self.register, "m-a")
        for _ in range(3):
            self.stub.Get(self.cpb.GetRequest(request_id="m-a"), timeout=10)
        self.expect_code(grpc.StatusCode.NOT_FOUND, self.stub.Get,
                         self.cpb.GetRequest(request_id="m-nobody"))
        self.expect_code(grpc.StatusCode.PERMISSION_DENIED, self.stub.Lookup,
                         self.cpb.LookupRequest(request_id="m-a",
                                                access_token="wrong-token-0123456789"))
        req = "ferry_rpc_requests_total"
        hist = "ferry_rpc_request_duration_seconds"
        after = {}

        def moved(name, **labels):
            return value(after, name, **labels) - value(before, name, **labels)

        def counted():
            # A call is counted as it finishes, which may be just after its
            # answer reached this client: scrape until the last one shows.
            after.clear()
            after.update(scrape())
            return all(moved(hist + "_count", method=COORD + m) >= n
                       for m, n in (("Register", 3), ("Get", 4), ("Lookup", 1)))

        ferry_harness.wait_until(counted, 20, "every call to be counted")
        self.assertEqual(moved(req, method=COORD + "Register", code="OK"), 2)
        self.assertEqual(moved(req, method=COORD + "Register", code="ALREADY_EXISTS"), 1)
        self.assertEqual(moved(req, method=COORD + "Get", code="OK"), 3)
        self.assertEqual(moved(req, method=COORD + "Get", code="NOT_FOUND"), 1)
        self.assertEqual(moved(req, method=COORD + "Lookup", code="PERMISSION_DENIED"), 1)
        self.assertEqual(moved(req, method=COORD + "Claim", code="OK"), 0)

        for method, n in (("Register", 3), ("Get", 4), ("Lookup", 1)):
            self.assertEqual(moved(hist + "_count", method=COORD + method), n, method)
            self.assertEqual(moved(hist + "_bucket", method=COORD + method, le="+Inf"), n)
            self.assertGreater(moved(hist + "_sum", method=COORD + method), 0)
        # Buckets are cumulative.
        les = sorted({dict(k[1])["le"] for k in after if k[0] == hist + "_bucket"},
                     key=float)
        counts = [value(after, hist + "_bucket", method=COORD + "Get", le=le) for le in les]
        self.assertEqual(counts, sorted(counts))

        self.assertEqual(value(after, "ferry_healthy"), 1)
        builds = [k for k in after if k[0] == "ferry_build_info"]
        self.assertEqual(len(builds), 1)
        self.assertEqual(dict(builds[0][1])["name"], "c1")

    def test_etcd_requests_by_kind(self):
        self.register("m-lin")
        name = "ferry_etcd_requests_total"
        hist = "ferry_etcd_request_duration_seconds_count"
        # The health probe's reads count apart (kind="probe/kv/range", about
        # one a second), so the two Gets are all that kv/range counts.
        before = scrape()
        for _ in range(2):
            self.stub.Get(self.cpb.GetRequest(request_id="m-lin", linearizable=True),
                          timeout=10)
        after = scrape()
        moved = value(after, name, kind="kv/range", result="ok") - \
            value(before, name, kind="kv/range", result="ok")
        timed = value(after, hist, kind="kv/range") - value(before, hist, kind="kv/range")
        self.assertEqual(moved, 2)
        self.assertEqual(timed, 2)

    def test_the_health_probe_counts_apart(self):
        # About four probe requests a second that succeed whatever the load
        # does diluted FerryEtcdErrors' rate of the clients' requests.
        name = "ferry_etcd_requests_total"
        before = scrape()
        after = {}

        def probed():
            after.update(scrape())
            return all(value(after, name, kind=k, result="ok") >=
                       value(before, name, kind=k, result="ok") + 2
                       for k in ("probe/kv/range", "probe/maintenance/status"))

        ferry_harness.wait_until(probed, 20, "two health probes")
        self.assertEqual(value(after, name, kind="kv/range", result="ok"),
                         value(before, name, kind="kv/range", result="ok"))
        self.assertEqual(value(after, name, kind="maintenance/status", result="ok"), 0)

    def test_in_flight_calls_and_watch_streams(self):
        gauge = "ferry_rpc_in_flight"
        watch = self.stub.Watch(self.cpb.WatchRequest(request_id_prefix="m-"), timeout=30)
        self.assertTrue(next(watch).created)
        done = threading.Event()

        def lookup():
            self.stub.Lookup(self.cpb.LookupRequest(request_id="m-wait", access_token=TOKEN,
                                                    wait_ms=20000), timeout=30)
            done.set()

        t = threading.Thread(target=lookup)
        t.start()
        ferry_harness.wait_until(
            lambda: value(scrape(), gauge, method=COORD + "Lookup") == 1, 20,
            "the waiting Lookup to show in flight")
        self.assertEqual(value(scrape(), gauge, method=COORD + "Watch"), 1)
        self.register("m-wait")
        t.join(20)
        self.assertTrue(done.is_set())
        watch.cancel()
        ferry_harness.wait_until(
            lambda: value(scrape(), gauge, method=COORD + "Lookup") == 0 and
            value(scrape(), gauge, method=COORD + "Watch") == 0, 20,
            "the Lookup and the Watch to finish")

    def test_view_size_and_watch(self):
        self.register("m-view")
        samples = {}

        def settled():
            samples.update(scrape())
            listed = self.stub.List(self.cpb.ListRequest(page_size=1000), timeout=10)
            return value(samples, "ferry_view_operations") == len(listed.operations)

        ferry_harness.wait_until(settled, 20, "the view to hold every listed record")
        self.assertGreaterEqual(value(samples, "ferry_view_operations"), 1)
        self.assertEqual(value(samples, "ferry_view_watch_live"), 1)

    def test_lease_and_claim_expiries(self):
        before = scrape()
        # An owner that never renews: its 1 s lease runs out.
        self.stub.Register(self.cpb.RegisterRequest(
            request_id="m-gone", metadata=metadata(self.pb), access_token=TOKEN,
            ttl_seconds=1), timeout=10)
        # A claimant that never renews: its 1 s claim lease runs out.
        self.register("m-claimed")
        self.stub.Claim(self.cpb.ClaimRequest(request_id="m-claimed", access_token=TOKEN,
                                              ttl_seconds=1), timeout=10)
        after = {}

        events = "ferry_view_events_total"

        def moved(name, **labels):
            return value(after, name, **labels) - value(before, name, **labels)

        def expired():
            # The expiries are counted where they happen; the view's events
            # when the watch delivers them, which may be a little later.
            after.update(scrape())
            return (moved("ferry_lease_expiries_total") >= 1 and
                    moved("ferry_claim_expiries_total") >= 1 and
                    moved(events, type="put", state="ERRORED") >= 1 and
                    moved(events, type="delete", state="EXPIRED") >= 1)

        ferry_harness.wait_until(expired, 30, "both leases to expire")

        self.assertEqual(moved("ferry_lease_expiries_total"), 1)
        self.assertEqual(moved("ferry_claim_expiries_total"), 1)
        self.assertEqual(moved(events, type="put", state="REGISTERED"), 2)
        self.assertEqual(moved(events, type="put", state="CLAIMED"), 1)
        self.assertEqual(moved(events, type="put", state="ERRORED"), 1)
        self.assertEqual(moved(events, type="delete", state="EXPIRED"), 1)
        # The lease deleted the claim's key alone, the record still CLAIMED
        # in the view: the transition decided, and turned it ERRORED.
        self.assertEqual(moved("ferry_claim_ends_total", decided="transition"), 1)
        self.assertEqual(moved("ferry_claim_ends_total", decided="view"), 0)
        # Its end was queued and done: nothing waits for room in the queue.
        self.assertEqual(after[("ferry_claim_ends_pending", frozenset())], 0)
        got = self.stub.Get(self.cpb.GetRequest(request_id="m-claimed"), timeout=10)
        self.assertEqual(got.operation.state, self.pb.OPERATION_STATE_ERRORED)

    def test_finished_claims_cost_no_etcd_read(self):
        # Complete and Cancel delete a claim's key in the transaction that
        # moves its record on, so when the watch shows the key gone the view
        # already holds the record past CLAIMED at that revision: the check
        # that the claim did not expire is decided there, with no etcd read
        # (before, every finished operation cost each replica one). An
        # expiry is decided by the transition (test_lease_and_claim_expiries).
        # (The health probe's reads count apart: kind="probe/kv/range".)
        ferry_harness.wait_until(lambda: value(scrape(), "ferry_view_watch_live") == 1, 20,
                                 "the view's watch to be live")
        self.assertEqual(self.finish_four("m-fin-"), 0)

    def finish_four(self, prefix):
        """Four claims ended (Complete twice, Complete with an error,
        Cancel), each end decided on the view; the etcd reads meanwhile."""
        before = self.settled()
        ids = [f"{prefix}{i}" for i in range(4)]
        claims = {}
        for rid in ids:
            self.register(rid)
            claims[rid] = self.stub.Claim(self.cpb.ClaimRequest(request_id=rid,
                                                                access_token=TOKEN), timeout=10)
        for rid, kw in ((ids[0], {}), (ids[1], {}),
                        (ids[2], {"error_code": -5, "error_message": "failed on purpose"})):
            self.stub.Complete(self.cpb.CompleteRequest(
                request_id=rid, access_token=TOKEN, claim_lease_id=claims[rid].claim_lease_id,
                lease_token=claims[rid].lease_token, **kw), timeout=10)
        self.stub.Cancel(self.cpb.CancelRequest(request_id=ids[3], access_token=TOKEN),
                         timeout=10)
        ends = "ferry_claim_ends_total"
        after = {}

        def moved(name, **labels):
            return value(after, name, **labels) - value(before, name, **labels)

        def ended():
            after.update(scrape())
            return moved(ends, decided="view") + moved(ends, decided="transition") >= len(ids)

        ferry_harness.wait_until(ended, 20, "the four claims' ends to be checked")
        self.assertEqual(moved(ends, decided="view"), len(ids))
        self.assertEqual(moved(ends, decided="transition"), 0)
        for rid, state in zip(ids, ("COMPLETE", "COMPLETE", "ERRORED", "CANCELLED")):
            got = self.stub.Get(self.cpb.GetRequest(request_id=rid), timeout=10)
            self.assertEqual(got.operation.state, self.pb.OperationState.Value(
                f"OPERATION_STATE_{state}"), rid)
        return moved("ferry_etcd_requests_total", kind="kv/range", result="ok")

    def test_watch_events_sent(self):
        watch = self.stub.Watch(self.cpb.WatchRequest(request_id_prefix="m-ev-"), timeout=30)
        self.assertTrue(next(watch).created)
        before = scrape()
        self.register("m-ev-1")
        self.register("m-ev-2")
        got = [ev.operation.request_id for msg in (next(watch), next(watch)) for ev in msg.events]
        self.assertEqual(got, ["m-ev-1", "m-ev-2"])
        watch.cancel()
        # Counted once queued: the client may hold an event before the
        # server's thread counts it, so the count is waited for.
        name = "ferry_watch_events_sent_total"
        ferry_harness.wait_until(lambda: value(scrape(), name) - value(before, name) >= 2, 10,
                                 "the two events to be counted")
        self.assertEqual(value(scrape(), name) - value(before, name), 2)

    def test_other_paths_are_not_found(self):
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/", timeout=10)
        self.assertEqual(cm.exception.code, 404)


class OperationsByState(unittest.TestCase):
    """ferry_operations{state}: the records of a replica's view by state, on a
    cluster of its own so that every gauge has one exact expected value."""

    @classmethod
    def setUpClass(cls):
        from ferry.v1 import coordinator_pb2, coordinator_pb2_grpc, types_pb2
        cls.pb, cls.cpb = types_pb2, coordinator_pb2
        cls.cluster = ferry_harness.Cluster(ttl=120, extra=("--metrics-listen", "127.0.0.1:0"))
        cls.port = cls.cluster.coordinator.metrics_port()
        cls.stub = coordinator_pb2_grpc.CoordinatorStub(
            grpc.insecure_channel(cls.cluster.coordinator.target))

    @classmethod
    def tearDownClass(cls):
        rc = cls.cluster.close()
        if rc != 0:
            raise AssertionError(f"coordinator exited with {rc} after SIGTERM")

    def by_state(self):
        samples = scrape(self.port)
        return {name: value(samples, "ferry_operations", state=name)
                for name in self.pb.OperationState.keys()
                for name in [name[len("OPERATION_STATE_"):]]}

    def test_operations_by_state(self):
        zero = {name[len("OPERATION_STATE_"):]: 0 for name in self.pb.OperationState.keys()}
        ferry_harness.wait_until(lambda: self.by_state() == zero, 20,
                                 "an empty view to show every state at 0")
        ids = [f"s-{i}" for i in range(6)]
        for rid in ids:
            self.stub.Register(self.cpb.RegisterRequest(
                request_id=rid, metadata=metadata(self.pb), access_token=TOKEN), timeout=10)
        claims = {rid: self.stub.Claim(self.cpb.ClaimRequest(request_id=rid,
                                                              access_token=TOKEN), timeout=10)
                  for rid in ids[:4]}

        def complete(rid, **kw):
            self.stub.Complete(self.cpb.CompleteRequest(
                request_id=rid, access_token=TOKEN, claim_lease_id=claims[rid].claim_lease_id,
                lease_token=claims[rid].lease_token, **kw), timeout=10)

        complete(ids[0])
        complete(ids[1])
        complete(ids[2], error_code=-5, error_message="failed on purpose")
        self.stub.Cancel(self.cpb.CancelRequest(request_id=ids[5], access_token=TOKEN),
                         timeout=10)
        want = dict(zero, REGISTERED=1, CLAIMED=1, COMPLETE=2, ERRORED=1, CANCELLED=1)
        got = {}

        def settled():
            got.update(self.by_state())
            return got == want

        # The coordinator's own writes go through to its view at once; the
        # wait covers only a watch that is still (re)connecting.
        ferry_harness.wait_until(settled, 20, "the view to hold the six records")
        self.assertEqual(got, want)
        self.assertEqual(value(scrape(self.port), "ferry_view_operations"), len(ids))


class BuildInfoName(unittest.TestCase):
    """ferry_build_info{name}: the replica's --name, escaped as the text
    format asks (a '"', '\\' or newline in it once broke the whole scrape)."""

    NAME = 'r"1\\x\nz},y="'

    @classmethod
    def setUpClass(cls):
        cls.cluster = ferry_harness.Cluster(
            ttl=120, extra=("--metrics-listen", "127.0.0.1:0", "--name", cls.NAME))
        cls.port = cls.cluster.coordinator.metrics_port()

    @classmethod
    def tearDownClass(cls):
        rc = cls.cluster.close()
        if rc != 0:
            raise AssertionError(f"coordinator exited with {rc} after SIGTERM")

    def test_name_with_quote_backslash_and_newline(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as r:
            text = r.read().decode()
        self.assertIn('name="r\\"1\\\\x\\nz},y=\\""} 1\n', text)
        samples = scrape(self.port)
        builds = [dict(k[1]) for k in samples if k[0] == "ferry_build_info"]
        self.assertEqual([b["name"] for b in builds], [self.NAME])
        # And the rest of the exposition parses with it.
        self.assertIn(("ferry_healthy", frozenset()), samples)


if __name__ == "__main__":
    unittest.main(verbosity=2)
