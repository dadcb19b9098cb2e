"""Leases are capabilities (issue 9): holding a lease takes its lease token,
which only the lease's grantee got (RegisterResponse, ClaimResponse).

A second client that knows a lease ID but not its token is refused
(PERMISSION_DENIED, naming lease_token) on KeepAlive, Register and Claim
reusing the lease, and Complete; the owner's record still expires on time
while such a client keeps trying; Get, List and Watch never show lease IDs;
a token is HMAC-SHA256 of the lease ID under the key in etcd, as documented;
and a refused Claim costs etcd nothing (its store revision and raft index,
read straight from etcd's gateway, do not move).

Real etcd and ferry-coordinator processes; run with /usr/bin/python3.
"""
import base64
import hashlib
import hmac
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import ferry_harness  # noqa: E402

import grpc  # noqa: E402

TTL = 2
TOKEN = "lease-test-token-0123456789"
NOT_A_TOKEN = "0" * 64
DENIED = grpc.StatusCode.PERMISSION_DENIED


def metadata(pb, kind):
    return pb.RdmaMetadata(
        version=1, kind=kind, worker_address=b"\x01" * 64,
        descriptors=[pb.Descriptor(address=0x10000, size=4096,
                                   device=pb.Device(kind=pb.DEVICE_KIND_HOST), rkey=b"k" * 32)],
        notification_key=os.urandom(16), worker_name="py-receiver", hostname="localhost")


