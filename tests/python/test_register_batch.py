"""Registers that wait together share one etcd transaction (issue 14;
coordinator/registry_batch.c), and each still gets its own answer, with a
real etcd and coordinator:

- many Registers at once, mixed: new IDs (OK), IDs already registered
  (ALREADY_EXISTS), two Registers racing for one new ID (one OK, one
  ALREADY_EXISTS), and Registers on a lease that is gone (NOT_FOUND, the
  lease named): every one answered as if it had gone alone, and etcd holds
  exactly the records that were answered OK, on the right leases;
- they did share transactions: successful Registers answered with the same
  revision (etcd gives a transaction one revision), which --register-batch 1
  never does (the negative control: the same load, each alone);
- the same over etcd's JSON gateway (--etcd-kv-api gateway);
- --register-batch 2: no transaction carries more than two Registers;
- Registers of ~400 KiB of metadata each still share transactions, at most
  two to one (a shared transaction carries at most 1 MiB: etcd refuses a
  request over 1.5 MiB, and such a batch used to be refused whole and each
  member sent again alone).

Run with /usr/bin/python3 (Debian's grpcio), from CTest.
"""
import base64
import json
import os
import shutil
import sys
import tempfile
import threading
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import ferry_harness  # noqa: E402

import grpc  # noqa: E402

TMP = None
ETCD = None


def setUpModule():
    global TMP, ETCD
    TMP = tempfile.mkdtemp(prefix="ferry-py-batch-")
    ferry_harness.generate_stubs(os.path.join(TMP, "gen"))
    ETCD = ferry_harness.Etcd(TMP)
    ETCD.start()


def tearDownModule():
    ETCD.stop()
    shutil.rmtree(TMP, ignore_errors=True)


def b64(s):
    return base64.b64encode(s.encode()).decode()


