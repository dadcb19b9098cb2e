"""Keys at their longest: a coordinator over the longest --prefix (256
bytes) with request IDs of the longest length (128 bytes). Each record is
stored under exactly <prefix>ops/<id> (no cut key, no stray bytes), can be
claimed, cancelled and released (which finds the record by that key), and
List pages through them with the longest request_id_prefix and page tokens.
Before issue 9 the key was built into 512-byte stack buffers with
snprintf's untruncated length: a prefix that did not leave room made keys
whose tail was stack bytes, and List copied past its buffer.

Requests at their largest: a compressed request is refused at its headers
(gRPC would inflate it whole first); metadata just over its 1 MiB bound is refused
INVALID_ARGUMENT naming the field; a request over 2 MiB (the coordinator's
receive bound: a Register's metadata is at most 1 MiB) is refused by gRPC
RESOURCE_EXHAUSTED before anything decodes it; a Register with metadata of
just under 1 MiB is stored and looked up whole. Every other method accepts
16 KiB (service.c, SERVICE_REQUEST_MAX): a Lookup with wait_ms padded to
just under 2 MiB by an unknown field, and a Watch so padded, end
RESOURCE_EXHAUSTED naming the method and the bound instead of being held
(before, such a Lookup parked and held 4.4 MiB for its whole wait).

What calls in progress hold together is bounded as well
(--request-memory-mib): parked Lookups fill it, and one past it is refused
RESOURCE_EXHAUSTED saying so.

A burst of large Registers gives its memory back: once the records are
gone, the coordinator's resident memory returns near where it started
(glibc kept what its threads' arenas freed, 600-750 MB after 320 Registers
of 1 MiB, until the process ended).

Also: a port file that cannot be written (here: a directory in the way of
its rename) stops the coordinator with exit 1 and a message, rather than
leaving whoever waits on the file waiting while it serves.
"""
import base64
import json
import os
import sys
import tempfile
import shutil
import socket
import struct
import subprocess
import threading
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import ferry_harness  # noqa: E402

import grpc  # noqa: E402

PREFIX = "/" + "p" * 254 + "/"
TOKEN = "limits-token-0123456789"
TMP = ETCD = COORD = None


def setUpModule():
    # Module cleanups run even when setUpModule fails (tearDownModule does
    # not): etcd is stopped and TMP removed either way.
    global TMP, ETCD, COORD
    TMP = tempfile.mkdtemp(prefix="ferry-limits-")
    unittest.addModuleCleanup(shutil.rmtree, TMP, ignore_errors=True)
    ferry_harness.generate_stubs(os.path.join(TMP, "gen"))
    ETCD = ferry_harness.Etcd(TMP)
    unittest.addModuleCleanup(ETCD.stop)
    ETCD.start()
    COORD = ferry_harness.Coordinator(TMP, ETCD.endpoint, extra=("--prefix", PREFIX))
    COORD.start()


def tearDownModule():
    rc = COORD.stop()
    if rc != 0:
        raise AssertionError(f"coordinator exited with {rc} after SIGTERM")


def varint(n):
    """n as a protobuf base-128 varint."""
    out = b""
    while n >= 0x80:
        out += bytes([n & 0x7f | 0x80])
        n >>= 7
    return out + bytes([n])


