"""List is one snapshot (registry_list.c), with real etcd and coordinator
processes:

- every page of a paged List is read at the revision of its first page:
  the header revisions are equal, a record registered between pages is not
  on a later page, and a Watch from that revision + 1 delivers both the
  change to a record page 1 returned and the new record;
- inside one List call that needs many etcd reads (a state filter that
  skips most records), a claim that lands while the List runs is never lost
  to a client that watches from the header revision + 1;
- a page of large records is read a few records at a time: the
  coordinator's peak memory grows by a fraction of the page's bytes;
- one List call reads etcd at most 64 times: a filter that skips most
  records answers page by page (short or empty pages, with a token);
- a page token is client input: a forged one (a revision that is garbage,
  negative, zero, too large, in the future) is INVALID_ARGUMENT naming
  page_token; one whose revision etcd has compacted is OUT_OF_RANGE naming
  page_token, as Watch answers a start_revision it no longer holds.

Run with /usr/bin/python3 (Debian's grpcio), from CTest.
"""
import json
import os
import random
import sys
import threading
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import ferry_harness  # noqa: E402

import grpc  # noqa: E402

TOKEN = "list-snapshot-token-0123456789"
CLUSTER = None


def setUpModule():
    global CLUSTER
    CLUSTER = ferry_harness.Cluster(ttl=60)


def tearDownModule():
    CLUSTER.close()


def metadata(pb):
    return pb.RdmaMetadata(
        version=1, kind=pb.OPERATION_KIND_WRITE, worker_address=b"\x01" * 64,
        descriptors=[pb.Descriptor(address=0x10000, size=4096,
                                   device=pb.Device(kind=pb.DEVICE_KIND_HOST), rkey=b"k" * 32)],
        notification_key=b"n" * 16, worker_name="py-receiver", hostname="localhost")


def etcd_compact(endpoint, revision):
    body = json.dumps({"revision": str(revision), "physical": True}).encode()
    req = urllib.request.Request(endpoint + "/v3/kv/compaction", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()


class Client:
    def __init__(self, target):
        from ferry.v1 import coordinator_pb2, coordinator_pb2_grpc, types_pb2
        self.pb, self.cpb = types_pb2, coordinator_pb2
        self.channel = grpc.insecure_channel(target)
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)
        # Streams on a connection of their own, so a stream read late never
        # holds up the unary calls.
        self.watch_channel = grpc.insecure_channel(
            target, options=[("grpc.use_local_subchannel_pool", 1)])
        self.watch_stub = coordinator_pb2_grpc.CoordinatorStub(self.watch_channel)

    def close(self):
        self.channel.close()
        self.watch_channel.close()

    def register(self, rid):
        return self.stub.Register(self.cpb.RegisterRequest(
            request_id=rid, metadata=metadata(self.pb), access_token=TOKEN, owner="py",
            ttl_seconds=60), timeout=10)

    def claim(self, rid):
        return self.stub.Claim(self.cpb.ClaimRequest(
            request_id=rid, access_token=TOKEN, claimant="py-writer",
            kind=self.pb.OPERATION_KIND_WRITE, ttl_seconds=60), timeout=10)

    def list(self, **kw):
        return self.stub.List(self.cpb.ListRequest(**kw), timeout=10)

    def watch_until(self, prefix, start_revision, done, timeout=20):
        """Events (revision, request_id, state) of a Watch from start_revision,
        read until done(events) holds; fails past the deadline."""
        stream = self.watch_stub.Watch(self.cpb.WatchRequest(
            request_id_prefix=prefix, start_revision=start_revision), timeout=timeout)
        events = []
        try:
            for msg in stream:
                for e in msg.events:
                    events.append((msg.header.revision, e.operation.request_id,
                                   e.operation.state))
                if done(events):
                    return events
        except grpc.RpcError as e:
            raise AssertionError(f"watch from {start_revision} ended {e.code()}: {e.details()} "
                                 f"with {events}") from e
        finally:
            stream.cancel()
        raise AssertionError(f"watch from {start_revision} ended early with {events}")