def etcd_status(endpoint):
    """(store revision, raft index) straight from etcd: every write of any
    kind (a put, a lease grant or revoke) moves the raft index."""
    req = urllib.request.Request(endpoint + "/v3/maintenance/status", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        d = json.load(r)
    return int(d["header"]["revision"]), int(d["raftIndex"])


def etcd_value(endpoint, key):
    """The value at key, read straight from etcd's gateway."""
    body = json.dumps({"key": base64.b64encode(key).decode()}).encode()
    req = urllib.request.Request(endpoint + "/v3/kv/range", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        kvs = json.load(r).get("kvs", [])
    if len(kvs) != 1:
        raise AssertionError(f"{key!r}: {len(kvs)} keys in etcd")
    return base64.b64decode(kvs[0]["value"])


class Client:
    """Stubs on one coordinator, and the calls the tests make."""

    def __init__(self, target):
        from ferry.v1 import coordinator_pb2, coordinator_pb2_grpc, types_pb2
        self.pb, self.cpb = types_pb2, coordinator_pb2
        self.channel = grpc.insecure_channel(target)
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)

    def close(self):
        self.channel.close()

    def register(self, rid, ttl=0, lease_id=0, lease_token="", kind=None):
        kind = kind or self.pb.OPERATION_KIND_WRITE
        return self.stub.Register(self.cpb.RegisterRequest(
            request_id=rid, metadata=metadata(self.pb, kind), access_token=TOKEN, owner="py",
            ttl_seconds=ttl, lease_id=lease_id, lease_token=lease_token), timeout=10)

    def claim(self, rid, token=TOKEN, lease_id=0, lease_token="", kind=None, wait_ms=0, ttl=0):
        return self.stub.Claim(self.cpb.ClaimRequest(
            request_id=rid, access_token=token, claimant="py-writer",
            kind=kind or self.pb.OPERATION_KIND_WRITE, lease_id=lease_id,
            lease_token=lease_token, wait_ms=wait_ms, ttl_seconds=ttl), timeout=10)

    def complete(self, rid, claim_lease_id, lease_token):
        return self.stub.Complete(self.cpb.CompleteRequest(
            request_id=rid, access_token=TOKEN, claim_lease_id=claim_lease_id,
            lease_token=lease_token), timeout=10)

    def keepalive(self, lease_id, lease_token):
        return self.stub.KeepAlive(self.cpb.KeepAliveRequest(
            lease_id=lease_id, lease_token=lease_token), timeout=10)

    def get(self, rid):
        return self.stub.Get(self.cpb.GetRequest(request_id=rid), timeout=10).operation

    def state(self, rid):
        return self.get(rid).state


class LeaseTestCase(unittest.TestCase):
    def assertRefused(self, code, call, *args, **kwargs):
        with self.assertRaises(grpc.RpcError) as cm:
            call(*args, **kwargs)
        self.assertEqual(cm.exception.code(), code, cm.exception.details())
        return cm.exception.details()

    def assertDenied(self, call, *args, **kwargs):
        details = self.assertRefused(DENIED, call, *args, **kwargs)
        self.assertIn("lease_token", details)

    def assertNoLeaseIds(self, op):
        self.assertEqual(op.lease_id, 0)
        self.assertEqual(op.claim_lease_id, 0)


class LeaseIsACapability(LeaseTestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = ferry_harness.Cluster(ttl=TTL)
        cls.c = Client(cls.cluster.coordinator.target)

    @classmethod
    def tearDownClass(cls):
        cls.c.close()
        rc = cls.cluster.close()
        if rc != 0:
            raise AssertionError(f"coordinator exited with {rc} after SIGTERM")

    def test_keepalive_takes_the_token(self):
        c = self.c
        reg = c.register("ka-1", ttl=60)
        other = c.register("ka-2", ttl=60)
        self.assertEqual(len(reg.lease_token), 64)
        self.assertNotEqual(reg.lease_token, other.lease_token)
        self.assertDenied(c.keepalive, reg.lease_id, "")
        self.assertDenied(c.keepalive, reg.lease_id, NOT_A_TOKEN)
        self.assertDenied(c.keepalive, reg.lease_id, other.lease_token)  # another lease's
        self.assertDenied(c.keepalive, reg.lease_id, reg.lease_token[:-1])
        self.assertGreater(c.keepalive(reg.lease_id, reg.lease_token).ttl_seconds, 0)

    def test_register_on_a_lease_takes_its_token(self):
        c = self.c
        victim = c.register("reuse-victim", ttl=60)
        self.assertDenied(c.register, "reuse-1", lease_id=victim.lease_id)
        self.assertDenied(c.register, "reuse-1", lease_id=victim.lease_id,
                          lease_token=NOT_A_TOKEN)
        self.assertRefused(grpc.StatusCode.NOT_FOUND, c.get, "reuse-1")
        # The grantee may.
        mine = c.register("reuse-2", lease_id=victim.lease_id, lease_token=victim.lease_token)
        self.assertEqual(mine.lease_id, victim.lease_id)
        self.assertEqual(mine.lease_token, victim.lease_token)
        # Its log line says whose lease, not "ttl 0s" (audit-s27-soak F3).
        log = self.cluster.coordinator
        self.assertTrue(log.log_contains("op reuse-victim: REGISTERED"))
        self.assertTrue(log.log_contains(f"lease {victim.lease_id}, ttl 60s)"))
        self.assertTrue(log.log_contains("op reuse-2: REGISTERED"))
        self.assertTrue(log.log_contains(f"lease {mine.lease_id}, the caller's)"))
        self.assertFalse(log.log_contains("ttl 0s"))

    def test_claim_on_a_lease_takes_its_token(self):
        c = self.c
        victim = c.register("cl-victim", ttl=60)
        c.register("cl-1", ttl=60)
        self.assertDenied(c.claim, "cl-1", lease_id=victim.lease_id)
        self.assertDenied(c.claim, "cl-1", lease_id=victim.lease_id, lease_token=NOT_A_TOKEN)
        self.assertEqual(c.state("cl-1"), c.pb.OPERATION_STATE_REGISTERED)
        claim = c.claim("cl-1", lease_id=victim.lease_id, lease_token=victim.lease_token)
        self.assertEqual(claim.claim_lease_id, victim.lease_id)
        self.assertEqual(claim.lease_token, victim.lease_token)

    def test_complete_takes_the_claims_token(self):
        c = self.c
        reg = c.register("cmp-1", ttl=60)
        claim = c.claim("cmp-1", ttl=60)
        self.assertEqual(len(claim.lease_token), 64)
        # Someone with the access token and the claim's lease ID, but not
        # the claim's lease token, cannot complete it.
        self.assertDenied(c.complete, "cmp-1", claim.claim_lease_id, "")
        self.assertDenied(c.complete, "cmp-1", claim.claim_lease_id, NOT_A_TOKEN)
        self.assertDenied(c.complete, "cmp-1", claim.claim_lease_id, reg.lease_token)
        self.assertEqual(c.state("cmp-1"), c.pb.OPERATION_STATE_CLAIMED)
        done = c.complete("cmp-1", claim.claim_lease_id, claim.lease_token)
        self.assertEqual(done.operation.state, c.pb.OPERATION_STATE_COMPLETE)
        self.assertNoLeaseIds(done.operation)

    def test_record_expires_while_a_stranger_keeps_alive(self):
        c = self.c
        watch = c.stub.Watch(c.cpb.WatchRequest(request_id="exp-1"), timeout=TTL + 20)
        self.assertTrue(next(watch).created)
        reg = c.register("exp-1")  # the default TTL
        c.keepalive(reg.lease_id, reg.lease_token)  # the owner could; then it stops
        refused, accepted = [], []
        stop = threading.Event()

        def stranger():
            while not stop.is_set():
                try:
                    c.keepalive(reg.lease_id, NOT_A_TOKEN)
                    accepted.append(1)
                except grpc.RpcError as e:
                    refused.append(e.code())
                stop.wait(0.2)
        t = threading.Thread(target=stranger)
        t.start()
        try:
            expired = False
            deadline = time.monotonic() + TTL + 10
            for msg in watch:
                for ev in msg.events:
                    self.assertNoLeaseIds(ev.operation)
                    if (ev.type == c.cpb.WATCH_EVENT_TYPE_DELETE and
                            ev.operation.state == c.pb.OPERATION_STATE_EXPIRED):
                        expired = True
                if expired or time.monotonic() > deadline:
                    break
        finally:
            stop.set()
            t.join(10)
            watch.cancel()
        self.assertTrue(expired, "the record did not expire")
        self.assertEqual(accepted, [])
        self.assertGreater(len(refused), 0)
        self.assertEqual(set(refused), {DENIED})
        self.assertRefused(grpc.StatusCode.NOT_FOUND, c.get, "exp-1")
        # The owner, with the right token, learns that the lease is gone.
        self.assertRefused(grpc.StatusCode.NOT_FOUND, c.keepalive, reg.lease_id, reg.lease_token)

    def test_reads_never_show_lease_ids(self):
        c = self.c
        watch = c.stub.Watch(c.cpb.WatchRequest(request_id_prefix="ids-"), timeout=30)
        self.assertTrue(next(watch).created)
        reg = c.register("ids-1", ttl=60)
        look = c.stub.Lookup(c.cpb.LookupRequest(request_id="ids-1", access_token=TOKEN),
                             timeout=10)
        self.assertNoLeaseIds(look.operation)
        claim = c.claim("ids-1", ttl=60)
        self.assertGreater(claim.claim_lease_id, 0)  # to its grantee only
        self.assertNoLeaseIds(claim.operation)
        got = c.get("ids-1")
        self.assertEqual(got.state, c.pb.OPERATION_STATE_CLAIMED)
        self.assertNoLeaseIds(got)
        listed = c.stub.List(c.cpb.ListRequest(request_id_prefix="ids-"), timeout=10)
        self.assertEqual(len(listed.operations), 1)
        self.assertNoLeaseIds(listed.operations[0])
        cancel = c.stub.Cancel(c.cpb.CancelRequest(request_id="ids-1", access_token=TOKEN),
                               timeout=10)
        self.assertNoLeaseIds(cancel.operation)
        states = []
        for msg in watch:
            for ev in msg.events:
                self.assertNoLeaseIds(ev.operation)
                states.append(ev.operation.state)
            if c.pb.OPERATION_STATE_CANCELLED in states:
                break
        watch.cancel()
        self.assertEqual(states, [c.pb.OPERATION_STATE_REGISTERED, c.pb.OPERATION_STATE_CLAIMED,
                                  c.pb.OPERATION_STATE_CANCELLED])
        self.assertGreater(reg.lease_id, 0)

    def test_token_is_the_documented_hmac(self):
        # registry_lease.c: lowercase hex of HMAC-SHA256(K, "ferry-lease:<lease ID>"),
        # K the 32 bytes at <prefix>keys/lease; any replica, of any version, must
        # derive the same token. Computed here independently of the coordinator.
        c = self.c
        reg = c.register("hmac-1", ttl=60)
        claim = c.claim("hmac-1", ttl=60)
        key = etcd_value(self.cluster.etcd.endpoint, b"/ferry/keys/lease")
        self.assertEqual(len(key), 32)
        for lease_id, token in ((reg.lease_id, reg.lease_token),
                                (claim.claim_lease_id, claim.lease_token)):
            want = hmac.new(key, b"ferry-lease:%d" % lease_id, hashlib.sha256).hexdigest()
            self.assertEqual(token, want, f"lease {lease_id}")

    def test_tokens_hold_on_every_replica_and_across_restarts(self):
        c = self.c
        reg = c.register("rep-1", ttl=60)
        second = ferry_harness.Coordinator(self.cluster.tmp, self.cluster.etcd.endpoint,
                                           name="c2", ttl=TTL)
        second.start()
        try:
            c2 = Client(second.target)
            self.assertGreater(c2.keepalive(reg.lease_id, reg.lease_token).ttl_seconds, 0)
            self.assertDenied(c2.keepalive, reg.lease_id, NOT_A_TOKEN)
            c2.close()
            self.assertEqual(second.stop(), 0)
            second.start()
            c2 = Client(second.target)
            self.assertGreater(c2.keepalive(reg.lease_id, reg.lease_token).ttl_seconds, 0)
            c2.close()
        finally:
            second.stop()


class RefusedCallsWriteNothing(LeaseTestCase):
    """Its own etcd, where nothing else happens while it looks."""

    @classmethod
    def setUpClass(cls):
        cls.cluster = ferry_harness.Cluster(ttl=TTL)
        cls.c = Client(cls.cluster.coordinator.target)

    @classmethod
    def tearDownClass(cls):
        cls.c.close()
        rc = cls.cluster.close()
        if rc != 0:
            raise AssertionError(f"coordinator exited with {rc} after SIGTERM")

    def test_refused_calls_leave_etcd_untouched(self):
        c = self.c
        reg = c.register("w-1", ttl=600)
        c.register("w-read", ttl=600, kind=c.pb.OPERATION_KIND_READ)
        c.register("w-taken", ttl=600)
        claim = c.claim("w-taken", ttl=600)  # nothing expires while we look
        c.keepalive(reg.lease_id, reg.lease_token)
        before = etcd_status(self.cluster.etcd.endpoint)

        # Wrong access token: refused before a claim lease is granted.
        self.assertRefused(DENIED, c.claim, "w-1", token="not-the-token-0123456789")
        # Someone else's lease.
        self.assertDenied(c.claim, "w-1", lease_id=reg.lease_id, lease_token=NOT_A_TOKEN)
        self.assertDenied(c.register, "w-2", lease_id=reg.lease_id, lease_token=NOT_A_TOKEN)
        self.assertDenied(c.keepalive, reg.lease_id, NOT_A_TOKEN)
        self.assertDenied(c.complete, "w-taken", claim.claim_lease_id, NOT_A_TOKEN)
        # Kind and state, too, are checked before a lease is granted.
        self.assertRefused(grpc.StatusCode.INVALID_ARGUMENT, c.claim, "w-read")
        self.assertRefused(grpc.StatusCode.FAILED_PRECONDITION, c.claim, "w-taken")
        # A claim that waits for an operation that never comes.
        self.assertRefused(grpc.StatusCode.DEADLINE_EXCEEDED, c.claim, "w-ghost", wait_ms=300)

        self.assertEqual(etcd_status(self.cluster.etcd.endpoint), before,
                         "(store revision, raft index) moved: a refused call wrote to etcd")
        self.assertEqual(c.state("w-1"), c.pb.OPERATION_STATE_REGISTERED)


def etcd_post(endpoint, path, body):
    req = urllib.request.Request(endpoint + path, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)


def keyless_leases(endpoint):
    """The IDs of etcd's leases that hold no key."""
    ids = [int(le["ID"]) for le in etcd_post(endpoint, "/v3/lease/leases", {}).get("leases", [])]
    return {i for i in ids
            if not etcd_post(endpoint, "/v3/lease/timetolive", {"ID": i, "keys": True}).get("keys")}


def metric(port, line_start):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(line_start):
                return float(line.split()[-1])
    return 0.0


class CutGrantsLeaveNoLease(LeaseTestCase):
    """A Register whose caller's time runs out while the coordinator grants
    its lease (the coordinator's etcd requests end with the caller's
    deadline): the grant may have been applied after the coordinator gave
    up on it. The coordinator picked the lease's ID, so it revokes it; no
    lease is left holding nothing for the hour its caller asked for. (The
    ID was etcd's, and such a lease lived its TTL.)"""

    def test_grants_cut_short_are_revoked(self):
        cluster = ferry_harness.Cluster(ttl=TTL, extra=("--metrics-listen", "127.0.0.1:0"))
        self.addCleanup(cluster.close)
        c = Client(cluster.coordinator.target)
        self.addCleanup(c.close)
        port = cluster.coordinator.metrics_port()
        endpoint = cluster.etcd.endpoint
        before = keyless_leases(endpoint)
        cut = 'ferry_etcd_requests_total{kind="lease/grant",result="timed_out"}'
        # Deadlines of a few milliseconds: some grants reach etcd and are
        # answered after their caller's time (counted as timed_out). Until
        # a few have been, within a bound.
        for i in range(1000):
            if i % 30 == 0 and metric(port, cut) >= 3:
                break
            try:
                c.stub.Register(c.cpb.RegisterRequest(
                    request_id=f"cut-{i}", metadata=metadata(c.pb, c.pb.OPERATION_KIND_WRITE),
                    access_token=TOKEN, owner="py", ttl_seconds=3600),
                    timeout=(0.002, 0.003, 0.004, 0.006)[i % 4])
            except grpc.RpcError as e:
                self.assertIn(e.code(), (grpc.StatusCode.DEADLINE_EXCEEDED,
                                         grpc.StatusCode.UNAVAILABLE), e.details())
        self.assertGreater(metric(port, cut), 0, "no grant was cut by its caller's deadline")
        ferry_harness.wait_until(lambda: not (keyless_leases(endpoint) - before), 30,
                   "the leases of grants cut short to be revoked")


class LeaseKeyWaitsForEtcd(LeaseTestCase):
    """A replica that starts while etcd is down has no lease key yet: the
    calls that need it answer UNAVAILABLE, and work once etcd is back."""

    def test_unavailable_until_the_key_is_loaded(self):
        tmp = tempfile.mkdtemp(prefix="ferry-py-")
        etcd = ferry_harness.Etcd(tmp)
        coord = None
        try:
            ferry_harness.generate_stubs(os.path.join(tmp, "gen"))
            etcd.start()
            etcd.stop()
            coord = ferry_harness.Coordinator(tmp, etcd.endpoint, ttl=TTL)
            coord.start()
            c = Client(coord.target)
            self.assertRefused(grpc.StatusCode.UNAVAILABLE, c.keepalive, 1, NOT_A_TOKEN)
            self.assertRefused(grpc.StatusCode.UNAVAILABLE, c.register, "k-1")
            etcd.start()
            reg = {}

            def registered():
                try:
                    reg["r"] = c.register("k-1", ttl=60)
                    return True
                except grpc.RpcError as e:
                    self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE, e.details())
                    return False
            ferry_harness.wait_until(registered, 20, "a registration once etcd is back")
            r = reg["r"]
            self.assertGreater(c.keepalive(r.lease_id, r.lease_token).ttl_seconds, 0)
            self.assertDenied(c.keepalive, r.lease_id, NOT_A_TOKEN)
            c.close()
        finally:
            if coord is not None:
                coord.stop()
            etcd.stop()
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
