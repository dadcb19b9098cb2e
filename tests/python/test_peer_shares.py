"""One client host cannot hold every Watch slot or every parked wait of a
replica (--max-watches-per-peer, --max-waits-per-peer; audit-s30-grpc F3),
with real etcd and coordinator processes.

Before, --max-watches and --max-waits were shared by all clients with no
share per client: a few unauthenticated connections holding every slot
kept every honest Watch and every waiting Lookup/Claim refused
RESOURCE_EXHAUSTED for as long as they stayed open. Now each client host
(its address without the port: every connection and source port of it
together) may hold an eighth of each bound by default (at least 16):

- a raw client from 127.0.0.2 opens --max-watches (100) Watch streams and
  as many waiting Lookups on one connection: 16 of each are taken, the
  rest refused RESOURCE_EXHAUSTED naming the per-peer bound;
- an honest Watch from 127.0.0.1 is created, and an honest Lookup with
  wait_ms parks (it ends by its wait, not refused);
- once the raw client is gone its shares come back: ferry_parked_waits and
  ferry_peers_holding return to 0, and the same address may hold its 16
  again.

Loopback answers on all of 127.0.0.0/8, so 127.0.0.2 is another client
host without any setup (skipped where it does not).

Run with /usr/bin/python3 (Debian's grpcio), from CTest (python_peer_shares).
"""
import os
import signal
import socket
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import ferry_harness  # noqa: E402

import grpc  # noqa: E402

MAX = 100
SHARE = max(MAX // 8, 16)  # the default per-peer share: an eighth, at least 16
WATCH = "/ferry.v1.Coordinator/Watch"
LOOKUP = "/ferry.v1.Coordinator/Lookup"
OTHER_HOST = "127.0.0.2"
THIRD_HOST = "127.0.0.3"
FOREVER_MS = 1 << 40
TOKEN = "stored-token-0123456789"
WORKER = os.path.join(ferry_harness.BUILD_DIR, "worker", "ferry-worker")


def loopback_aliases_work():
    try:
        with socket.socket() as s:
            s.bind((OTHER_HOST, 0))
        return True
    except OSError:
        return False


class OneHostTakesItsShare(ferry_harness.ClusterTestCase):
    FLAGS = ("--prefix", "/peers/", "--max-watches", str(MAX), "--max-waits", str(MAX))

    @classmethod
    def setUpClass(cls):
        if not loopback_aliases_work():
            raise unittest.SkipTest(f"cannot bind {OTHER_HOST}")
        super().setUpClass()

    def refusals(self, port, flag):
        with open(self.coord.log_path) as f:
            return sum(1 for line in f if f"{OTHER_HOST}:{port} refused" in line and flag in line)

    def open_floods(self, raw):
        watches = raw.open(WATCH, [self.cpb.WatchRequest(request_id_prefix="never-")] * MAX)
        lookups = raw.open(LOOKUP, [self.cpb.LookupRequest(
            request_id=f"never-{i}", access_token="t" * 16, wait_ms=FOREVER_MS)
            for i in range(MAX)])
        return watches, lookups

    def test_one_host_cannot_keep_another_out_and_its_share_comes_back(self):
        raw = ferry_harness.RawH2(self.coord.port, source=OTHER_HOST)
        honest = None
        try:
            watches, lookups = self.open_floods(raw)
            ferry_harness.wait_until(lambda: raw.ended_count(watches) >= MAX - SHARE, 20,
                                     f"{MAX - SHARE} of the raw client's Watch streams to end")
            ferry_harness.wait_until(lambda: raw.ended_count(lookups) >= MAX - SHARE, 20,
                                     f"{MAX - SHARE} of the raw client's Lookups to end")
            ferry_harness.wait_until(lambda: self.metric("ferry_parked_waits") == SHARE, 10,
                                     f"{SHARE} of them to park")
            self.assertEqual(raw.ended_count(watches), MAX - SHARE)
            self.assertEqual(raw.ended_count(lookups), MAX - SHARE)
            port = raw.local_port()
            self.assertEqual(self.metric("ferry_peer_refusals_total", kind="watch"), MAX - SHARE)
            self.assertEqual(self.metric("ferry_peer_refusals_total", kind="wait"), MAX - SHARE)
            # Logged, but not a line each: a host past its share may ask at
            # any rate (review-s30b L2).
            self.assertGreaterEqual(self.refusals(port, "--max-watches-per-peer"), 1)
            self.assertLess(self.refusals(port, "--max-watches-per-peer"), MAX - SHARE)
            self.assertGreaterEqual(self.refusals(port, "--max-waits-per-peer"), 1)
            self.assertLess(self.refusals(port, "--max-waits-per-peer"), MAX - SHARE)
            self.assertEqual(self.metric("ferry_peers_holding", kind="watch"), 1)
            self.assertEqual(self.metric("ferry_peers_holding", kind="wait"), 1)

            # Another host still gets a Watch, and a Lookup that parks.
            honest = self.stub.Watch(self.cpb.WatchRequest(request_id_prefix="never-"),
                                     timeout=30)
            self.assertTrue(next(honest).created)
            with self.assertRaises(grpc.RpcError) as cm:
                self.stub.Lookup(self.cpb.LookupRequest(
                    request_id="honest", access_token="t" * 16, wait_ms=1000), timeout=10)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED,
                             cm.exception.details())
            self.assertIn("not registered in time", cm.exception.details())
        finally:
            raw.close()
            if honest is not None:
                honest.cancel()

        # Gone: every share comes back, and the table forgets the hosts.
        for name, labels in (("ferry_parked_waits", {}),
                             ("ferry_peers_holding", {"kind": "wait"}),
                             ("ferry_peers_holding", {"kind": "watch"}),
                             ("ferry_rpc_in_flight", {"method": WATCH})):
            ferry_harness.wait_until(lambda: self.metric(name, **labels) == 0, 20,
                                     f"{name}{labels} to return to 0")

        # The same host may hold its whole share again.
        raw = ferry_harness.RawH2(self.coord.port, source=OTHER_HOST)
        try:
            watches = raw.open(WATCH, [self.cpb.WatchRequest(request_id_prefix="never-")] * SHARE)
            ferry_harness.wait_until(
                lambda: self.metric("ferry_peers_holding", kind="watch") == 1, 10,
                "the host's streams to count")
            ferry_harness.wait_until(
                lambda: self.metric("ferry_rpc_in_flight", method=WATCH) == SHARE, 10,
                f"its {SHARE} streams to be open")
            self.assertEqual(raw.ended_count(watches), 0)
        finally:
            raw.close()


