"""A Register repeated by its caller after its answer was lost (coordinator/
registry_ops.c, register_repeat), with a real etcd and real coordinators:

- the repeat of a Register that etcd applied, on the caller's own lease,
  with its own access token and the same metadata, is answered as
  registered (the record, its lease, its token), where it was refused
  ALREADY_EXISTS: a replica killed after etcd applied the first (its reply
  never came) left the worker a record it could neither use nor register
  again while it kept its session lease. Here the first try's replica is
  held after etcd applied it (FERRY_TEST_WRITE_THROUGH_GATE) and killed,
  and the repeat goes to the other replica;
- anything else that finds the ID taken is still ALREADY_EXISTS: another
  token, other metadata (another operation), another owner, another lease,
  a lease of its own, no token (the coordinator's pick, which the caller
  could not know), and the record is unchanged.

Run with /usr/bin/python3, from CTest (python_register_repeat).
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

TOKEN = "repeat-token-0123456789"


class RegisterRepeat(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ferry-py-repeat-")
        self.procs = []
        ferry_harness.generate_stubs(os.path.join(self.tmp, "gen"))
        from ferry.v1 import coordinator_pb2, coordinator_pb2_grpc, types_pb2
        self.pb, self.cpb, self.grpc_mod = types_pb2, coordinator_pb2, coordinator_pb2_grpc
        self.etcd = ferry_harness.Etcd(self.tmp)
        self.etcd.start()
        self.gate = os.path.join(self.tmp, "gate")
        self.held = ferry_harness.Coordinator(
            self.tmp, self.etcd.endpoint, name="held", ttl=600,
            env={"FERRY_TEST_WRITE_THROUGH_GATE": self.gate})
        self.other = ferry_harness.Coordinator(self.tmp, self.etcd.endpoint, name="other",
                                               ttl=600)
        self.held.start()
        self.other.start()
        self.channels = []

    def tearDown(self):
        for ch in self.channels:
            ch.close()
        ferry_harness.kill(self.held.proc)
        self.other.stop()
        self.etcd.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def stub(self, coordinator):
        ch = grpc.insecure_channel(coordinator.target)
        self.channels.append(ch)
        return self.grpc_mod.CoordinatorStub(ch)

    def metadata(self):
        return self.pb.RdmaMetadata(
            version=1, kind=self.pb.OPERATION_KIND_WRITE, worker_address=b"\x01" * 64,
            descriptors=[self.pb.Descriptor(address=0x10000, size=4096,
                                            device=self.pb.Device(kind=self.pb.DEVICE_KIND_HOST),
                                            rkey=b"k" * 32)],
            notification_key=os.urandom(16), worker_name="py-receiver", hostname="localhost")

    def request(self, rid, md, lease, token=TOKEN, owner="py"):
        return self.cpb.RegisterRequest(request_id=rid, metadata=md, access_token=token,
                                        owner=owner, lease_id=lease.lease_id,
                                        lease_token=lease.lease_token)

    def etcd_record(self, rid):
        """The record's bytes and mod revision, straight from etcd (None: absent)."""
        key = base64.b64encode(f"/ferry/ops/{rid}".encode()).decode()
        req = urllib.request.Request(self.etcd.endpoint + "/v3/kv/range",
                                     data=json.dumps({"key": key}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            kvs = json.load(r).get("kvs", [])
        return (kvs[0]["value"], kvs[0]["mod_revision"]) if kvs else None

    def test_repeat_after_the_answer_was_lost(self):
        other = self.stub(self.other)
        session = other.Register(self.cpb.RegisterRequest(
            request_id="rr-session", metadata=self.metadata(), access_token=TOKEN,
            ttl_seconds=600), timeout=10)
        md = self.metadata()
        first = {}

        def register_on_held():
            try:
                first["answer"] = self.stub(self.held).Register(
                    self.request("rr-x", md, session), timeout=30)
            except grpc.RpcError as e:
                first["error"] = e.code()

        t = threading.Thread(target=register_on_held)
        t.start()
        ferry_harness.wait_until(lambda: self.etcd_record("rr-x") is not None, 20,
                                 "etcd to apply the first Register")
        stored = self.etcd_record("rr-x")
        ferry_harness.kill(self.held.proc)  # its answer never goes out
        t.join(30)
        self.assertFalse(t.is_alive())
        self.assertEqual(first.get("error"), grpc.StatusCode.UNAVAILABLE, first)

        again = other.Register(self.request("rr-x", md, session), timeout=10)
        self.assertEqual(again.lease_id, session.lease_id)
        self.assertEqual(again.access_token, TOKEN)
        self.assertEqual(again.lease_token, session.lease_token)
        self.assertEqual(self.etcd_record("rr-x"), stored)  # nothing written
        found = other.Lookup(self.cpb.LookupRequest(request_id="rr-x", access_token=TOKEN),
                             timeout=10)
        self.assertEqual(found.operation.metadata.notification_key, md.notification_key)

    def test_anything_but_the_same_register_is_refused(self):
        other = self.stub(self.other)
        session = other.Register(self.cpb.RegisterRequest(
            request_id="rr-session", metadata=self.metadata(), access_token=TOKEN,
            ttl_seconds=600), timeout=10)
        second = other.Register(self.cpb.RegisterRequest(
            request_id="rr-second", metadata=self.metadata(), access_token=TOKEN,
            ttl_seconds=600), timeout=10)
        md = self.metadata()
        other.Register(self.request("rr-y", md, session), timeout=10)
        stored = self.etcd_record("rr-y")
        again = other.Register(self.request("rr-y", md, session), timeout=10)
        self.assertEqual(again.lease_id, session.lease_id)

        refused = {
            "another token": self.request("rr-y", md, session, token="another-token-0123456789"),
            "no token": self.request("rr-y", md, session, token=""),
            "other metadata": self.request("rr-y", self.metadata(), session),
            "another owner": self.request("rr-y", md, session, owner="someone-else"),
            "another lease": self.request("rr-y", md, second),
            "a lease of its own": self.cpb.RegisterRequest(
                request_id="rr-y", metadata=md, access_token=TOKEN, owner="py",
                ttl_seconds=600),
        }
        for what, req in refused.items():
            with self.subTest(what):
                with self.assertRaises(grpc.RpcError) as cm:
                    other.Register(req, timeout=10)
                self.assertEqual(cm.exception.code(), grpc.StatusCode.ALREADY_EXISTS,
                                 cm.exception.details())
                self.assertIn("request_id 'rr-y' is already registered", cm.exception.details())
        self.assertEqual(self.etcd_record("rr-y"), stored)


if __name__ == "__main__":
    unittest.main()