def etcd_post(path, body):
    req = urllib.request.Request(ETCD.endpoint + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def etcd_records(prefix):
    """{request_id: lease} of every record under prefix's ops/."""
    ops = prefix + "ops/"
    end = ops[:-1] + chr(ord(ops[-1]) + 1)
    got = etcd_post("/v3/kv/range", {"key": b64(ops), "range_end": b64(end)})
    return {base64.b64decode(kv["key"]).decode()[len(ops):]: int(kv.get("lease", "0"))
            for kv in got.get("kvs", [])}


class Batching(unittest.TestCase):
    ROUNDS = 6

    def start(self, name, extra=()):
        from ferry.v1 import coordinator_pb2, coordinator_pb2_grpc, types_pb2
        self.pb, self.cpb = types_pb2, coordinator_pb2
        self.prefix = f"/{name}/"
        self.coord = ferry_harness.Coordinator(TMP, ETCD.endpoint, name=name, ttl=60,
                                               extra=("--prefix", self.prefix, *extra))
        self.coord.start()
        # Several connections, so that the calls reach the coordinator at
        # once rather than one HTTP/2 connection's worth at a time.
        self.channels = [grpc.insecure_channel(self.coord.target,
                                               options=[("grpc.use_local_subchannel_pool", 1)])
                         for _ in range(8)]
        self.stubs = [coordinator_pb2_grpc.CoordinatorStub(c) for c in self.channels]

    def tearDown(self):
        for c in getattr(self, "channels", []):
            c.close()
        if getattr(self, "coord", None) is not None:
            self.coord.stop()

    def metadata(self):
        pb = self.pb
        return pb.RdmaMetadata(
            version=1, kind=pb.OPERATION_KIND_WRITE, worker_address=b"\x01" * 64,
            descriptors=[pb.Descriptor(address=0x10000, size=4096,
                                       device=pb.Device(kind=pb.DEVICE_KIND_HOST),
                                       rkey=b"k" * 32)],
            notification_key=b"n" * 16, worker_name="batch", hostname="localhost")

    def register(self, i, rid, lease=None):
        kw = dict(lease_id=lease[0], lease_token=lease[1]) if lease else dict(ttl_seconds=60)
        return self.stubs[i % len(self.stubs)].Register(self.cpb.RegisterRequest(
            request_id=rid, metadata=self.metadata(), owner="batch", **kw), timeout=30)

    def mixed_rounds(self):
        """Each round: 24 new IDs, 8 taken ones, 8 pairs racing for a new ID
        and 8 on a revoked lease, all released at once. Returns the
        revisions of the successful Registers, per round."""
        live = self.register(0, "seed-live")
        live_lease = (live.lease_id, live.lease_token)
        gone = self.register(0, "seed-gone")
        gone_lease = (gone.lease_id, gone.lease_token)
        etcd_post("/v3/lease/revoke", {"ID": str(gone.lease_id)})
        for k in range(8):
            self.register(0, f"taken-{k}", live_lease)
        expect = {"seed-live": live.lease_id}
        expect.update({f"taken-{k}": live.lease_id for k in range(8)})
        shared_revisions = []
        self.largest_batch = 0  # most successful Registers that answered one revision

        for rnd in range(self.ROUNDS):
            calls = [(f"new-{rnd}-{k}", live_lease, "ok") for k in range(24)]
            calls += [(f"taken-{k}", live_lease, "exists") for k in range(8)]
            calls += [(f"race-{rnd}-{j}", live_lease, "race") for j in range(8) for _ in range(2)]
            calls += [(f"lost-{rnd}-{k}", gone_lease, "gone") for k in range(8)]
            results = [None] * len(calls)
            barrier = threading.Barrier(len(calls))

            def call(i):
                rid, lease, _ = calls[i]
                barrier.wait()
                try:
                    results[i] = self.register(i, rid, lease)
                except grpc.RpcError as e:
                    results[i] = e

            threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)

            revisions, race_wins = [], {}
            for (rid, _, want), got in zip(calls, results):
                with self.subTest(round=rnd, request_id=rid, want=want):
                    if want == "ok":
                        self.assertNotIsInstance(got, grpc.RpcError)
                        revisions.append(got.header.revision)
                        expect[rid] = live.lease_id
                    elif want == "exists":
                        self.assertIsInstance(got, grpc.RpcError)
                        self.assertEqual(got.code(), grpc.StatusCode.ALREADY_EXISTS)
                        self.assertIn(rid, got.details())
                    elif want == "gone":
                        self.assertIsInstance(got, grpc.RpcError)
                        self.assertEqual(got.code(), grpc.StatusCode.NOT_FOUND)
                        self.assertIn(str(gone.lease_id), got.details())
                    else:
                        if isinstance(got, grpc.RpcError):
                            self.assertEqual(got.code(), grpc.StatusCode.ALREADY_EXISTS)
                            race_wins.setdefault(rid, 0)
                        else:
                            race_wins[rid] = race_wins.get(rid, 0) + 1
                            revisions.append(got.header.revision)
                            expect[rid] = live.lease_id
            self.assertEqual(race_wins, {f"race-{rnd}-{j}": 1 for j in range(8)})
            shared_revisions.append(len(revisions) - len(set(revisions)))
            self.largest_batch = max([self.largest_batch] +
                                     [revisions.count(rev) for rev in set(revisions)])

        # etcd holds exactly what was answered OK, each on its lease.
        self.assertEqual(etcd_records(self.prefix), expect)
        return shared_revisions

    def test_mixed_registers_at_once_each_get_their_answer(self):
        self.start("batch")
        shared = self.mixed_rounds()
        # They went together: some answered with one revision.
        self.assertGreater(sum(shared), 0, shared)

    def test_over_the_json_gateway(self):
        self.start("batchgw", extra=("--etcd-kv-api", "gateway"))
        shared = self.mixed_rounds()
        self.assertGreater(sum(shared), 0, shared)

    def test_register_batch_bounds_a_transaction(self):
        self.start("pairs", extra=("--register-batch", "2"))
        shared = self.mixed_rounds()
        self.assertGreater(sum(shared), 0, shared)
        self.assertEqual(self.largest_batch, 2)

    def big_metadata(self):
        pb = self.pb
        return pb.RdmaMetadata(
            version=1, kind=pb.OPERATION_KIND_WRITE, worker_address=b"\x01" * 64,
            descriptors=[pb.Descriptor(address=0x10000 + i * 4096, size=4096,
                                       device=pb.Device(kind=pb.DEVICE_KIND_HOST),
                                       rkey=bytes([i % 251 + 1]) * 4000)
                         for i in range(100)],
            notification_key=b"n" * 16, worker_name="batch", hostname="localhost")

    def test_large_registers_share_within_the_request_limit(self):
        self.start("big")
        md = self.big_metadata()
        self.assertGreater(md.ByteSize(), 400 * 1000)
        live = self.register(0, "seed-big")
        lease = (live.lease_id, live.lease_token)
        expect = {"seed-big": live.lease_id}
        largest, shared = 0, 0
        for rnd in range(4):
            ids = [f"big-{rnd}-{k}" for k in range(8)]
            results = [None] * len(ids)
            barrier = threading.Barrier(len(ids))

            def call(i):
                barrier.wait()
                try:
                    results[i] = self.stubs[i % len(self.stubs)].Register(
                        self.cpb.RegisterRequest(request_id=ids[i], metadata=md, owner="batch",
                                                 lease_id=lease[0], lease_token=lease[1]),
                        timeout=30)
                except grpc.RpcError as e:
                    results[i] = e

            threads = [threading.Thread(target=call, args=(i,)) for i in range(len(ids))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            for rid, got in zip(ids, results):
                self.assertNotIsInstance(got, grpc.RpcError, rid)
                expect[rid] = live.lease_id
            revisions = [got.header.revision for got in results]
            shared += len(revisions) - len(set(revisions))
            largest = max([largest] + [revisions.count(rev) for rev in set(revisions)])
        self.assertEqual(etcd_records(self.prefix), expect)
        self.assertGreater(shared, 0)  # they went together
        self.assertEqual(largest, 2)  # three would be over 1 MiB

    def test_register_batch_1_goes_alone(self):
        self.start("alone", extra=("--register-batch", "1"))
        shared = self.mixed_rounds()
        self.assertEqual(shared, [0] * self.ROUNDS)


if __name__ == "__main__":
    unittest.main(verbosity=2)