class PagedListIsOneSnapshot(unittest.TestCase):
    def test_pages_share_the_first_pages_revision(self):
        c = Client(CLUSTER.coordinator.target)
        self.addCleanup(c.close)
        pb = c.pb
        for i in range(5):
            c.register(f"page-{i}")

        first = c.list(request_id_prefix="page-", state=pb.OPERATION_STATE_REGISTERED,
                       page_size=2)
        rev = first.header.revision
        self.assertEqual([o.request_id for o in first.operations], ["page-0", "page-1"])
        self.assertTrue(first.next_page_token)

        # Between the pages: a record page 1 returned changes state, and a
        # record is registered where page 2 would read it at the latest
        # revision.
        claimed_at = c.claim("page-0").header.revision
        added_at = c.register("page-1a").header.revision
        self.assertGreater(claimed_at, rev)
        self.assertGreater(added_at, rev)

        second = c.list(request_id_prefix="page-", state=pb.OPERATION_STATE_REGISTERED,
                        page_size=2, page_token=first.next_page_token)
        self.assertEqual(second.header.revision, rev)
        self.assertEqual([o.request_id for o in second.operations], ["page-2", "page-3"])
        third = c.list(request_id_prefix="page-", state=pb.OPERATION_STATE_REGISTERED,
                       page_size=2, page_token=second.next_page_token)
        self.assertEqual(third.header.revision, rev)
        self.assertEqual([o.request_id for o in third.operations], ["page-4"])
        self.assertEqual(third.next_page_token, "")

        # The README's recovery path: read, then watch from its revision + 1.
        want = {("page-0", pb.OPERATION_STATE_CLAIMED), ("page-1a", pb.OPERATION_STATE_REGISTERED)}
        events = c.watch_until("page-", rev + 1,
                               lambda ev: want <= {(rid, st) for _, rid, st in ev})
        self.assertTrue(all(r > rev for r, _, _ in events), events)
        self.assertIn((claimed_at, "page-0", pb.OPERATION_STATE_CLAIMED), events)
        self.assertIn((added_at, "page-1a", pb.OPERATION_STATE_REGISTERED), events)

    def test_one_call_of_many_reads_loses_no_change(self):
        """List(state=CLAIMED, page_size=40) over 600 records, fewer than 40
        of them claimed, is one call of 15 etcd reads (41 keys each) that
        ends at the range's end. A writer claims records in random order
        meanwhile, so claims land on keys the List already read. For each
        List, what it returned plus what a Watch delivers after its header
        revision must be every claim."""
        c = Client(CLUSTER.coordinator.target)
        self.addCleanup(c.close)
        pb = c.pb
        ids = [f"many-{i:03d}" for i in range(600)]
        start = 0
        for rid in ids:
            start = c.register(rid).header.revision
        order = random.Random(7).sample(ids, 39)

        claimed = []
        errors = []
        lists = []
        listed = threading.Condition()

        # Each claim waits for one more List to have ended, so claims and
        # Lists interleave however fast either is (under ASan one List took
        # as long as all 39 claims): the next List starts as the claim goes
        # out, and the claim lands while it runs.
        def writer():
            try:
                for rid in order:
                    with listed:
                        seen = len(lists)
                        if not listed.wait_for(lambda: len(lists) > seen, timeout=30):
                            raise AssertionError("no List ended within 30 s")
                    claimed.append((c.claim(rid).header.revision, rid))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        t = threading.Thread(target=writer)
        t.start()
        try:
            while t.is_alive():
                page = c.list(request_id_prefix="many-", state=pb.OPERATION_STATE_CLAIMED,
                              page_size=40)
                self.assertEqual(page.next_page_token, "")
                with listed:
                    lists.append((page.header.revision, {o.request_id for o in page.operations}))
                    listed.notify_all()
        finally:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertGreaterEqual(len(lists), len(order))
        last = max(r for r, _ in claimed)
        events = c.watch_until("many-", start + 1,
                               lambda ev: any(r >= last for r, _, _ in ev))
        claims = {(r, rid) for r, rid, st in events if st == pb.OPERATION_STATE_CLAIMED}
        self.assertEqual(claims, set(claimed))
        final = {rid for _, rid in claimed}
        lost = []
        for header, seen in lists:
            after = {rid for r, rid in claims if r > header}
            if seen | after != final:
                lost.append((header, sorted(final - seen - after)))
        self.assertEqual(lost, [], f"Lists whose header revision + 1 misses claims, of "
                                   f"{len(lists)}")


