"""The coordinator over an etcd that requires TLS and client certificates:
with --etcd-ca/--etcd-cert/--etcd-key it serves; without a client
certificate etcd refuses it, and it says UNAVAILABLE and NOT_SERVING; with
an expired one, its log says so, naming the file and the time.
Certificates are made at test time with openssl (a throwaway CA; etcd's
certificate names 127.0.0.1).
"""
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import ferry_harness  # noqa: E402

import grpc  # noqa: E402

TOKEN = "etcd-tls-token-0123456789"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_certs(d):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=ferry etcd ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign", cwd=d)
    # etcd's server certificate needs clientAuth too: with --client-cert-auth,
    # etcd 3.4's JSON gateway reaches its own gRPC server presenting it, and
    # without clientAuth every gateway call fails with 503 "connection closed".
    server_ext = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"
    for who, ext in [("server", server_ext),
                     ("client", "extendedKeyUsage=clientAuth\n")]:
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN=ferry {who}",
                cwd=d)
        with open(os.path.join(d, f"{who}.ext"), "w") as f:
            f.write(ext)
        openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{who}.pem", "-days", "2", "-extfile", f"{who}.ext",
                cwd=d)
    # The client's key again, in a certificate that ends as it is made.
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "expired.pem", "-days", "0", "-extfile", "client.ext",
            cwd=d)


def expired(path):
    """Whether the certificate at path has expired (openssl's -checkend 0)."""
    return subprocess.run(["openssl", "x509", "-in", path, "-noout", "-checkend", "0"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0


class TlsEtcd(ferry_harness.Etcd):
    def __init__(self, tmp, certs):
        super().__init__(tmp)
        self.certs = certs
        self.endpoint = f"https://127.0.0.1:{self.port}"

    def _spawn(self, log):
        c = lambda name: os.path.join(self.certs, name)  # noqa: E731
        return subprocess.Popen(
            ["etcd", "--name", "t", "--data-dir", os.path.join(self.tmp, "etcd"),
             "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
             "--listen-peer-urls", f"http://127.0.0.1:{self.peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer}",
             "--initial-cluster", f"t=http://127.0.0.1:{self.peer}",
             "--cert-file", c("server.pem"), "--key-file", c("server.key"),
             "--client-cert-auth", "--trusted-ca-file", c("ca.pem")],
            stdout=log, stderr=log)

    def healthy(self):
        # etcd refuses clients without a certificate, so ask with one.
        ctx = ssl.create_default_context(cafile=os.path.join(self.certs, "ca.pem"))
        ctx.load_cert_chain(os.path.join(self.certs, "client.pem"),
                            os.path.join(self.certs, "client.key"))
        try:
            with urllib.request.urlopen(self.endpoint + "/health", timeout=1,
                                        context=ctx) as r:
                return r.status == 200
        except OSError:
            return False


class CoordinatorOverTlsEtcd(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ferry-etcd-tls-")
        cls.certs = os.path.join(cls.tmp, "certs")
        os.makedirs(cls.certs)
        make_certs(cls.certs)
        gen = os.path.join(cls.tmp, "gen")
        ferry_harness.generate_stubs(gen)
        from ferry.v1 import coordinator_pb2, coordinator_pb2_grpc, types_pb2
        cls.pb, cls.cpb, cls.stubs = types_pb2, coordinator_pb2, coordinator_pb2_grpc
        cls.hpb, _ = ferry_harness.health_client(grpc.insecure_channel("127.0.0.1:1"), gen)
        cls.gen = gen
        cls.etcd = TlsEtcd(cls.tmp, cls.certs)
        cls.etcd.start()

    @classmethod
    def tearDownClass(cls):
        cls.etcd.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def coordinator(self, name, with_cert, cert="client.pem", key="client.key", more=()):
        c = lambda f: os.path.join(self.certs, f)  # noqa: E731
        extra = ["--etcd-ca", c("ca.pem"), *more]
        if with_cert:
            extra += ["--etcd-cert", c(cert)] + (["--etcd-key", c(key)] if key else [])
        coord = ferry_harness.Coordinator(self.tmp, self.etcd.endpoint, name=name, extra=extra)
        coord.start()
        self.addCleanup(coord.stop)
        channel = grpc.insecure_channel(coord.target)
        self.addCleanup(channel.close)
        _, check = ferry_harness.health_client(channel, self.gen)
        self.coord = coord
        return self.stubs.CoordinatorStub(channel), check

    def register(self, stub, rid):
        from test_coordinator import metadata
        return stub.Register(self.cpb.RegisterRequest(
            request_id=rid, metadata=metadata(self.pb), access_token=TOKEN), timeout=10)

    def test_with_client_certificate(self):
        stub, check = self.coordinator("tls-ok", with_cert=True)
        self.register(stub, "etcd-tls-1")
        got = stub.Lookup(self.cpb.LookupRequest(request_id="etcd-tls-1", access_token=TOKEN),
                          timeout=10)
        self.assertEqual(got.operation.request_id, "etcd-tls-1")
        r = check(self.hpb.HealthCheckRequest(service=""), timeout=10)
        self.assertEqual(r.status, self.hpb.HealthCheckResponse.SERVING)

    def test_one_file_with_the_certificate_and_its_key(self):
        """--etcd-cert alone, naming a file that holds the key too (curl
        takes one; gRPC is given it as the key): both APIs serve."""
        with open(os.path.join(self.certs, "both.pem"), "wb") as out:
            for name in ("client.pem", "client.key"):
                with open(os.path.join(self.certs, name), "rb") as f:
                    out.write(f.read())
        for api in ("grpc", "gateway"):
            with self.subTest(api=api):
                stub, check = self.coordinator(f"tls-both-{api}", with_cert=True, cert="both.pem",
                                               key=None, more=("--etcd-kv-api", api))
                self.register(stub, f"etcd-tls-both-{api}")
                r = check(self.hpb.HealthCheckRequest(service=""), timeout=10)
                self.assertEqual(r.status, self.hpb.HealthCheckResponse.SERVING)

    def test_without_client_certificate(self):
        stub, check = self.coordinator("tls-nocert", with_cert=False)
        with self.assertRaises(grpc.RpcError) as cm:
            self.register(stub, "etcd-tls-2")
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertIn("etcd", cm.exception.details())
        r = check(self.hpb.HealthCheckRequest(service=""), timeout=10)
        self.assertEqual(r.status, self.hpb.HealthCheckResponse.NOT_SERVING)

    def test_expired_client_certificate_is_named(self):
        path = os.path.join(self.certs, "expired.pem")
        ferry_harness.wait_until(lambda: expired(path), 10, "the certificate to expire")
        stub, check = self.coordinator("tls-expired", with_cert=True, cert="expired.pem")
        with self.assertRaises(grpc.RpcError) as cm:
            self.register(stub, "etcd-tls-3")
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)
        r = check(self.hpb.HealthCheckRequest(service=""), timeout=10)
        self.assertEqual(r.status, self.hpb.HealthCheckResponse.NOT_SERVING)
        ferry_harness.wait_until(
            lambda: self.coord.log_contains(f"client certificate {path} (--etcd-cert) expired at"),
            10, "the log to name the expired certificate")


if __name__ == "__main__":
    unittest.main(verbosity=2)
