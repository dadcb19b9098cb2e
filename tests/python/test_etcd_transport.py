"""The coordinator against an etcd that is not there or misbehaves, where
the fault is in how it reaches etcd rather than in etcd's answers:

  - an unreachable etcd (nothing listens) while the view waits to be
    loaded: the maintenance thread pings it at its interval, not back to
    back; the coordinator idles (little CPU) and does not warn per ping;
  - an https:// etcd with no --etcd-ca and no client certificate: the
    system's roots, on both KV APIs (gRPC 1.51 aborted the process);
  - a fake JSON gateway whose replies never end (a body, or one watch
    line, that streams without end): the request fails, or the watch
    stream ends and is started again, once ETCD_REPLY_MAX (64 MiB) has
    come, instead of buffering GBs.

Correctness only: the one bound on the coordinator itself is the CPU time
an idle process may take, and that is generous. Run with /usr/bin/python3
from CTest.
"""
import http.server
import json
import os
import re
import shutil
import socketserver
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import ferry_harness  # noqa: E402

IDLE_WINDOW = 2.0  # seconds over which an idle coordinator's CPU is read
IDLE_CPU_MAX = 0.5  # seconds of CPU it may take in that window
WARN_MAX = 5  # "etcd" warnings it may log in that window
REPLY_MAX_MIB = 64  # ETCD_REPLY_MAX (coordinator/etcd/etcd_int.h)
# A capped reply, held up to three times while it is parsed, and the
# process itself (a sanitizer build's own memory included).
RSS_MAX_KB = (3 * REPLY_MAX_MIB + 128) * 1024
BOUND = 60  # seconds: what "in a bounded time" means here


def cpu_seconds(pid):
    """utime + stime of pid, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rfind(")") + 2:].split()
    # After the command: state is field 3, utime 14, stime 15 (man 5 proc).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def unreachable_endpoint(scheme="http"):
    """A loopback URL where nothing listens (a port free a moment ago)."""
    return f"{scheme}://127.0.0.1:{ferry_harness.free_port()}"


class FakeGateway:
    """etcd's JSON gateway as a faulty member or proxy plays it, on a free
    loopback port. endless_body: every POST is answered 200 with a JSON
    body that never ends. Otherwise status, range and the rest answer as
    an empty etcd does, and a watch says "created" and then streams one
    line that never ends. Counts the POSTs per path."""

    CHUNK = b"a" * (1 << 20)

    def __init__(self, endless_body):
        self.endless_body = endless_body
        self.posts = {}
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with fake.lock:
                    fake.posts[self.path] = fake.posts.get(self.path, 0) + 1
                if fake.endless_body:
                    self.endless(b'{"header":{"revision":"1"},"leader":"1","x":"')
                elif self.path == "/v3/watch":
                    created = {"result": {"header": {"revision": "1"}, "created": True}}
                    self.endless(json.dumps(created).encode() + b"\n" + b'{"result":"')
                else:
                    body = json.dumps({"header": {"revision": "1"}, "leader": "1"}).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def endless(self, head):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(head), head))
                    while True:  # until the client hangs up
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(fake.CHUNK), fake.CHUNK))
                except OSError:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self, path):
        with self.lock:
            return self.posts.get(path, 0)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def peak_rss_kb(pid):
    """VmHWM of pid: the most resident memory it has had."""
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M).group(1))


class EtcdTransport(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ferry-etcd-transport-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.coords = []

    def tearDown(self):
        for coord in self.coords:
            ferry_harness.kill(coord.proc)

    def coordinator(self, endpoint, name, extra=()):
        coord = ferry_harness.Coordinator(self.tmp, endpoint, name=name, extra=extra)
        self.coords.append(coord)
        return coord

    def log_since(self, coord, offset):
        with open(coord.log_path, errors="replace") as f:
            f.seek(offset)
            return f.read()

    def test_an_unreachable_etcd_is_pinged_at_an_interval_not_back_to_back(self):
        for api in ("grpc", "gateway"):
            with self.subTest(kv_api=api):
                coord = self.coordinator(unreachable_endpoint(), f"idle-{api}",
                                         extra=("--etcd-kv-api", api))
                coord.start()
                # The view's load is pending (etcd was not ready at start)
                # and cannot run while etcd is unreachable.
                self.assertTrue(coord.log_contains("etcd not ready"))
                offset = os.path.getsize(coord.log_path)
                before = cpu_seconds(coord.proc.pid)
                time.sleep(IDLE_WINDOW)  # a measuring window, not a wait for a state
                used = cpu_seconds(coord.proc.pid) - before
                said = self.log_since(coord, offset)
                self.assertIsNone(coord.proc.poll(), "the coordinator exited")
                self.assertLess(used, IDLE_CPU_MAX,
                                f"an idle coordinator over an unreachable etcd took {used:.2f} s "
                                f"of CPU in {IDLE_WINDOW} s")
                warns = re.findall(r"^\S+ warn +etcd: .*$", said, re.M)
                self.assertLessEqual(len(warns), WARN_MAX,
                                     f"{len(warns)} etcd warnings in {IDLE_WINDOW} s: "
                                     f"{warns[:3]}")
                coord.stop()

    def test_https_etcd_without_a_ca_uses_the_system_roots(self):
        for api in ("grpc", "gateway"):
            with self.subTest(kv_api=api):
                coord = self.coordinator(unreachable_endpoint("https"), f"https-{api}",
                                         extra=("--etcd-kv-api", api))
                coord.start()  # raises if it exited (it aborted) first
                self.assertIsNone(coord.proc.poll())
                self.assertEqual(coord.stop(), 0)

    def fake_gateway(self, endless_body):
        fake = FakeGateway(endless_body)
        self.addCleanup(fake.close)
        return fake

    def test_an_endless_reply_body_fails_at_the_cap(self):
        fake = self.fake_gateway(endless_body=True)
        coord = self.coordinator(fake.endpoint, "endless-body",
                                 extra=("--etcd-kv-api", "gateway"))
        coord.start()
        ferry_harness.wait_until(lambda: coord.log_contains("(ETCD_REPLY_MAX)")
                                 or coord.proc.poll() is not None, BOUND,
                                 "the coordinator to give up on a reply at the cap")
        self.assertIsNone(coord.proc.poll(), "the coordinator exited")
        self.assertTrue(coord.log_contains(f"etcd's reply passed {REPLY_MAX_MIB} MiB"))
        self.assertLess(peak_rss_kb(coord.proc.pid), RSS_MAX_KB)
        coord.stop()

    def test_an_endless_watch_line_ends_the_stream_which_starts_again(self):
        fake = self.fake_gateway(endless_body=False)
        coord = self.coordinator(fake.endpoint, "endless-line",
                                 extra=("--etcd-kv-api", "gateway"))
        coord.start()
        # The second stream is the watch thread's restart after the first
        # line passed the cap.
        ferry_harness.wait_until(lambda: fake.count("/v3/watch") >= 2
                                 or coord.proc.poll() is not None, BOUND,
                                 "the watch to start a second stream")
        self.assertIsNone(coord.proc.poll(), "the coordinator exited")
        self.assertTrue(coord.log_contains(f"a line from etcd passed {REPLY_MAX_MIB} MiB"))
        self.assertLess(peak_rss_kb(coord.proc.pid), RSS_MAX_KB)
        coord.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
