"""ferry-coordinator's metrics endpoint against many connections: what a
client of the unauthenticated /metrics port may hold is bounded (at most 32
connections, 8 per address, each closed after 10 s idle), so idle
connections to it cannot take the file descriptors the gRPC port needs; and
/metrics still answers while the process holds more than FD_SETSIZE (1024)
descriptors, as a coordinator with many gRPC clients does. Each test runs
its own etcd and coordinator, watched through /proc.

The tests hold about 1,100 sockets of their own, so they raise their own
RLIMIT_NOFILE soft limit to the hard one, and skip (saying so) when the hard
limit is too low.

Run with /usr/bin/python3, from CTest (python_metrics_limits).
"""
import os
import resource
import socket
import sys
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import ferry_harness  # noqa: E402

import grpc  # noqa: E402

MANY = 1100            # past FD_SETSIZE and the usual soft limit of 1024
NEEDED = MANY + 400    # our own sockets, grpc's, the harness's
HTTP_MAX_CONNECTIONS = 32   # metrics.c METRICS_HTTP_MAX_CONNECTIONS
HTTP_MAX_PER_ADDRESS = 8    # metrics.c METRICS_HTTP_MAX_PER_ADDRESS
SLACK = 16             # descriptors the coordinator may open meanwhile (etcd, curl)


def set_soft_limit(n):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def hard_limit():
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def soft_limit_of(pid):
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError(f"no 'Max open files' in /proc/{pid}/limits")


