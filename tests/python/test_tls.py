"""A coordinator that requires TLS and client certificates: a Python client
and ferry-worker processes with a certificate get through; without one, or in
plaintext, they are refused. Certificates are made at test time
(tests/rpc/make_certs.sh: a throwaway CA, server name ferry.test).

Renewed certificates: a coordinator whose certificate files are replaced
(as a Kubernetes Secret's update, or cert-manager's renewal, replaces them)
serves the new ones to the next connection without a restart, and takes
client certificates of the new CA; files that cannot be used keep the
previous ones. A client (here libferry's, through the Python package;
the coordinator's etcd channel is the same code) takes its renewed
certificate and CA at its next handshake too (gRPC's file watcher, every
FERRY_TLS_REFRESH_S seconds): before, it kept the files read when its
channel was made until it was restarted.
"""
import os
import shutil
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


class ServerOnlyTls(unittest.TestCase):
    """--tls-cert and --tls-key without --tls-ca: TLS, no client
    certificates asked for. The coordinator aborted at its first handshake
    (gRPC 1.51 asserts that a reloadable server config has roots)."""

    def test_serves_without_a_ca(self):
        from ferry.v1 import coordinator_pb2, coordinator_pb2_grpc
        coord = ferry_harness.Coordinator(
            CLUSTER.tmp, CLUSTER.etcd.endpoint, name="noca",
            extra=("--tls-cert", os.path.join(CLUSTER.certs, "server.pem"),
                   "--tls-key", os.path.join(CLUSTER.certs, "server.key")))
        coord.start()
        self.addCleanup(coord.stop)
        creds = grpc.ssl_channel_credentials(root_certificates=read("ca.pem"))
        channel = grpc.secure_channel(coord.target, creds,
                                      options=[("grpc.ssl_target_name_override", "ferry.test")])
        self.addCleanup(channel.close)
        with self.assertRaises(grpc.RpcError) as caught:
            coordinator_pb2_grpc.CoordinatorStub(channel).Get(
                coordinator_pb2.GetRequest(request_id="noca-nobody"), timeout=10)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.NOT_FOUND,
                         caught.exception.details())
        self.assertIsNone(coord.proc.poll())
        self.assertEqual(coord.stop(), 0)