class AWaitingWorkerAsksAgain(ferry_harness.ClusterTestCase):
    """libferry's waiting Lookup (a sender's wait for the request ID) asks
    again after RESOURCE_EXHAUSTED within its wait: a worker whose host
    holds its whole share of parked waits writes once the receiver
    registers, rather than failing at its first refusal. A cluster of its
    own: its refusals would take the rate-limited log line that the class
    above counts."""

    FLAGS = ("--prefix", "/peers-retry/", "--max-waits", str(MAX))

    def hold_the_share(self, raw):
        """raw's host (127.0.0.1, as the workers) parks its whole share of
        waits; their stream IDs."""
        lookups = raw.open(LOOKUP, [self.cpb.LookupRequest(
            request_id=f"never-{i}", access_token="t" * 16, wait_ms=FOREVER_MS)
            for i in range(SHARE)])
        ferry_harness.wait_until(lambda: self.metric("ferry_parked_waits") == SHARE, 10,
                                 f"the raw client's {SHARE} Lookups to park")
        self.assertEqual(raw.ended_count(lookups), 0)
        return lookups

    def test_a_sender_refused_its_share_writes_once_the_receiver_registers(self):
        raw = ferry_harness.RawH2(self.coord.port)
        sender = receiver = None
        try:
            lookups = self.hold_the_share(raw)
            before = self.metric("ferry_peer_refusals_total", kind="wait")
            args = ("--coordinator", self.coord.target, "--request-id", "late",
                    "--size", "65536", "--token", "late-token-0123456789", "--timeout", "60",
                    "--quiet")
            sender = subprocess.Popen([WORKER, "send", *args], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
            # Refused, and asked again: a second refusal is the retry.
            ferry_harness.wait_until(
                lambda: self.metric("ferry_peer_refusals_total", kind="wait") >= before + 2
                or sender.poll() is not None, 20, "the sender's wait to be refused twice")
            if sender.poll() is not None:
                self.fail("the sender gave up at a refusal: " + sender.communicate()[1])
            receiver = subprocess.Popen([WORKER, "recv", *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
            _, err = sender.communicate(timeout=60)
            self.assertEqual(sender.returncode, 0, err)
            _, err = receiver.communicate(timeout=60)
            self.assertEqual(receiver.returncode, 0, err)  # every byte checked
            self.assertEqual(raw.ended_count(lookups), 0)  # the share stayed held throughout
        finally:
            raw.close()
            for p in (sender, receiver):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.communicate()
        ferry_harness.wait_until(lambda: self.metric("ferry_parked_waits") == 0, 20,
                                 "the raw client's waits to end")

    def test_a_sender_refused_to_the_end_says_so(self):
        """Refused for all of its wait, the sender ends with the refusal,
        not NOT_FOUND or TIMED_OUT: no look follows a pause that reaches
        the end of the wait (review-s32b M1: one sent with wait_ms 0 was
        answered NOT_FOUND). A --timeout of 3 s, not 1: on a loaded machine
        the first look's answer came after a second, and the wait ended
        TIMED_OUT before any refusal."""
        raw = ferry_harness.RawH2(self.coord.port)
        try:
            lookups = self.hold_the_share(raw)
            for rid in ("nobody-1", "nobody-2", "nobody-3"):
                sender = subprocess.run(
                    [WORKER, "send", "--coordinator", self.coord.target, "--request-id", rid,
                     "--size", "4096", "--token", "late-token-0123456789", "--timeout", "3",
                     "--quiet"], capture_output=True, text=True, timeout=60)
                self.assertIn("FERRY_ERR_RESOURCE_EXHAUSTED", sender.stderr)
                self.assertNotIn("NOT_FOUND", sender.stderr)
                self.assertEqual(sender.returncode, 1, sender.stderr)
            self.assertEqual(raw.ended_count(lookups), 0)
        finally:
            raw.close()
        ferry_harness.wait_until(lambda: self.metric("ferry_parked_waits") == 0, 20,
                                 "the raw client's waits to end")


READ_SHARE = 4
READ_ROOM = 16  # --etcd-inflight 2 + --etcd-queue 14
# A host past its share is refused only while the reads fill half the room:
# alone, it gets that half.
READ_TAKEN = max(READ_SHARE, READ_ROOM // 2)
READ_FLOOD = 50


class FrozenEtcdCluster(ferry_harness.ClusterTestCase):
    """A cluster whose tests freeze its etcd and play another client host
    (OTHER_HOST, a loopback alias): skipped where the alias cannot be
    bound; etcd is thawed at the end should a test have left it frozen."""

    @classmethod
    def setUpClass(cls):
        if not loopback_aliases_work():
            raise unittest.SkipTest(f"cannot bind {OTHER_HOST}")
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        cls.etcd.proc.send_signal(signal.SIGCONT)
        super().tearDownClass()


class OneHostTakesItsShareOfEtcdReads(FrozenEtcdCluster):
    """A Lookup of an unknown ID is an etcd read (the view does not hold
    it, and it may have been acknowledged elsewhere), and needs no valid
    token; with the read workers and their queue (--etcd-inflight,
    --etcd-queue) shared by all clients, a burst of them from one client
    refused every List and linearizable read of the others
    RESOURCE_EXHAUSTED (audit-s30-grpc F4). Now one host may hold
    --etcd-reads-per-peer of them. etcd is frozen while the flood lands, so
    that the reads stay where they are until the honest one is in."""

    # Two read workers and 14 queued: 16 reads (READ_ROOM), which one host
    # could fill without its share.
    FLAGS = ("--prefix", "/peers-reads/", "--etcd-inflight", "2", "--etcd-queue", "14",
             "--etcd-reads-per-peer", str(READ_SHARE))

    def test_a_flood_of_misses_leaves_room_for_another_host(self):
        raw = ferry_harness.RawH2(self.coord.port, source=OTHER_HOST)
        listed = None
        try:
            ferry_harness.freeze(self.etcd.proc)
            lookups = raw.open(LOOKUP, [self.cpb.LookupRequest(
                request_id=f"unknown-{i}", access_token="t" * 16) for i in range(READ_FLOOD)])
            ferry_harness.wait_until(
                lambda: raw.ended_count(lookups) >= READ_FLOOD - READ_TAKEN, 20,
                f"{READ_FLOOD - READ_TAKEN} of the raw client's Lookups to be refused")
            # Exactly that many refused; those taken may end too, should the
            # etcd client's own timeout pass while etcd is frozen.
            self.assertEqual(self.metric("ferry_peer_refusals_total", kind="read"),
                             READ_FLOOD - READ_TAKEN)
            self.assertGreaterEqual(raw.ended_count(lookups), READ_FLOOD - READ_TAKEN)
            self.assertEqual(self.metric("ferry_peers_holding", kind="read"), 1)
            # What the host holds: the taken ones, unless the etcd client's
            # own timeout ended some of them.
            self.assertLessEqual(self.metric("ferry_etcd_reads_held"), READ_TAKEN)
            self.assertGreaterEqual(self.metric("ferry_etcd_reads_held"),
                                    READ_TAKEN - (raw.ended_count(lookups)
                                                  - (READ_FLOOD - READ_TAKEN)))

            # Another host's List gets in, and is answered once etcd is.
            listed = self.stub.List.future(self.cpb.ListRequest(page_size=10), timeout=30)
            ferry_harness.wait_until(
                lambda: listed.done() or self.metric("ferry_peers_holding", kind="read") == 2, 10,
                "the List to be queued for etcd")
            if listed.done():
                self.fail(f"the List ended before etcd could answer: {listed.exception()}")
        finally:
            self.etcd.proc.send_signal(signal.SIGCONT)
            raw.close()
        self.assertEqual(list(listed.result().operations), [])
        ferry_harness.wait_until(lambda: self.metric("ferry_peers_holding", kind="read") == 0, 20,
                                 "every read to give its share back")
        self.assertEqual(self.metric("ferry_etcd_reads_held"), 0)


WRITE_SHARE = 4
WRITE_ROOM = 16  # --etcd-inflight 2 + --etcd-queue 14
WRITE_TAKEN = max(WRITE_SHARE, WRITE_ROOM // 2)  # as READ_TAKEN
WRITE_FLOOD = 50
CANCEL = "/ferry.v1.Coordinator/Cancel"
KEEPALIVE = "/ferry.v1.Coordinator/KeepAlive"


def metadata(pb):
    return pb.RdmaMetadata(
        version=1, kind=pb.OPERATION_KIND_WRITE, worker_address=b"\x01" * 64,
        descriptors=[pb.Descriptor(address=0x10000, size=4096,
                                   device=pb.Device(kind=pb.DEVICE_KIND_HOST), rkey=b"k" * 32)],
        notification_key=os.urandom(16), worker_name="peers", hostname="localhost")


class OneHostTakesItsShareOfEtcdWrites(FrozenEtcdCluster):
    """A Cancel (or Release, or Claim) of an unknown ID is an etcd read on a
    write worker, and needs no valid token; with the write workers and
    their queue shared by all clients, a burst of them from one client
    while etcd was slow refused every other client's Register
    RESOURCE_EXHAUSTED (audit-s33 M1). Now one host may hold
    --etcd-writes-per-peer of them, by the reads' rule, and as many
    KeepAlives: another host's Register and KeepAlive queue, and are
    answered once etcd is."""

    FLAGS = ("--prefix", "/peers-writes/", "--etcd-inflight", "2", "--etcd-queue", "14",
             "--etcd-writes-per-peer", str(WRITE_SHARE))

    def register(self, rid, **kw):
        return self.stub.Register.future(self.cpb.RegisterRequest(
            request_id=rid, metadata=metadata(self.pb), access_token="w" * 16, owner="peers",
            **kw), timeout=30)

    def test_a_flood_of_unknown_cancels_leaves_room_for_another_host(self):
        first = self.register("writes-first").result()  # a lease to keep alive
        raw = ferry_harness.RawH2(self.coord.port, source=OTHER_HOST)
        registered = renewed = None
        try:
            ferry_harness.freeze(self.etcd.proc)
            cancels = raw.open(CANCEL, [self.cpb.CancelRequest(
                request_id=f"unknown-{i}", access_token="a" * 16) for i in range(WRITE_FLOOD)])
            ferry_harness.wait_until(
                lambda: raw.ended_count(cancels) >= WRITE_FLOOD - WRITE_TAKEN, 20,
                f"{WRITE_FLOOD - WRITE_TAKEN} of the raw client's Cancels to be refused")
            self.assertEqual(self.metric("ferry_peer_refusals_total", kind="write"),
                             WRITE_FLOOD - WRITE_TAKEN)
            self.assertEqual(self.metric("ferry_peers_holding", kind="write"), 1)

            # Another host's Register and KeepAlive get in, and are answered
            # once etcd is.
            registered = self.register("writes-second", lease_id=first.lease_id,
                                       lease_token=first.lease_token)
            renewed = self.stub.KeepAlive.future(self.cpb.KeepAliveRequest(
                lease_id=first.lease_id, lease_token=first.lease_token), timeout=30)
            ferry_harness.wait_until(
                lambda: registered.done()
                or self.metric("ferry_peers_holding", kind="write") == 2, 10,
                "the Register to be queued for etcd")
            ferry_harness.wait_until(
                lambda: renewed.done() or self.metric("ferry_rpc_in_flight",
                                                      method="/ferry.v1.Coordinator/KeepAlive"),
                10, "the KeepAlive to be queued for etcd")
            for call in (registered, renewed):
                if call.done():
                    self.fail(f"ended before etcd could answer: {call.exception()}")
            self.assertEqual(self.metric("ferry_peer_refusals_total", kind="write"),
                             WRITE_FLOOD - WRITE_TAKEN)
        finally:
            self.etcd.proc.send_signal(signal.SIGCONT)
            raw.close()
        self.assertEqual(registered.result().lease_id, first.lease_id)
        self.assertGreater(renewed.result().ttl_seconds, 0)
        ferry_harness.wait_until(lambda: self.metric("ferry_peers_holding", kind="write") == 0,
                                 20, "every write to give its share back")

    def test_a_flood_of_renewals_takes_its_own_share(self):
        """A host renewing its lease from many streams while etcd is slow
        holds --etcd-writes-per-peer renewals (their lane's rule, counted
        as kind="renewal", apart from the writes), and another host's
        KeepAlive still queues (review-s33b L4)."""
        flood_renewals(self, WRITE_TAKEN)


def flood_renewals(case, taken):
    """The raw host's flood of KeepAlives while etcd is frozen: `taken` of
    them queue, the rest are refused as kind="renewal" (no write refused),
    and another host's KeepAlive still queues and is answered once etcd
    is."""
    first = case.register("renewals-first").result()
    raw = ferry_harness.RawH2(case.coord.port, source=OTHER_HOST)
    renewed = None
    writes_refused = case.metric("ferry_peer_refusals_total", kind="write")
    try:
        ferry_harness.freeze(case.etcd.proc)
        renewals = raw.open(KEEPALIVE, [case.cpb.KeepAliveRequest(
            lease_id=first.lease_id, lease_token=first.lease_token)] * WRITE_FLOOD)
        ferry_harness.wait_until(
            lambda: raw.ended_count(renewals) >= WRITE_FLOOD - taken, 20,
            f"{WRITE_FLOOD - taken} of the raw client's KeepAlives to be refused")
        case.assertEqual(case.metric("ferry_peer_refusals_total", kind="renewal"),
                         WRITE_FLOOD - taken)
        case.assertEqual(case.metric("ferry_peer_refusals_total", kind="write"), writes_refused)
        case.assertEqual(case.metric("ferry_peers_holding", kind="renewal"), 1)
        renewed = case.stub.KeepAlive.future(case.cpb.KeepAliveRequest(
            lease_id=first.lease_id, lease_token=first.lease_token), timeout=30)
        ferry_harness.wait_until(
            lambda: renewed.done()
            or case.metric("ferry_peers_holding", kind="renewal") == 2, 10,
            "the other host's KeepAlive to be queued for etcd")
        if renewed.done():
            case.fail(f"ended before etcd could answer: {renewed.exception()}")
    finally:
        case.etcd.proc.send_signal(signal.SIGCONT)
        raw.close()
    case.assertGreater(renewed.result().ttl_seconds, 0)
    ferry_harness.wait_until(
        lambda: case.metric("ferry_peers_holding", kind="renewal") == 0, 20,
        "every renewal to give its share back")


class RenewalsShareTheirOwnLaneWithoutAQueue(FrozenEtcdCluster):
    """At --etcd-queue 0 the renewals' lane still has room for n_workers
    (exec.c, lane_room), so its capacity is --etcd-inflight 2 + 2 and a
    host's share binds at half of that, 2; the writes' capacity is 2 + 0,
    whose half would let the host hold only 1 (the share counted against
    the writes' room: review-s33c L4, which the test at --etcd-queue 14,
    where both lanes have the same room, could not tell apart)."""

    FLAGS = ("--prefix", "/peers-renew0/", "--etcd-inflight", "2", "--etcd-queue", "0",
             "--etcd-writes-per-peer", "1")

    register = OneHostTakesItsShareOfEtcdWrites.register

    def test_a_flood_of_renewals_takes_half_its_own_lane(self):
        flood_renewals(self, 2)


class OneHostOwnsItsShareOfEtcd(ferry_harness.ClusterTestCase):
    """What one client host's Registers store in etcd is bounded
    (--stored-mib-per-peer; audit-s33 H3): before, a thousand Registers of
    1 MiB from one unauthenticated host filled the manifests' 1 GiB etcd
    quota, and etcd then refused every write of every client (NOSPACE).
    Each record carries the host its Register came from (owner_host), so
    every replica counts the records of every replica: a second replica
    over the same etcd refuses the host too. A host's records that go
    (cancelled and released) give their room back; other hosts register
    all along; no answer shows the owner's address."""

    SHARE_MIB = 1
    FLAGS = ("--prefix", "/stored/", "--stored-mib-per-peer", str(SHARE_MIB))
    DESCRIPTORS = 70  # 4,000-byte keys each: a record of about 285 KB, so three fit in 1 MiB

    @classmethod
    def setUpClass(cls):
        if not loopback_aliases_work():
            raise unittest.SkipTest(f"cannot bind {OTHER_HOST}")
        super().setUpClass()
        from ferry.v1 import coordinator_pb2_grpc
        cls.stubs, cls.closers = {}, []
        try:
            cls.second = ferry_harness.Coordinator(
                cls.cluster.tmp, cls.etcd.endpoint, name="c2", ttl=cls.TTL,
                extra=(*cls.FLAGS, "--metrics-listen", "127.0.0.1:0"))
            cls.second.start()
            cls.closers.append(cls.second.stop)
            cls.second_metrics = cls.second.metrics_port()
            for name, coord, source in (("first", cls.coord, OTHER_HOST),
                                        ("second", cls.second, OTHER_HOST),
                                        ("third host", cls.coord, THIRD_HOST)):
                proxy = ferry_harness.SourceProxy(coord.target, source)
                cls.closers.append(proxy.close)
                channel = grpc.insecure_channel(proxy.target)
                cls.closers.append(channel.close)
                cls.stubs[name] = coordinator_pb2_grpc.CoordinatorStub(channel)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for close in reversed(getattr(cls, "closers", [])):
            close()
        super().tearDownClass()

    def request(self, rid):
        pb = self.pb
        md = pb.RdmaMetadata(
            version=1, kind=pb.OPERATION_KIND_WRITE, worker_address=b"\x01" * 64,
            descriptors=[pb.Descriptor(address=0x10000 + i * 4096, size=4096,
                                       device=pb.Device(kind=pb.DEVICE_KIND_HOST),
                                       rkey=bytes([i % 251 + 1]) * 4000)
                         for i in range(self.DESCRIPTORS)],
            notification_key=os.urandom(16), worker_name="stored", hostname="localhost")
        return self.cpb.RegisterRequest(request_id=rid, metadata=md, access_token=TOKEN,
                                        owner="stored")

    def refused(self, stub, rid, host=OTHER_HOST):
        with self.assertRaises(grpc.RpcError) as cm:
            stub.Register(self.request(rid), timeout=30)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED,
                         cm.exception.details())
        self.assertIn(host, cm.exception.details())
        self.assertIn("--stored-mib-per-peer", cm.exception.details())
        with self.assertRaises(grpc.RpcError) as cm:
            self.stub.Get(self.cpb.GetRequest(request_id=rid, linearizable=True), timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND, "nothing was written")

    def view_holds(self, port, n):
        ferry_harness.wait_until(
            lambda: ferry_harness.metric(port, "ferry_view_operations") == n, 20,
            f"the view behind metrics port {port} to hold {n} records")

    def test_registers_in_flight_together_count(self):
        """Eight Registers from one host at once, where three records fit:
        those in flight count as the records they will be, so exactly
        three are written, whatever their order."""
        stub = self.stubs["third host"]
        before = self.metric("ferry_view_operations")
        futures = [stub.Register.future(self.request(f"c-{i}"), timeout=30) for i in range(8)]
        codes = []
        for f in futures:
            try:
                f.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                self.assertIn("--stored-mib-per-peer", e.details())
                codes.append(e.code())
        self.assertEqual(codes.count(grpc.StatusCode.OK), 3, codes)
        self.assertEqual(codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED), 5, codes)
        self.view_holds(self.metrics_port, before + 3)
        listed = self.stub.List(self.cpb.ListRequest(request_id_prefix="c-"), timeout=10)
        self.assertEqual(len(listed.operations), 3)

    def test_a_host_past_its_share_is_refused_on_every_replica(self):
        first, second = self.stubs["first"], self.stubs["second"]
        refusals = [ferry_harness.metric(port, "ferry_peer_refusals_total", kind="stored")
                    for port in (self.metrics_port, self.second_metrics)]
        for i in range(3):
            first.Register(self.request(f"a-{i}"), timeout=30)
        self.refused(first, "a-3")
        # Another host is not held back by the first one's records.
        self.stub.Register(self.request("b-0"), timeout=30)
        self.stub.Register(self.request("b-1"), timeout=30)
        self.assertEqual(self.metric("ferry_peer_refusals_total", kind="stored"),
                         refusals[0] + 1)
        # This host and 127.0.0.1, and the third host where its test ran first.
        self.assertIn(self.metric("ferry_peers_holding", kind="stored"), (2, 3))

        # The second replica counts the records the first one wrote.
        self.view_holds(self.second_metrics, self.metric("ferry_view_operations"))
        self.refused(second, "a-3")
        self.assertEqual(ferry_harness.metric(
            self.second_metrics, "ferry_peer_refusals_total", kind="stored"), refusals[1] + 1)

        # The owner's address is kept for the share, not shown.
        got = self.stub.Get(self.cpb.GetRequest(request_id="a-0", linearizable=True), timeout=10)
        self.assertEqual(got.operation.owner, "stored")
        self.assertEqual(got.operation.owner_host, "")
        listed = self.stub.List(self.cpb.ListRequest(request_id_prefix="a-"), timeout=10)
        self.assertEqual(len(listed.operations), 3)
        self.assertEqual({op.owner_host for op in listed.operations}, {""})

        # A record that goes gives its room back, on every replica.
        first.Cancel(self.cpb.CancelRequest(request_id="a-0", access_token=TOKEN), timeout=30)
        first.Release(self.cpb.ReleaseRequest(request_id="a-0", access_token=TOKEN), timeout=30)
        held = self.metric("ferry_view_operations")
        self.view_holds(self.second_metrics, held)
        second.Register(self.request("a-3"), timeout=30)
        self.view_holds(self.metrics_port, held + 1)
        self.refused(first, "a-4")


if __name__ == "__main__":
    unittest.main(verbosity=2)
