"""etcd out of space (its NOSPACE alarm: every write refused, whoever sends
it, until an operator frees space and disarms it), against a real etcd
with a small --quota-backend-bytes and a real coordinator:

- a claim whose lease ends while etcd refuses writes is marked ERRORED once
  etcd takes writes again: its expiry waits (ferry_claim_ends_waiting) and
  is tried again, where it was tried once and the record stayed CLAIMED by
  a dead claimant until a replica restarted;
- a Register refused meanwhile says that etcd is out of space, not only
  "resource exhausted", which the coordinator's own back-pressure says too.

Run with /usr/bin/python3, from CTest (python_etcd_nospace).
"""
import base64
import json
import os
import sys
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import ferry_harness  # noqa: E402

import grpc  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

TOKEN = "nospace-token-0123456789"
QUOTA = 16 << 20  # etcd's backend quota: filled in a second


def gateway(endpoint, path, body):
    """POSTs body to etcd's JSON gateway; (True, reply) or (False, error text)."""
    req = urllib.request.Request(endpoint + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return True, json.load(r)
    except urllib.error.HTTPError as e:
        return False, e.read().decode(errors="replace")


def b64(text):
    return base64.b64encode(text.encode()).decode()


class EtcdOutOfSpace(unittest.TestCase):
    def setUp(self):
        self.cluster = ferry_harness.Cluster(
            ttl=600, extra=("--metrics-listen", "127.0.0.1:0"),
            etcd_extra=("--quota-backend-bytes", str(QUOTA)))
        self.endpoint = self.cluster.etcd.endpoint
        self.metrics_port = self.cluster.coordinator.metrics_port()
        ferry_harness.generate_stubs(self.cluster.gen_dir)
        from ferry.v1 import coordinator_pb2, coordinator_pb2_grpc, types_pb2
        self.pb, self.cpb = types_pb2, coordinator_pb2
        self.channel = grpc.insecure_channel(self.cluster.coordinator.target)
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)

    def tearDown(self):
        self.channel.close()
        rc = self.cluster.close()
        if rc != 0:
            raise AssertionError(f"coordinator exited with {rc} after SIGTERM")

    def register(self, rid, **kw):
        md = self.pb.RdmaMetadata(
            version=1, kind=self.pb.OPERATION_KIND_WRITE, worker_address=b"\x01" * 64,
            descriptors=[self.pb.Descriptor(address=0x10000, size=4096,
                                            device=self.pb.Device(kind=self.pb.DEVICE_KIND_HOST),
                                            rkey=b"k" * 32)],
            notification_key=os.urandom(16), worker_name="py-receiver", hostname="localhost")
        return self.stub.Register(self.cpb.RegisterRequest(
            request_id=rid, metadata=md, access_token=TOKEN, owner="py", **kw), timeout=10)

    def state(self, rid):
        return self.stub.Get(self.cpb.GetRequest(request_id=rid, linearizable=True),
                             timeout=10).operation

    def waiting(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=10) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "ferry_claim_ends_waiting":
                    return s.value
        raise AssertionError("no ferry_claim_ends_waiting in /metrics")

    def fill(self):
        """Puts 512 KiB values outside the coordinator's prefix until etcd
        refuses one for space: its NOSPACE alarm is then raised."""
        value = base64.b64encode(os.urandom(512 << 10)).decode()
        for n in range(4 * QUOTA // (512 << 10)):
            ok, said = gateway(self.endpoint, "/v3/kv/put",
                               {"key": b64(f"/filler/{n}"), "value": value})
            if not ok:
                self.assertIn("database space exceeded", said)
                return
        self.fail("etcd never ran out of space")

    def free_space(self):
        """What an operator does: delete, compact, defragment, disarm."""
        ok, said = gateway(self.endpoint, "/v3/kv/deleterange",
                           {"key": b64("/filler/"), "range_end": b64("/filler0")})
        self.assertTrue(ok, said)
        revision = int(said["header"]["revision"])
        for path, body in (("/v3/kv/compaction", {"revision": revision, "physical": True}),
                           ("/v3/maintenance/defragment", {})):
            ok, said = gateway(self.endpoint, path, body)
            self.assertTrue(ok, f"{path}: {said}")
        ok, said = gateway(self.endpoint, "/v3/maintenance/alarm", {"action": "GET"})
        self.assertTrue(ok, said)
        self.assertTrue(said.get("alarms"), said)
        for alarm in said["alarms"]:
            ok, said = gateway(self.endpoint, "/v3/maintenance/alarm",
                               {"action": "DEACTIVATE", "memberID": alarm["memberID"],
                                "alarm": alarm["alarm"]})
            self.assertTrue(ok, said)
        ok, said = gateway(self.endpoint, "/v3/maintenance/alarm", {"action": "GET"})
        self.assertTrue(ok, said)
        self.assertFalse(said.get("alarms"), said)

    def test_claim_that_ends_while_etcd_is_full_is_marked_once_it_has_room(self):
        owner = self.register("ns-x", ttl_seconds=600)
        claimant = self.register("ns-y", ttl_seconds=600)  # a lease for the claim
        self.stub.Claim(self.cpb.ClaimRequest(
            request_id="ns-x", access_token=TOKEN, claimant="py-writer",
            kind=self.pb.OPERATION_KIND_WRITE, lease_id=claimant.lease_id,
            lease_token=claimant.lease_token), timeout=10)
        self.fill()

        # Refused for want of space, and saying so, on the caller's lease
        # (a shared transaction) and on a lease of its own (a grant).
        for kw in ({"lease_id": owner.lease_id, "lease_token": owner.lease_token},
                   {"ttl_seconds": 600}):
            with self.assertRaises(grpc.RpcError) as cm:
                self.register("ns-z", **kw)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
            self.assertIn("etcd is out of space", cm.exception.details())

        # The claimant dies: its lease ends (etcd revokes under NOSPACE).
        ok, said = gateway(self.endpoint, "/v3/lease/revoke", {"ID": claimant.lease_id})
        self.assertTrue(ok, said)
        ferry_harness.wait_until(lambda: self.waiting() == 1, 30,
                                 "the expiry etcd refused to wait for another try")
        self.assertEqual(self.state("ns-x").state, self.pb.OPERATION_STATE_CLAIMED)

        self.free_space()
        ferry_harness.wait_until(
            lambda: self.state("ns-x").state != self.pb.OPERATION_STATE_CLAIMED, 60,
            "the expiry to be made once etcd has room")
        op = self.state("ns-x")
        self.assertEqual(op.state, self.pb.OPERATION_STATE_ERRORED)
        self.assertIn("claim expired: claimant 'py-writer'", op.error_message)
        ferry_harness.wait_until(lambda: self.waiting() == 0, 10, "nothing left waiting")


if __name__ == "__main__":
    unittest.main()