class Renewal(unittest.TestCase):
    """One coordinator of its own, on files in a directory the test swaps."""

    def setUp(self):
        from ferry.v1 import coordinator_pb2, coordinator_pb2_grpc
        self.cpb, self.grpc_mod = coordinator_pb2, coordinator_pb2_grpc
        self.tmp = os.path.join(CLUSTER.tmp, f"renew-{self._testMethodName}")
        self.old = ferry_harness.make_certs(os.path.join(self.tmp, "old"))
        self.new = ferry_harness.make_certs(os.path.join(self.tmp, "new"))
        self.live = os.path.join(self.tmp, "live")
        os.makedirs(self.live)
        self.install(self.old)
        self.coord = ferry_harness.Coordinator(
            self.tmp, CLUSTER.etcd.endpoint, name="renew",
            extra=("--tls-cert", os.path.join(self.live, "server.pem"),
                   "--tls-key", os.path.join(self.live, "server.key"),
                   "--tls-ca", os.path.join(self.live, "ca.pem")))
        self.coord.start()
        self.addCleanup(self.coord.stop)

    def install(self, certs):
        """Replaces the live files, each by a rename (never half written)."""
        for name in ("server.pem", "server.key", "ca.pem"):
            shutil.copy(os.path.join(certs, name), os.path.join(self.live, name + ".tmp"))
            os.rename(os.path.join(self.live, name + ".tmp"), os.path.join(self.live, name))

    def answer(self, certs):
        """The status a new connection with certs' CA and client certificate
        gets for a Get of an unknown ID: NOT_FOUND once TLS passed."""
        def read_cert(name):
            with open(os.path.join(certs, name), "rb") as f:
                return f.read()
        creds = grpc.ssl_channel_credentials(root_certificates=read_cert("ca.pem"),
                                             private_key=read_cert("client.key"),
                                             certificate_chain=read_cert("client.pem"))
        channel = grpc.secure_channel(self.coord.target, creds,
                                      options=[("grpc.ssl_target_name_override", "ferry.test")])
        try:
            self.grpc_mod.CoordinatorStub(channel).Get(
                self.cpb.GetRequest(request_id="renew-nobody"), timeout=5)
        except grpc.RpcError as e:
            return e.code()
        finally:
            channel.close()
        return grpc.StatusCode.OK

    def test_renewed_certificates_are_served_without_a_restart(self):
        self.assertEqual(self.answer(self.old), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(self.answer(self.new), grpc.StatusCode.UNAVAILABLE)
        self.install(self.new)
        self.assertEqual(self.answer(self.new), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(self.answer(self.old), grpc.StatusCode.UNAVAILABLE)
        self.assertIsNone(self.coord.proc.poll())

    def test_unusable_files_keep_the_certificates_read_before(self):
        os.unlink(os.path.join(self.live, "server.key"))  # cannot be read
        self.assertEqual(self.answer(self.old), grpc.StatusCode.NOT_FOUND)
        self.assertTrue(self.coord.log_contains("cannot be used; serving the certificates"))
        shutil.copy(os.path.join(self.old, "server.key"), os.path.join(self.live, "server.key"))
        with open(os.path.join(self.live, "server.pem.tmp"), "w") as f:
            f.write("not a certificate\n")
        os.rename(os.path.join(self.live, "server.pem.tmp"),
                  os.path.join(self.live, "server.pem"))
        self.assertEqual(self.answer(self.old), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(self.answer(self.new), grpc.StatusCode.UNAVAILABLE)
        # A usable set afterwards is taken.
        self.install(self.new)
        self.assertEqual(self.answer(self.new), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(self.answer(self.old), grpc.StatusCode.UNAVAILABLE)

    def test_a_client_takes_its_renewed_certificate_without_a_restart(self):
        """A libferry client (ferry.Coordinator, one channel for its life)
        publishes through this coordinator; then the CA changes: the
        client's files are renewed (the new CA's), and the coordinator is
        restarted on the same port knowing only the new CA. The client's
        next publishes go through once it has read its renewed files (gRPC's
        file watcher, FERRY_TLS_REFRESH_S=1 here); before, its channel kept
        the files read when it was made and was refused until restarted."""
        env = dict(os.environ, FERRY_TLS_REFRESH_S="1")
        if subprocess.run([sys.executable, "-c", "import ferry"], env=env,
                          capture_output=True).returncode != 0:
            self.skipTest("the Python package ferry is not built (PYTHONPATH)")
        client = os.path.join(self.tmp, "client")
        os.makedirs(client)

        def install_client(certs):
            for name in ("client.pem", "client.key", "ca.pem"):
                shutil.copy(os.path.join(certs, name), os.path.join(client, name + ".tmp"))
                os.rename(os.path.join(client, name + ".tmp"), os.path.join(client, name))

        install_client(self.old)
        script = (
            "import sys, ferry\n"
            "conn = ferry.Connector('renew')\n"
            f"coord = ferry.Coordinator({self.coord.target!r}, timeout=3, tls=dict(\n"
            f"    ca_file={os.path.join(client, 'ca.pem')!r},\n"
            f"    cert_file={os.path.join(client, 'client.pem')!r},\n"
            f"    key_file={os.path.join(client, 'client.key')!r}, server_name='ferry.test'))\n"
            "for line in sys.stdin:\n"
            "    buf = bytearray(64)\n"
            "    try:\n"
            "        with conn.create_writable([ferry.Descriptor(buf)]) as op:\n"
            f"            op.publish(coord, line.strip(), {TOKEN!r})\n"
            "        print('ok', flush=True)\n"
            "    except Exception as e:\n"
            "        print('err', type(e).__name__, e, flush=True)\n")
        proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        answers = []

        def publish():
            proc.stdin.write(f"rn-{os.urandom(4).hex()}\n")
            proc.stdin.flush()
            answers.append(proc.stdout.readline().strip())
            return answers[-1] == "ok"

        try:
            self.assertTrue(publish(), answers)
            install_client(self.new)
            port = self.coord.port
            self.assertEqual(self.coord.stop(), 0)
            live2 = os.path.join(self.tmp, "live2")
            os.makedirs(live2)
            for name in ("server.pem", "server.key", "ca.pem"):
                shutil.copy(os.path.join(self.new, name), os.path.join(live2, name))
            again = ferry_harness.Coordinator(
                self.tmp, CLUSTER.etcd.endpoint, name="renew-again",
                extra=("--listen", f"127.0.0.1:{port}",
                       "--tls-cert", os.path.join(live2, "server.pem"),
                       "--tls-key", os.path.join(live2, "server.key"),
                       "--tls-ca", os.path.join(live2, "ca.pem")))
            again.start()
            self.addCleanup(again.stop)
            ferry_harness.wait_until(publish, 60, "a publish with the renewed certificate")
        finally:
            proc.stdin.close()
            err = proc.stderr.read()
            rc = proc.wait(30)
            proc.stdout.close()
            proc.stderr.close()
        self.assertEqual(rc, 0, err)
        self.assertEqual(answers[-1], "ok", answers[-5:])

if __name__ == "__main__":
    unittest.main(verbosity=2)
