"""A coordinator that requires TLS and client certificates: a Python client
and ferry-worker processes with a certificate get through; without one, or in
plaintext, they are refused. Certificates are made at test time
(tests/rpc/make_certs.sh: a throwaway CA, server name ferry.test).
"""
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import ferry_harness  # noqa: E402

import grpc  # noqa: E402

WORKER = os.path.join(ferry_harness.BUILD_DIR, "worker", "ferry-worker")
TOKEN = "tls-token-0123456789"
CLUSTER = None


def setUpModule():
    global CLUSTER
    CLUSTER = ferry_harness.Cluster(ttl=3, tls=True)


def tearDownModule():
    rc = CLUSTER.close()
    if rc != 0:
        raise AssertionError(f"coordinator exited with {rc} after SIGTERM")


def read(name):
    with open(os.path.join(CLUSTER.certs, name), "rb") as f:
        return f.read()


class Tls(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        from ferry.v1 import coordinator_pb2, coordinator_pb2_grpc, types_pb2
        cls.pb, cls.cpb, cls.grpc_mod = types_pb2, coordinator_pb2, coordinator_pb2_grpc
        cls.options = [("grpc.ssl_target_name_override", "ferry.test")]

    def stub(self, with_cert=True):
        creds = grpc.ssl_channel_credentials(
            root_certificates=read("ca.pem"),
            private_key=read("client.key") if with_cert else None,
            certificate_chain=read("client.pem") if with_cert else None)
        channel = grpc.secure_channel(CLUSTER.coordinator.target, creds, options=self.options)
        self.addCleanup(channel.close)
        return self.grpc_mod.CoordinatorStub(channel)

    def get_unknown(self, stub):
        return stub.Get(self.cpb.GetRequest(request_id="tls-nobody"), timeout=5)

    def test_client_with_certificate_gets_through(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.get_unknown(self.stub())
        # An answer from the service itself: TLS and the certificate passed.
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_client_without_certificate_is_refused(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.get_unknown(self.stub(with_cert=False))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)

    def test_plaintext_is_refused(self):
        channel = grpc.insecure_channel(CLUSTER.coordinator.target)
        self.addCleanup(channel.close)
        with self.assertRaises(grpc.RpcError) as cm:
            self.get_unknown(self.grpc_mod.CoordinatorStub(channel))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)

    def worker(self, cmd, rid, tls=True):
        args = [WORKER, cmd, "--coordinator", CLUSTER.coordinator.target, "--request-id", rid,
                "--token", TOKEN, "--size", "1MiB", "--timeout", "20", "--quiet"]
        if tls:
            args += ["--tls-ca", os.path.join(CLUSTER.certs, "ca.pem"),
                     "--tls-cert", os.path.join(CLUSTER.certs, "client.pem"),
                     "--tls-key", os.path.join(CLUSTER.certs, "client.key"),
                     "--tls-server-name", "ferry.test"]
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def test_workers_over_tls(self):
        recv = self.worker("recv", "tls-1")
        self.assertIn("registered", recv.stdout.readline())
        send = self.worker("send", "tls-1")
        out, err = send.communicate(timeout=60)
        self.assertEqual(send.returncode, 0, err)
        out, err = recv.communicate(timeout=60)
        self.assertEqual(recv.returncode, 0, err)

    def test_worker_without_tls_is_refused(self):
        recv = self.worker("recv", "tls-2", tls=False)
        out, err = recv.communicate(timeout=60)
        self.assertNotEqual(recv.returncode, 0)
        self.assertIn("UNAVAILABLE", err)


if __name__ == "__main__":
    unittest.main(verbosity=2)