def etcd_keys(prefix):
    """Every key under prefix, read from etcd's JSON gateway."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    body = json.dumps({"key": base64.b64encode(prefix.encode()).decode(),
                       "range_end": base64.b64encode(end.encode()).decode(),
                       "keys_only": True}).encode()
    req = urllib.request.Request(ETCD.endpoint + "/v3/kv/range", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        kvs = json.load(r).get("kvs", [])
    return sorted(base64.b64decode(kv["key"]) for kv in kvs)


class LongestKeys(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        from ferry.v1 import coordinator_pb2, coordinator_pb2_grpc, types_pb2
        cls.pb, cls.cpb = types_pb2, coordinator_pb2
        cls.channel = grpc.insecure_channel(COORD.target)
        cls.stub = coordinator_pb2_grpc.CoordinatorStub(cls.channel)

    def register(self, rid):
        md = self.pb.RdmaMetadata(
            version=1, kind=self.pb.OPERATION_KIND_WRITE, worker_address=b"\x01" * 64,
            descriptors=[self.pb.Descriptor(address=0x10000, size=4096,
                                            device=self.pb.Device(kind=self.pb.DEVICE_KIND_HOST),
                                            rkey=b"k" * 32)],
            notification_key=os.urandom(16), worker_name="limits", hostname="localhost")
        return self.stub.Register(self.cpb.RegisterRequest(
            request_id=rid, metadata=md, access_token=TOKEN, owner="limits"), timeout=10)

    def test_longest_id_registers_claims_cancels_releases(self):
        rid = "a" * 127 + "z"
        self.assertEqual(len(rid), 128)
        self.register(rid)
        self.assertIn((PREFIX + "ops/" + rid).encode(), etcd_keys(PREFIX + "ops/a"))
        self.stub.Claim(self.cpb.ClaimRequest(request_id=rid, access_token=TOKEN,
                                              claimant="limits"), timeout=10)
        self.assertIn((PREFIX + "claims/" + rid).encode(), etcd_keys(PREFIX + "claims/"))
        r = self.stub.Cancel(self.cpb.CancelRequest(request_id=rid, access_token=TOKEN,
                                                    reason="limits"), timeout=10)
        self.assertEqual(r.operation.state, self.pb.OPERATION_STATE_CANCELLED)
        self.assertNotIn((PREFIX + "claims/" + rid).encode(), etcd_keys(PREFIX + "claims/"))
        self.stub.Release(self.cpb.ReleaseRequest(request_id=rid, access_token=TOKEN), timeout=10)
        self.assertEqual(etcd_keys(PREFIX + "ops/a"), [])
        with self.assertRaises(grpc.RpcError) as e:
            self.stub.Get(self.cpb.GetRequest(request_id=rid), timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_list_pages_with_longest_prefix_and_tokens(self):
        ids = ["b" * 127 + c for c in "123"]
        for rid in ids:
            self.register(rid)
        self.assertEqual(etcd_keys(PREFIX + "ops/b"), [(PREFIX + "ops/" + i).encode() for i in ids])
        for scope in ("b" * 127, ids[1]):
            seen, token = [], ""
            for _ in range(len(ids) + 1):
                r = self.stub.List(self.cpb.ListRequest(request_id_prefix=scope, page_size=1,
                                                        page_token=token), timeout=10)
                seen += [op.request_id for op in r.operations]
                token = r.next_page_token
                if not token:
                    break
            with self.subTest(scope=len(scope)):
                self.assertEqual(seen, [i for i in ids if i.startswith(scope)])

    def test_too_long_id_is_invalid_argument(self):
        with self.assertRaises(grpc.RpcError) as e:
            self.register("c" * 129)
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("request_id", e.exception.details())
        with self.assertRaises(grpc.RpcError) as e:
            self.stub.List(self.cpb.ListRequest(request_id_prefix="c" * 129), timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)


def status_kib(pid, field):
    """A /proc/PID/status figure in KiB (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def large_metadata(pb, name):
    """Metadata of about 1 MiB (1,024 descriptors with 900-byte keys)."""
    return pb.RdmaMetadata(
        version=1, kind=pb.OPERATION_KIND_WRITE, worker_address=b"\x01" * 64,
        descriptors=[pb.Descriptor(address=0x10000 + i * 4096, size=4096,
                                   device=pb.Device(kind=pb.DEVICE_KIND_HOST),
                                   rkey=os.urandom(900)) for i in range(1024)],
        notification_key=os.urandom(16), worker_name=name, hostname="localhost")


def revoke(lease_id):
    """Ends a lease in etcd (its records go with it)."""
    req = json.dumps({"ID": str(lease_id)}).encode()
    with urllib.request.urlopen(urllib.request.Request(
            ETCD.endpoint + "/v3/lease/revoke", data=req, method="POST"), timeout=30):
        pass


class MemoryAfterABurst(unittest.TestCase):
    BURST = 192  # Registers in flight at once, of ~1 MiB each

    @unittest.skipIf(os.environ.get("FERRY_SANITIZED"),
                     "a sanitizer build: ASan's allocator, not glibc's, holds freed memory")
    def test_a_burst_of_large_registers_gives_its_memory_back(self):
        from ferry.v1 import coordinator_pb2, coordinator_pb2_grpc, types_pb2
        pb, cpb = types_pb2, coordinator_pb2
        # One host sends the whole burst, past its share of etcd: no share.
        coord = ferry_harness.Coordinator(TMP, ETCD.endpoint, name="mem",
                                          extra=("--prefix", "/mem/",
                                                 "--stored-mib-per-peer", "0"))
        coord.start()
        self.addCleanup(coord.stop)
        pid = coord.proc.pid
        baseline = status_kib(pid, "VmRSS")
        md = large_metadata(pb, "mem")
        with grpc.insecure_channel(coord.target) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            # Each on a lease of its own, granted before its transaction:
            # 10 s, so that a transaction queued behind the burst on a
            # loaded machine still finds it (2 s did not, under ctest -j2).
            futures = [stub.Register.future(cpb.RegisterRequest(
                request_id=f"mem-{i}", metadata=md, access_token=TOKEN, owner="mem",
                ttl_seconds=10), timeout=120) for i in range(self.BURST)]
            for f in futures:
                f.result()
        peak = status_kib(pid, "VmHWM")
        self.assertGreater(peak - baseline, 150 << 10, "the burst did not take memory")
        # The records go with their leases (no KeepAlive), then the memory.
        ferry_harness.wait_until(lambda: not etcd_keys("/mem/ops/"), 60, "the records to go")
        ferry_harness.wait_until(lambda: status_kib(pid, "VmRSS") < baseline + (64 << 10), 60,
                                 f"RSS back near its {baseline} KiB at start (peak {peak} KiB)")


    @unittest.skipIf(os.environ.get("FERRY_SANITIZED"),
                     "a sanitizer build: ASan's allocator, not glibc's, holds freed memory")
    def test_records_freed_after_a_trim_give_their_memory_back(self):
        """The records outlive a trim (the burst's transient buffers are
        given back while the records are held), then go with their lease:
        their memory comes back too (it stayed at the peak when only growth
        of the resident size since the last trim called for another)."""
        from ferry.v1 import coordinator_pb2, coordinator_pb2_grpc, types_pb2
        pb, cpb = types_pb2, coordinator_pb2
        # One host sends the whole burst, past its share of etcd: no share.
        coord = ferry_harness.Coordinator(TMP, ETCD.endpoint, name="mem2",
                                          extra=("--prefix", "/mem2/",
                                                 "--stored-mib-per-peer", "0"))
        coord.start()
        self.addCleanup(coord.stop)
        pid = coord.proc.pid
        baseline = status_kib(pid, "VmRSS")
        md = large_metadata(pb, "mem2")
        with grpc.insecure_channel(coord.target) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            first = stub.Register(cpb.RegisterRequest(
                request_id="mem2-0", metadata=md, access_token=TOKEN, owner="mem2",
                ttl_seconds=120), timeout=60)
            lease = dict(lease_id=first.lease_id, lease_token=first.lease_token)
            futures = [stub.Register.future(cpb.RegisterRequest(
                request_id=f"mem2-{i}", metadata=md, access_token=TOKEN, owner="mem2",
                **lease), timeout=120) for i in range(1, self.BURST)]
            for f in futures:
                f.result()
        ferry_harness.wait_until(lambda: coord.log_contains("of free heap pages"), 60,
                                 "a trim while the records are held")
        revoke(first.lease_id)
        ferry_harness.wait_until(lambda: not etcd_keys("/mem2/ops/"), 60, "the records to go")
        ferry_harness.wait_until(lambda: status_kib(pid, "VmRSS") < baseline + (64 << 10), 60,
                                 f"RSS back near its {baseline} KiB at start")


class LargeStore(unittest.TestCase):
    """80 records of ~1 MiB on one worker's lease: 76 MB, past the most
    the coordinator takes in one reply from etcd (ETCD_REPLY_MAX, 64 MiB).
    A replica started beside them loads its view all the same: a page of
    the load that passes the bound is read again in halves (a replica used
    to fail its load for good, "reload failed ... trying again"). When the
    lease ends, etcd deletes the 80 records at one revision, each with its
    value in the watch: the replicas' watches take it in fragments and go
    on (they failed on it and resumed at the same revision for good, so a
    Lookup waiting for a record registered after it never heard of it). A
    client's Watch still gets that revision whole: its 80 deletes in
    messages all marked `fragment` but the last, although etcd gave them to
    the replica in several pieces."""
    N = 80

    @unittest.skipIf(os.environ.get("FERRY_SANITIZED"),
                     "a sanitizer build: 76 MB of records copied through ASan is slow")
    def test_a_store_past_the_reply_bound_loads_and_its_lease_ending_is_seen(self):
        from ferry.v1 import coordinator_pb2, coordinator_pb2_grpc, types_pb2
        pb, cpb = types_pb2, coordinator_pb2
        a = ferry_harness.Coordinator(TMP, ETCD.endpoint, name="big-a", ttl=60,
                                      extra=("--prefix", "/big/"))
        a.start()
        self.addCleanup(a.stop)
        md = large_metadata(pb, "big")
        with grpc.insecure_channel(a.target) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            first = stub.Register(cpb.RegisterRequest(
                request_id="big-00", metadata=md, access_token=TOKEN, owner="big"), timeout=60)
            lease = dict(lease_id=first.lease_id, lease_token=first.lease_token)
            futures = [stub.Register.future(cpb.RegisterRequest(
                request_id=f"big-{i:02d}", metadata=md, access_token=TOKEN, owner="big",
                **lease), timeout=120) for i in range(1, self.N)]
            for f in futures:
                f.result()
        self.assertEqual(len(etcd_keys("/big/ops/")), self.N)

        b = ferry_harness.Coordinator(TMP, ETCD.endpoint, name="big-b", ttl=60,
                                      extra=("--prefix", "/big/", "--etcd-load-page", "5000"))
        b.start()
        self.addCleanup(b.stop)
        ferry_harness.wait_until(lambda: b.log_contains(f"loaded {self.N} operations"), 120,
                                 "the second replica to load the 80 records")
        self.assertTrue(b.log_contains("keys at a time"))

        with grpc.insecure_channel(a.target) as ca, grpc.insecure_channel(b.target) as cb:
            sa = coordinator_pb2_grpc.CoordinatorStub(ca)
            sb = coordinator_pb2_grpc.CoordinatorStub(cb)
            watch = sb.Watch(cpb.WatchRequest(request_id_prefix="big-"), timeout=120)
            self.assertTrue(next(watch).created)
            # The lease ends with its 80 records (one revision), then a
            # record registered after it, which b waits for.
            revoke(first.lease_id)
            waiting = sb.Lookup.future(cpb.LookupRequest(
                request_id="big-after", access_token=TOKEN, wait_ms=60000), timeout=90)
            sa.Register(cpb.RegisterRequest(request_id="big-after", metadata=md,
                                            access_token=TOKEN, owner="big", ttl_seconds=60),
                        timeout=60)
            self.assertEqual(waiting.result().operation.request_id, "big-after")
            msgs = []
            for m in watch:
                msgs.append(m)
                if not m.fragment:
                    break
            watch.cancel()
            self.assertEqual(len({m.header.revision for m in msgs}), 1)
            deleted = sorted(e.operation.request_id for m in msgs for e in m.events)
            self.assertEqual(deleted, [f"big-{i:02d}" for i in range(self.N)])
            for stub in (sa, sb):
                with self.assertRaises(grpc.RpcError) as e:
                    stub.Lookup(cpb.LookupRequest(request_id="big-05", access_token=TOKEN),
                                timeout=30)
                self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
        for c in (a, b):
            with open(c.log_path) as f:
                failed = [line for line in f if "watch" in line and (
                    "larger than max" in line or "ETCD_REPLY_MAX" in line)]
            self.assertEqual(failed, [], f"{c.log_path}: a watch message over the bound")


class LargestRequests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        from ferry.v1 import coordinator_pb2, coordinator_pb2_grpc, types_pb2
        cls.pb, cls.cpb = types_pb2, coordinator_pb2
        cls.channel = grpc.insecure_channel(COORD.target)
        cls.stub = coordinator_pb2_grpc.CoordinatorStub(cls.channel)

    def metadata(self, n_descriptors):
        pb = self.pb
        return pb.RdmaMetadata(
            version=1, kind=pb.OPERATION_KIND_WRITE, worker_address=b"\x01" * 64,
            descriptors=[pb.Descriptor(address=0x10000 + i * 4096, size=4096,
                                       device=pb.Device(kind=pb.DEVICE_KIND_HOST),
                                       rkey=bytes([i % 251 + 1]) * 4000)
                         for i in range(n_descriptors)],
            notification_key=os.urandom(16), worker_name="limits", hostname="localhost")

    def register(self, rid, n_descriptors):
        req = self.cpb.RegisterRequest(request_id=rid, metadata=self.metadata(n_descriptors),
                                       access_token=TOKEN, owner="limits")
        with self.assertRaises(grpc.RpcError) as e:
            self.stub.Register(req, timeout=10)
        return req.ByteSize(), e.exception

    def padded(self, msg, total):
        """msg packed, then field 99 (which no request has: protobuf keeps it
        as an unknown field) filling it to `total` bytes."""
        head = msg.SerializeToString()
        tag = varint(99 << 3 | 2)
        n = total - len(head) - len(tag) - len(varint(total))  # the length takes as many bytes
        out = head + tag + varint(n) + b"u" * n
        self.assertEqual(len(out), total)
        return out

    def test_register_with_1_mib_of_metadata_still_works(self):
        n = 1
        while self.metadata(n + 1).ByteSize() <= 1 << 20:
            n += 1
        md = self.metadata(n)
        self.assertGreater(md.ByteSize(), (1 << 20) - 8192)
        self.stub.Register(self.cpb.RegisterRequest(request_id="x-big-ok", metadata=md,
                                                    access_token=TOKEN, owner="limits"),
                           timeout=30)
        look = self.stub.Lookup(self.cpb.LookupRequest(request_id="x-big-ok", access_token=TOKEN),
                                timeout=30)
        self.assertEqual(look.operation.metadata, md)

    def test_oversized_lookup_that_would_wait_is_refused_not_parked(self):
        total = (2 << 20) - 1024  # under the receive bound: it reaches the coordinator
        body = self.padded(self.cpb.LookupRequest(request_id="never-registered",
                                                  access_token=TOKEN, wait_ms=60000), total)
        lookup = self.channel.unary_unary("/ferry.v1.Coordinator/Lookup",
                                          request_serializer=lambda b: b,
                                          response_deserializer=self.cpb.LookupResponse.FromString)
        with self.assertRaises(grpc.RpcError) as e:
            lookup(body, timeout=10)  # parked, it would end DEADLINE_EXCEEDED
        self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED,
                         e.exception.details())
        self.assertIn("/ferry.v1.Coordinator/Lookup", e.exception.details())
        self.assertIn("(16384 bytes)", e.exception.details())
        self.assertIn(str(total), e.exception.details())
        # A Watch is held as long as it is open: the same bound.
        watch = self.channel.unary_stream("/ferry.v1.Coordinator/Watch",
                                          request_serializer=lambda b: b,
                                          response_deserializer=self.cpb.WatchResponse.FromString)
        stream = watch(self.padded(self.cpb.WatchRequest(request_id="never-registered"), total),
                       timeout=10)
        with self.assertRaises(grpc.RpcError) as e:
            next(stream)
        self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED,
                         e.exception.details())
        self.assertIn("/ferry.v1.Coordinator/Watch", e.exception.details())
        # Unpadded, the same Lookup is answered as ever.
        with self.assertRaises(grpc.RpcError) as e:
            self.stub.Lookup(self.cpb.LookupRequest(request_id="never-registered",
                                                    access_token=TOKEN), timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_metadata_over_its_bound_names_the_field(self):
        size, e = self.register("big-1", 270)  # ~1.05 MiB of metadata
        self.assertGreater(size, 1 << 20)
        self.assertLess(size, 2 << 20)
        self.assertEqual(e.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("metadata", e.details())

    def test_request_over_the_receive_bound_is_refused_whole(self):
        size, e = self.register("big-2", 600)  # ~2.3 MiB
        self.assertGreater(size, 2 << 20)
        self.assertEqual(e.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        # The replica is unharmed: a normal Register still works.
        LongestKeys.register(self, "x-after-big")

    def test_compressed_request_is_refused_at_its_headers(self):
        """Requests must come uncompressed: gRPC core inflates a compressed
        message whole before it checks its size, so 1.5 MB of gzip made a
        replica allocate 1.5 GB before any bound of Ferry's ran. Such a call
        is refused UNIMPLEMENTED when its headers arrive, whatever its size,
        and the same request uncompressed is served."""
        req = self.cpb.GetRequest(request_id="no-such-id")
        with self.assertRaises(grpc.RpcError) as e:
            self.stub.Get(req, timeout=10, compression=grpc.Compression.Gzip)
        self.assertEqual(e.exception.code(), grpc.StatusCode.UNIMPLEMENTED, e.exception.details())
        self.assertIn("gzip", e.exception.details())
        with self.assertRaises(grpc.RpcError) as e:
            self.stub.Get(req, timeout=10)
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)


class RequestsHeldTogether(unittest.TestCase):
    """--request-memory-mib bounds what the calls in progress hold together:
    Lookups of 16,000 bytes parked on an ID fill a replica's 4 MiB, past
    which one is refused RESOURCE_EXHAUSTED saying so (before, only each
    request was bounded), and so is a Register until some of them are
    cancelled; those still parked are answered once the ID is registered,
    and the replica serves on."""

    N = 320  # 4 MiB holds 262 of them

    @classmethod
    def setUpClass(cls):
        from ferry.v1 import coordinator_pb2, types_pb2
        cls.pb, cls.cpb = types_pb2, coordinator_pb2

    def test_parked_lookups_fill_the_bound(self):
        cpb = self.cpb
        coord = ferry_harness.Coordinator(TMP, ETCD.endpoint, name="held",
                                          extra=("--prefix", "/held/",
                                                 "--request-memory-mib", "4",
                                                 "--metrics-listen", "127.0.0.1:0"))
        coord.start()
        try:
            port = coord.metrics_port()
            self.assertEqual(ferry_harness.metric(port, "ferry_limit",
                                                  name="request_memory_bytes"), 4 << 20)
            with grpc.insecure_channel(coord.target) as channel:
                self.fill(channel, cpb)
            # Each refusal counted by the bound it met (the Registers'
            # too); the bytes held given back.
            refused = ferry_harness.metric(port, "ferry_limit_refusals_total",
                                           limit="request_memory_mib")
            self.assertGreaterEqual(refused, self.refused)
            self.assertEqual(ferry_harness.metric(port, "ferry_limit_refusals_total",
                                                  limit="request_size"), 0)
        finally:
            self.assertEqual(coord.stop(), 0)

    def fill(self, channel, cpb):
        lookup = channel.unary_unary("/ferry.v1.Coordinator/Lookup",
                                     request_serializer=lambda b: b,
                                     response_deserializer=cpb.LookupResponse.FromString)
        body = LargestRequests.padded(self, cpb.LookupRequest(
            request_id="held-1", access_token=TOKEN, wait_ms=60000), 16000)
        first_done = threading.Event()
        futures = []
        for _ in range(self.N):
            f = lookup.future(body, timeout=90)
            f.add_done_callback(lambda _f: first_done.set())
            futures.append(f)
        # Nothing is registered yet: a call that ends now was refused.
        self.assertTrue(first_done.wait(60), "no Lookup was refused")
        # Full, the replica refuses a Register too (parked waits count:
        # README). Cancelling 100 of them makes room once they are done.
        for f in futures[:100]:
            f.cancel()
        stub = coordinator_pb2_grpc_stub(channel)
        register = cpb.RegisterRequest(request_id="held-1", access_token=TOKEN,
                                       metadata=LargestRequests.metadata(self, 1), owner="limits")
        deadline = time.monotonic() + 30
        while True:
            try:
                stub.Register(register, timeout=30)
                break
            except grpc.RpcError as e:
                self.assertEqual(e.code(), grpc.StatusCode.RESOURCE_EXHAUSTED, e.details())
                self.assertLess(time.monotonic(), deadline, "the cancelled calls kept their bytes")
            time.sleep(0.02)  # the pause of a poll with a deadline: the replica needs the core
        # The refused calls may be any of them, the first hundred too: the
        # server takes the calls of one channel in no set order, and a call
        # refused before the cancel above is done, not cancelled.
        answered, refused = 0, []
        for f in futures:
            if f.cancelled():
                continue
            e = f.exception(timeout=60)
            if e is None:
                self.assertEqual(f.result().operation.request_id, "held-1")
                answered += 1
            else:
                self.assertEqual(e.code(), grpc.StatusCode.RESOURCE_EXHAUSTED, e.details())
                refused.append(e.details())
        self.assertGreater(len(refused), 0)
        self.assertGreater(answered, 100)
        self.assertIn("bytes of requests in progress", refused[0])
        self.assertIn("bound of 4194304 (--request-memory-mib)", refused[0])
        self.refused = len(refused)
        # Once they are answered, the bytes are free again.
        self.assertEqual(lookup(body, timeout=30).operation.request_id, "held-1")


class RepliesHeldTogether(unittest.TestCase):
    """A read's reply counts, until its call is done, in a bound as large as
    --request-memory-mib of its own: Lookups of a record carrying 600 KiB of metadata, from a
    client whose window never opens (SETTINGS_INITIAL_WINDOW_SIZE 0), hold
    their replies as long as the drain allows (RPC_DRAIN_MS, 10 s); past
    the bound a Lookup's reply (a read: nothing done) is refused
    RESOURCE_EXHAUSTED, naming the flag, and the bytes held stay within it.
    Before, replies counted nowhere: two such connections of 1024 streams
    held 2 GiB (review-s33b H1), and every Lookup here was held. Their
    bound is their own: other calls go on (review-s33c H1)."""

    N = 24  # 4 MiB holds 6 of them

    def test_unread_replies_are_bounded(self):
        from ferry.v1 import coordinator_pb2 as cpb, types_pb2 as pb
        self.pb = pb
        coord = ferry_harness.Coordinator(TMP, ETCD.endpoint, name="replies",
                                          extra=("--prefix", "/replies/",
                                                 "--request-memory-mib", "4",
                                                 "--metrics-listen", "127.0.0.1:0"))
        coord.start()
        raw = None
        try:
            port = coord.metrics_port()
            with grpc.insecure_channel(coord.target) as channel:
                coordinator_pb2_grpc_stub(channel).Register(cpb.RegisterRequest(
                    request_id="replies-1", access_token=TOKEN, owner="limits",
                    metadata=LargestRequests.metadata(self, 150)), timeout=30)
            refused_before = ferry_harness.metric(port, "ferry_limit_refusals_total",
                                                  limit="request_memory_mib")
            raw = ferry_harness.RawH2(coord.port, window=0)
            sids = raw.open("/ferry.v1.Coordinator/Lookup", [cpb.LookupRequest(
                request_id="replies-1", access_token=TOKEN)] * self.N)
            # Refused at once (a status needs no window); the rest wait.
            ferry_harness.wait_until(lambda: raw.ended_count(sids) >= self.N - 7, 8,
                                     "the Lookups past the bound to be refused")
            self.assertLessEqual(ferry_harness.metric(port, "ferry_reply_bytes_held"), 4 << 20)
            self.assertGreater(ferry_harness.metric(port, "ferry_reply_bytes_held"), 0)
            # The replies' bound is theirs: the requests' still has room, so
            # other calls (a Register, as a KeepAlive or a health check) go
            # on (review-s33c H1).
            with grpc.insecure_channel(coord.target) as channel:
                coordinator_pb2_grpc_stub(channel).Register(cpb.RegisterRequest(
                    request_id="replies-2", access_token=TOKEN, owner="limits",
                    metadata=LargestRequests.metadata(self, 150)), timeout=30)
            self.assertGreaterEqual(
                ferry_harness.metric(port, "ferry_limit_refusals_total",
                                     limit="request_memory_mib") - refused_before, self.N - 7)
            with open(coord.log_path) as f:
                self.assertIn("reply of", f.read())
            # The client goes: its calls end, and every byte they held comes
            # back to both counts (none leaked on the way out: review-s33c L4).
            raw.close()
            raw = None
            ferry_harness.wait_until(
                lambda: ferry_harness.metric(port, "ferry_reply_bytes_held") == 0, 15,
                "the held replies' bytes to come back")
            ferry_harness.wait_until(
                lambda: ferry_harness.metric(port, "ferry_request_bytes_held") == 0, 15,
                "the held requests' bytes to come back")
        finally:
            if raw is not None:
                raw.close()
            self.assertEqual(coord.stop(), 0)


class HalfSentClient:
    """A raw HTTP/2 client that opens `streams` Register calls on one
    connection, declares a gRPC message of `length` bytes in each, and sends
    all of it but the last byte, as flow control allows, never ending the
    stream: gRPC core buffers such a message before the call reaches
    Ferry's code. `closed` turns true once the server has closed the
    connection (EOF, reset, or GOAWAY); `reset` holds the streams it reset
    (RST_STREAM)."""

    def __init__(self, port, streams, length):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.cv = threading.Condition()
        self.conn_window, self.initial, self.windows = 65535, 65535, {}
        self.closed, self.sent, self.reset = False, 0, set()
        self.todo = {1 + 2 * i: 5 + length - 1 for i in range(streams)}
        self.length = length
        headers = b"".join(ferry_harness.hpack_literal(k, v) for k, v in [
            (":method", "POST"), (":scheme", "http"), (":path", "/ferry.v1.Coordinator/Register"),
            (":authority", f"127.0.0.1:{port}"), ("content-type", "application/grpc"),
            ("te", "trailers")])
        out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + ferry_harness.h2_frame(4, 0, 0, b"")
        for sid in self.todo:
            self.windows[sid] = self.initial
            out += ferry_harness.h2_frame(1, 4, sid, headers)  # HEADERS, END_HEADERS, no END_STREAM
        self.sock.sendall(out)
        threading.Thread(target=self.read, daemon=True).start()
        threading.Thread(target=self.send, daemon=True).start()

    def recv_exactly(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def read(self):
        try:
            while True:
                head = self.recv_exactly(9)
                ftype, flags = head[3], head[4]
                sid = int.from_bytes(head[5:9], "big") & 0x7fffffff
                payload = self.recv_exactly(int.from_bytes(head[:3], "big"))
                with self.cv:
                    if ftype == 4 and not flags & 1:  # SETTINGS: ack, take the window
                        for i in range(0, len(payload), 6):
                            key, value = struct.unpack(">HI", payload[i:i + 6])
                            if key == 4:
                                for w in self.windows:
                                    self.windows[w] += value - self.initial
                                self.initial = value
                        self.sock.sendall(ferry_harness.h2_frame(4, 1, 0, b""))
                    elif ftype == 6 and not flags & 1:  # PING: answer it
                        self.sock.sendall(ferry_harness.h2_frame(6, 1, 0, payload))
                    elif ftype == 8:  # WINDOW_UPDATE
                        inc = int.from_bytes(payload, "big") & 0x7fffffff
                        if sid == 0:
                            self.conn_window += inc
                        elif sid in self.windows:
                            self.windows[sid] += inc
                    elif ftype == 3:  # RST_STREAM
                        self.reset.add(sid)
                        self.todo.pop(sid, None)
                    elif ftype == 7:  # GOAWAY
                        self.closed = True
                    self.cv.notify_all()
        except (EOFError, OSError):
            pass
        with self.cv:
            self.closed = True
            self.cv.notify_all()

    def send(self):
        try:
            with self.cv:
                while self.todo and not self.closed:
                    progressed = False
                    for sid in list(self.todo):
                        n = min(self.todo[sid], self.windows[sid], self.conn_window, 16384)
                        if n <= 0:
                            continue
                        first = self.todo[sid] == 5 + self.length - 1
                        payload = (b"\x00" + struct.pack(">I", self.length) if first else b"")
                        payload += b"\x00" * (n - len(payload))
                        self.sock.sendall(ferry_harness.h2_frame(0, 0, sid, payload))
                        self.windows[sid] -= n
                        self.conn_window -= n
                        self.todo[sid] -= n
                        self.sent += n
                        if self.todo[sid] == 0:
                            del self.todo[sid]
                        progressed = True
                    if not progressed:
                        self.cv.wait(1)  # woken by a window update or the close
        except OSError:
            pass

    def refused_any(self):
        """Whether the server reset a stream or closed the connection."""
        with self.cv:
            return self.closed or bool(self.reset)

    def close(self):
        self.sock.close()


class HalfSentRequests(unittest.TestCase):
    """A request gRPC core holds before the call reaches Ferry's code (all of
    a declared 2 MB message but its last byte, never ended) counts against
    --request-memory-mib too: the server has a gRPC resource quota of that
    size plus 32 MiB, and past it gRPC resets streams (any client's: README),
    so a client cannot hold more than that and what gRPC takes in before it
    acts. Before, 160 such streams per connection held 320 MB of the
    replica's memory each, for as long as the client liked, with no call
    counted anywhere. The replica serves on once the client has gone."""

    def test_half_sent_requests_are_bounded(self):
        from ferry.v1 import types_pb2, coordinator_pb2 as cpb
        coord = ferry_harness.Coordinator(TMP, ETCD.endpoint, name="halfsent",
                                          extra=("--prefix", "/halfsent/",
                                                 "--request-memory-mib", "8"))
        coord.start()
        clients = []
        try:
            port = int(coord.target.rsplit(":", 1)[1])
            base = status_kib(coord.proc.pid, "VmRSS")
            clients = [HalfSentClient(port, 100, 2_000_000) for _ in range(2)]
            ferry_harness.wait_until(lambda: all(c.refused_any() for c in clients), 60,
                                     "the server to reset streams holding half-sent requests, "
                                     "or close their connections")
            if not os.environ.get("FERRY_SANITIZED"):  # ASan keeps freed memory by design
                # While the clients still hold their connections open.
                ferry_harness.wait_until(
                    lambda: status_kib(coord.proc.pid, "VmRSS") < base + (64 << 10), 60,
                    "the replica to let go of the half-sent bytes")
            # While they hold on, gRPC may reset anyone's calls (README);
            # once they are gone the replica serves as before.
            for c in clients:
                c.close()
            with grpc.insecure_channel(coord.target) as channel:
                stub = coordinator_pb2_grpc_stub(channel)
                self.pb = types_pb2
                stub.Register(cpb.RegisterRequest(
                    request_id="after-half-sent", access_token=TOKEN,
                    metadata=LargestRequests.metadata(self, 1), owner="limits"), timeout=30)
        finally:
            for c in clients:
                c.close()
            self.assertEqual(coord.stop(), 0)


def coordinator_pb2_grpc_stub(channel):
    from ferry.v1 import coordinator_pb2_grpc
    return coordinator_pb2_grpc.CoordinatorStub(channel)


class PortFile(unittest.TestCase):
    def test_unwritable_port_file_is_fatal(self):
        in_the_way = os.path.join(TMP, "port-dir")
        os.makedirs(in_the_way)
        with open(os.path.join(in_the_way, "keep"), "w"):
            pass  # not empty: rename(2) over it fails
        p = subprocess.run([ferry_harness.COORDINATOR, "--listen", "127.0.0.1:0",
                            "--etcd", ETCD.endpoint, "--port-file", in_the_way],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("port file", p.stdout)
        self.assertFalse(os.path.exists(in_the_way + ".tmp"))


if __name__ == "__main__":
    unittest.main()