def accept_queue(port):
    """Connections waiting in the accept queue of the listener on port
    (rx_queue of a LISTEN socket in /proc/net/tcp or tcp6)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
                    return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"nothing listens on port {port}")


def connect_from(source, port):
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    return s


def closed_by_peer(s):
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.status == 200 and b"ferry_build_info" in r.read()


def try_scrape(port):
    try:
        return scrape(port)
    except OSError:
        return False


def grpc_answers(target):
    """A new connection to the gRPC port carries a call (Get of an unknown
    ID: NOT_FOUND is an answer)."""
    from ferry.v1 import coordinator_pb2, coordinator_pb2_grpc
    with grpc.insecure_channel(target) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        try:
            stub.Get(coordinator_pb2.GetRequest(request_id="limits-nobody"), timeout=10)
        except grpc.RpcError as e:
            return e.code() == grpc.StatusCode.NOT_FOUND
        return True


def loopback_aliases_work():
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
        return True
    except OSError:
        return False


class MetricsLimits(unittest.TestCase):
    def setUp(self):
        if hard_limit() < NEEDED:
            self.skipTest(f"RLIMIT_NOFILE hard limit {hard_limit()} < {NEEDED}: "
                          f"cannot hold {MANY} connections")
        if not loopback_aliases_work():
            self.skipTest("cannot bind 127.0.0.2 (needed to connect from other addresses)")
        self.socks = []
        self.cluster = None

    def tearDown(self):
        for s in self.socks:
            s.close()
        if self.cluster is not None:
            rc = self.cluster.close()
            if rc != 0:
                raise AssertionError(f"coordinator exited with {rc} after SIGTERM")
        set_soft_limit(hard_limit())

    def start(self, coordinator_soft_limit):
        """A cluster whose processes start with this soft limit (the
        coordinator may raise its own); then our own soft limit is raised
        to the hard one."""
        set_soft_limit(coordinator_soft_limit)
        try:
            # A free port may be taken by another process (the tests run in
            # parallel) before the coordinator binds it: then another one.
            for attempt in range(3):
                self.metrics_port = ferry_harness.free_port()
                try:
                    self.cluster = ferry_harness.Cluster(
                        ttl=120, extra=("--metrics-listen", f"127.0.0.1:{self.metrics_port}"))
                    break
                except RuntimeError as e:
                    if "cannot serve on" not in str(e) or attempt == 2:
                        raise
        finally:
            set_soft_limit(hard_limit())
        self.pid = self.cluster.coordinator.proc.pid
        self.target = self.cluster.coordinator.target
        ferry_harness.wait_until(lambda: try_scrape(self.metrics_port), 20, "a first scrape")

    def settle(self, port, fd_limit):
        """Waits until the coordinator took every connection made to port
        (none left in the accept queue) or ran out of descriptors trying."""
        ferry_harness.wait_until(
            lambda: accept_queue(port) == 0 or open_fds(self.pid) >= fd_limit - SLACK, 30,
            f"the coordinator to take the connections to port {port}")

    def test_idle_connections_to_metrics_leave_grpc_serving(self):
        # Started with the usual soft limit of 1024: before the fix every
        # idle connection to /metrics was kept for ever, the process ran
        # out of descriptors and gRPC stopped accepting for good.
        self.start(1024)
        limit = soft_limit_of(self.pid)
        before = open_fds(self.pid)
        for _ in range(MANY):
            self.socks.append(connect_from("127.0.0.2", self.metrics_port))
        self.settle(self.metrics_port, limit)

        self.assertTrue(grpc_answers(self.target), "gRPC takes new connections")
        self.assertTrue(scrape(self.metrics_port), "another address can still scrape")
        self.assertLessEqual(open_fds(self.pid), before + HTTP_MAX_PER_ADDRESS + SLACK)
        ferry_harness.wait_until(
            lambda: sum(closed_by_peer(s) for s in self.socks) >= MANY - HTTP_MAX_PER_ADDRESS,
            30, "connections past the per-address bound to be closed")
        for s in self.socks:
            s.close()
        self.socks = []
        self.assertTrue(grpc_answers(self.target), "gRPC takes new connections after")
        self.assertTrue(scrape(self.metrics_port))
        # And it raised its own soft limit from the 1024 it started with.
        self.assertEqual(limit, hard_limit())

    def test_idle_connections_are_closed_and_bounded(self):
        self.start(hard_limit())
        before = open_fds(self.pid)
        sources = [f"127.0.0.{i}" for i in range(3, 8)]  # 5 addresses x 8: past 32
        for source in sources:
            for _ in range(HTTP_MAX_PER_ADDRESS):
                self.socks.append(connect_from(source, self.metrics_port))
        self.settle(self.metrics_port, soft_limit_of(self.pid))

        self.assertLessEqual(open_fds(self.pid), before + HTTP_MAX_CONNECTIONS + SLACK)
        # Silent connections are closed (10 s idle), those held and those
        # turned away alike: none is kept for ever.
        ferry_harness.wait_until(lambda: all(closed_by_peer(s) for s in self.socks), 60,
                                 "every idle connection to be closed by the coordinator")
        ferry_harness.wait_until(lambda: try_scrape(self.metrics_port), 30,
                                 "a scrape after the idle connections")

    def test_scrape_while_holding_more_than_fd_setsize(self):
        # Before the fix, libmicrohttpd polled with select() and closed every
        # accepted socket numbered FD_SETSIZE (1024) or more: with that many
        # gRPC clients connected, /metrics failed.
        self.start(hard_limit())
        before = open_fds(self.pid)
        for _ in range(MANY):
            self.socks.append(connect_from("127.0.0.1", self.cluster.coordinator.port))
        port = self.cluster.coordinator.port
        ferry_harness.wait_until(
            lambda: accept_queue(port) == 0 and open_fds(self.pid) >= before + MANY - SLACK, 30,
            f"the coordinator to hold {MANY} gRPC connections")
        self.assertTrue(scrape(self.metrics_port), "/metrics answers past FD_SETSIZE")
        self.assertTrue(grpc_answers(self.target))


if __name__ == "__main__":
    result = unittest.main(verbosity=2, exit=False).result
    if not result.wasSuccessful():
        sys.exit(1)
    if result.testsRun and len(result.skipped) == result.testsRun:
        print("SKIP: every test skipped (see above)")
        sys.exit(77)
