"""A coordinator whose gRPC listener stops accepting, with the real binaries.

gRPC core 1.51 stops accepting for good after one accept fails with
anything but EAGAIN (here EMFILE: the coordinator runs under a limit of 64
open files, which bare TCP connects that send nothing fill, as any client
can, without a token: audit-s30-grpc F1). Before, the replica went on
serving its open connections only, health over them SERVING, while every
new connection waited in the kernel's accept queue for ever. Now it sees
connections wait there look after look (coordinator/listener.h), says
so, drains and exits 1, for its supervisor to restart it.
"""
import os
import shutil
import socket
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import ferry_harness  # noqa: E402

import grpc  # noqa: E402


class ListenerStops(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ferry-listener-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        ferry_harness.generate_stubs(os.path.join(self.tmp, "gen"))
        self.etcd = ferry_harness.Etcd(self.tmp)
        self.addCleanup(self.etcd.stop)
        self.etcd.start()

    def test_a_listener_that_stopped_accepting_ends_the_process(self):
        from ferry.v1 import coordinator_pb2, coordinator_pb2_grpc
        coord = ferry_harness.Coordinator(self.tmp, self.etcd.endpoint, name="emfile")
        coord.args = ["prlimit", "--nofile=64:64", "--", *coord.args]
        coord.start()
        self.addCleanup(coord.stop)
        channel = grpc.insecure_channel(coord.target)
        self.addCleanup(channel.close)
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        stub.List(coordinator_pb2.ListRequest(), timeout=10)

        socks = []
        try:
            for _ in range(84):  # past the 64 descriptors, with what it holds
                socks.append(socket.create_connection(("127.0.0.1", coord.port), timeout=5))
            ferry_harness.wait_until(lambda: coord.log_contains("Failed accept4"), 20,
                                     "gRPC to fail an accept (EMFILE)")
        finally:
            for s in socks:
                s.close()
        # The connections it had accepted close; those left in the accept
        # queue stay there, never accepted.
        ferry_harness.wait_until(lambda: coord.proc.poll() is not None, 30,
                                 "the coordinator to see its listener stopped, and exit")
        self.assertEqual(coord.proc.returncode, 1)
        self.assertTrue(coord.log_contains(
            f"the gRPC listener on port {coord.port} no longer accepts connections"))


    def test_a_connection_that_sends_nothing_is_closed_after_the_handshake_time(self):
        """10 s, where gRPC's default held it (and its descriptor) 120 s."""
        import time
        coord = ferry_harness.Coordinator(self.tmp, self.etcd.endpoint, name="silent")
        coord.start()
        self.addCleanup(coord.stop)
        with socket.create_connection(("127.0.0.1", coord.port), timeout=5) as s:
            s.settimeout(30)
            start = time.monotonic()
            try:
                while s.recv(4096):  # its SETTINGS, then nothing until it closes
                    pass
            except ConnectionResetError:
                pass  # closed by the server too; socket.timeout would fail the test
            self.assertLess(time.monotonic() - start, 30)


if __name__ == "__main__":
    unittest.main()