def peak_rss(pid):
    """The process's peak resident set (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


class LargeRecordsAreReadInSmallSteps(unittest.TestCase):
    """A page of large records is read from etcd a few records at a time
    (registry_list.c, LIST_READ_BYTES): the coordinator's peak memory grows
    by a fraction of the page's bytes. It read the page in one etcd answer
    (1000 records of 1 MiB of metadata: 1 GB, held more than once), which
    any client that may Register could make every List do."""

    def test_peak_memory_is_not_the_pages_bytes(self):
        c = Client(CLUSTER.coordinator.target)
        pb = c.pb
        n = 48
        for i in range(n):
            md = pb.RdmaMetadata(
                version=1, kind=pb.OPERATION_KIND_WRITE, worker_address=b"\x01" * 64,
                descriptors=[pb.Descriptor(address=0x10000 + j * 4096, size=4096,
                                           device=pb.Device(kind=pb.DEVICE_KIND_HOST),
                                           rkey=bytes([(i + j) % 251 + 1]) * 4000)
                             for j in range(240)],
                notification_key=os.urandom(16), worker_name="py", hostname="localhost")
            c.stub.Register(c.cpb.RegisterRequest(
                request_id=f"large-{i:02d}", metadata=md, access_token=TOKEN, owner="py",
                ttl_seconds=60), timeout=10)
        page_bytes = n * md.ByteSize()
        before = peak_rss(CLUSTER.coordinator.proc.pid)
        resp = c.stub.List(c.cpb.ListRequest(request_id_prefix="large-", page_size=1000),
                           timeout=30)
        grown = peak_rss(CLUSTER.coordinator.proc.pid) - before
        self.assertEqual([op.request_id for op in resp.operations],
                         [f"large-{i:02d}" for i in range(n)])
        self.assertEqual(resp.next_page_token, "")
        self.assertLess(grown, page_bytes // 2,
                        f"peak RSS grew {grown >> 20} MiB for a {page_bytes >> 20} MiB page")
        for i in range(n):
            c.stub.Cancel(c.cpb.CancelRequest(request_id=f"large-{i:02d}", access_token=TOKEN),
                          timeout=10)
            c.stub.Release(c.cpb.ReleaseRequest(request_id=f"large-{i:02d}",
                                                access_token=TOKEN), timeout=10)
        c.close()


class OneCallReadsEtcdABoundedNumberOfTimes(unittest.TestCase):
    def test_a_filter_that_skips_everything_answers_page_by_page(self):
        """One large record makes every List read etcd two keys at a time.
        A List whose filter matches none of 300 records then needs 150
        reads: it was one call that scanned them all, however late, on a
        read worker the other reads wait for. Now each call reads at most 64
        times and answers an empty page with a token that goes on; following
        the tokens ends, matching nothing, and an unfiltered List following
        its tokens returns every record once, in order."""
        c = Client(CLUSTER.coordinator.target)
        self.addCleanup(c.close)
        pb = c.pb
        big = pb.RdmaMetadata(
            version=1, kind=pb.OPERATION_KIND_WRITE, worker_address=b"\x01" * 64,
            descriptors=[pb.Descriptor(address=0x10000 + j * 4096, size=4096,
                                       device=pb.Device(kind=pb.DEVICE_KIND_HOST),
                                       rkey=bytes([j % 251 + 1]) * 4000) for j in range(240)],
            notification_key=os.urandom(16), worker_name="py", hostname="localhost")
        c.stub.Register(c.cpb.RegisterRequest(request_id="bound-big", metadata=big,
                                              access_token=TOKEN, owner="py", ttl_seconds=60),
                        timeout=10)
        # Gone afterwards: the view's largest record sets every List's reads.
        self.addCleanup(lambda: c.stub.Release(c.cpb.ReleaseRequest(
            request_id="bound-big", access_token=TOKEN), timeout=10))
        self.addCleanup(lambda: c.stub.Cancel(c.cpb.CancelRequest(
            request_id="bound-big", access_token=TOKEN), timeout=10))
        ids = [f"bound-{i:03d}" for i in range(300)]
        for rid in ids:
            c.register(rid)

        def follow(**kw):
            """Every page of a List, following its tokens: (IDs, calls)."""
            calls, token, found = 0, "", []
            while True:
                page = c.list(request_id_prefix="bound-", page_token=token, **kw)
                calls += 1
                found += [op.request_id for op in page.operations]
                token = page.next_page_token
                if not token:
                    return found, calls
                self.assertLess(calls, 20, "the tokens do not end")

        found, calls = follow(state=pb.OPERATION_STATE_CLAIMED, page_size=100)
        self.assertEqual(found, [])
        self.assertGreater(calls, 1)  # 301 keys, 2 a read, 64 reads a call
        found, calls = follow(page_size=1000)
        self.assertEqual(found, sorted(ids + ["bound-big"]))
        self.assertGreater(calls, 1)


class PageTokenIsValidated(unittest.TestCase):
    def setUp(self):
        self.c = Client(CLUSTER.coordinator.target)
        self.addCleanup(self.c.close)

    def refused(self, token, code=grpc.StatusCode.INVALID_ARGUMENT):
        with self.assertRaises(grpc.RpcError) as cm:
            self.c.list(request_id_prefix="tok-", page_size=1, page_token=token)
        self.assertEqual(cm.exception.code(), code, cm.exception.details())
        self.assertIn("page_token", cm.exception.details())
        return cm.exception.details()

    def test_forged_tokens_are_invalid_argument(self):
        self.c.register("tok-0")
        self.c.register("tok-1")
        page = self.c.list(request_id_prefix="tok-", page_size=1)
        rev = page.header.revision
        self.assertEqual(page.next_page_token, f"{rev}@tok-0")
        for token in ["tok-0",  # a bare request ID: the format before snapshots
                      "garbage", "@tok-0", "x1@tok-0", "-5@tok-0", "0@tok-0", "01@tok-0",
                      "+5@tok-0", " 5@tok-0", "5 @tok-0", "5@", "5@tok 0", "5@@tok-0",
                      "99999999999999999999@tok-0", "9223372036854775808@tok-0",
                      f"{rev}@" + "a" * 129, "\u00e9@tok-0"]:
            with self.subTest(token=token):
                self.refused(token)
        # Well formed, but a revision etcd has not reached.
        details = self.refused("9223372036854775807@tok-0")
        self.assertIn("9223372036854775807", details)
        self.refused(f"{rev + 1000000}@tok-0")
        # The coordinator still answers, and the genuine token still works.
        again = self.c.list(request_id_prefix="tok-", page_size=1,
                            page_token=page.next_page_token)
        self.assertEqual([o.request_id for o in again.operations], ["tok-1"])
        self.assertEqual(again.header.revision, rev)

    def test_compacted_revision_is_out_of_range(self):
        self.c.register("cmp-0")
        self.c.register("cmp-1")
        page = self.c.list(request_id_prefix="cmp-", page_size=1)
        now = self.c.register("cmp-2").header.revision
        etcd_compact(CLUSTER.etcd.endpoint, now)
        with self.assertRaises(grpc.RpcError) as cm:
            self.c.list(request_id_prefix="cmp-", page_size=1, page_token=page.next_page_token)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.OUT_OF_RANGE,
                         cm.exception.details())
        self.assertIn("page_token", cm.exception.details())
        self.assertIn("again", cm.exception.details())
        # Starting again works, at a revision etcd holds.
        fresh = self.c.list(request_id_prefix="cmp-", page_size=1)
        self.assertGreaterEqual(fresh.header.revision, now)


if __name__ == "__main__":
    unittest.main(verbosity=2)
