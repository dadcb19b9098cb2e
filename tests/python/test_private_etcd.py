"""The private etcd a coordinator starts when it is given no --etcd
(coordinator/etcd_child.c), with the real binaries:

- its state directory must be ours alone to write: one another user owns
  (/tmp/ferry-<uid>, made first by someone else, when there is no HOME), or
  one others may write to, is refused before etcd starts, naming the
  directory; its etcd holds the key that mints lease tokens;
- its log is not opened through a link: an etcd.log that points elsewhere is
  refused, and the file it points at is left as it was; one grown past
  16 MiB is moved to etcd.log.1 at a start;
- a good one starts etcd with periodic compaction (without it, etcd keeps
  every revision until its quota stops every write), the coordinator
  serves, and etcd goes with the coordinator;
- an etcd that dies takes the coordinator with it (exit 1, saying so), for
  its supervisor to start both again: it used to stay up, NOT_SERVING, with
  etcd a zombie;
- its client and peer ports are unix sockets in the (0700) state
  directory: etcd listens on no TCP port. Its client port was a free
  loopback port, open to every local user, and one who bound it first (the
  port is on etcd's public command line) got root's password from the
  coordinator's first request. Its auth stays on: only root, whose password
  the coordinator keeps in the state directory (etcd-password, 0600), gets
  in; a request without a token is refused;
- the coordinator's key-values and watch reach it through the socket over
  etcd's gRPC API and over its JSON gateway (--etcd-kv-api);
- one coordinator per state directory: a second is refused, naming it, and
  the first serves on; an etcd killed with its socket left behind starts
  again on the same directory; an etcd that outlived its killed coordinator
  keeps the next one off (the lock is etcd's too) until it is gone: the next
  one waits for it up to 10 s (a supervisor's restart at once then works,
  with the records of before), then is refused, naming it;
- etcd's sockets are this user's alone whatever the umask, and etcd gets no
  ETCD_* variable (it refuses to start where one shadows a flag);
- a state directory from before (etcd data without auth) is taken over:
  auth turned on, its keys kept; a password file others may read, or one
  etcd refuses (data set up with another), stops the start with a message
  that names the file;
- a user besides root (one a local user could have added while auth was
  still off, on the first start) stops every start, naming it.
"""
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import ferry_harness  # noqa: E402


def coordinator(state_dir, port_file, extra=(), umask=None, env_extra=None, preexec_fn=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env["FERRY_ETCD_BIN"] = shutil.which("etcd") or "/usr/bin/etcd"
    env.update(env_extra or {})
    return subprocess.Popen([ferry_harness.COORDINATOR, "--listen", "127.0.0.1:0",
                             "--state-dir", state_dir, "--port-file", port_file, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            umask=-1 if umask is None else umask, preexec_fn=preexec_fn)


def cmdline(pid):
    with open(f"/proc/{pid}/cmdline") as f:
        return f.read().split("\0")


def children_of(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
                kids.append(int(entry))
    return kids


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path):
        super().__init__("localhost", timeout=10)
        self.socket_path = socket_path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def etcd_post(endpoint, path, body, token=None):
    """POSTs to etcd's JSON gateway at http://HOST:PORT or unix:///PATH:
    (reply, None) or (None, error reply)."""
    headers = {"Authorization": token} if token else {}
    if endpoint.startswith("unix://"):
        conn = UnixHTTPConnection(endpoint[len("unix://"):])
        try:
            conn.request("POST", path, body=json.dumps(body).encode(), headers=headers)
            r = conn.getresponse()
            reply = json.load(r)
            return (reply, None) if r.status == 200 else (None, reply)
        finally:
            conn.close()
    req = urllib.request.Request(endpoint + path, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r), None
    except urllib.error.HTTPError as e:
        return None, json.load(e)


def client_endpoint(state_dir, etcd_pid):
    """unix:///PATH of the private etcd's client socket, from its command line
    (unix://NAME, in the directory it runs in: the state directory)."""
    argv = cmdline(etcd_pid)
    url = argv[argv.index("--listen-client-urls") + 1]
    assert url.startswith("unix://") and "/" not in url[len("unix://"):], url
    return "unix://" + os.path.join(state_dir, url[len("unix://"):])


def tcp_listeners(pid):
    """The local ports of the TCP sockets pid listens on."""
    return [local for state, local, _ in ferry_harness.tcp_sockets(pid) if state == "0A"]


def b64(text):
    return base64.b64encode(text.encode()).decode()


class PrivateEtcd(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ferry-private-")
        self.state = os.path.join(self.tmp, "state")
        os.mkdir(self.state, 0o700)
        self.port_file = os.path.join(self.tmp, "port")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def refused(self):
        p = coordinator(self.state, self.port_file)
        out, _ = p.communicate(timeout=30)
        self.assertNotEqual(p.returncode, 0, out)
        self.assertFalse(os.path.exists(self.port_file), out)
        self.assertFalse(os.path.exists(os.path.join(self.state, "etcd")), out)
        return out

    @unittest.skipUnless(os.geteuid() == 0, "needs root to give the directory to another user")
    def test_a_directory_another_user_owns_is_refused(self):
        os.chown(self.state, 65534, 65534)
        out = self.refused()
        self.assertIn(self.state, out)
        self.assertIn("belongs to uid 65534", out)

    def test_a_directory_others_may_write_is_refused(self):
        os.chmod(self.state, 0o777)
        out = self.refused()
        self.assertIn(self.state, out)
        self.assertIn("others may write", out)

    def test_a_log_that_is_a_link_is_refused(self):
        victim = os.path.join(self.tmp, "victim")
        with open(victim, "w") as f:
            f.write("mine\n")
        os.symlink(victim, os.path.join(self.state, "etcd.log"))
        out = self.refused()
        self.assertIn("etcd.log", out)
        with open(victim) as f:
            self.assertEqual(f.read(), "mine\n")

    def test_a_private_directory_serves_with_compaction(self):
        p = coordinator(self.state, self.port_file)
        try:
            ferry_harness.wait_until(lambda: os.path.exists(self.port_file) or
                                     p.poll() is not None, 60, "the coordinator to listen")
            self.assertIsNone(p.poll(), p.stdout.read() if p.poll() is not None else "")
            etcds = [k for k in children_of(p.pid) if cmdline(k)[0].endswith("etcd")]
            self.assertEqual(len(etcds), 1)
            argv = cmdline(etcds[0])
            self.assertEqual(argv[argv.index("--auto-compaction-mode") + 1], "periodic")
            self.assertEqual(argv[argv.index("--auto-compaction-retention") + 1], "5m")
            self.assertEqual(os.stat(os.path.join(self.state, "etcd.log")).st_mode & 0o777, 0o600)
        finally:
            p.send_signal(signal.SIGTERM)
            out, _ = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 0)
        ferry_harness.wait_until(lambda: not os.path.exists(f"/proc/{etcds[0]}"), 10,
                                 "the private etcd to go")
        # A clean start and stop warns of nothing: the first probes, before
        # etcd listened, warned "etcd: unavailable" on every start.
        self.assertNotIn(" warn ", out)
        self.assertNotIn(" error ", out)

    def test_an_etcd_binary_that_is_not_there_is_named(self):
        """The cause is in the coordinator's own log: it said only "exited
        during start-up; see etcd.log"."""
        missing = os.path.join(self.tmp, "no-such-etcd")
        p = coordinator(self.state, self.port_file, env_extra={"FERRY_ETCD_BIN": missing})
        out, _ = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 1, out)
        self.assertIn(f"exited during start-up (exit 127): exec {missing}: "
                      "No such file or directory", out)
        self.assertIn("could not start a private etcd (no --etcd or FERRY_ETCD given)", out)
        self.assertFalse(os.path.exists(self.port_file), out)

    def test_a_log_grown_past_16_mib_is_moved_aside_at_start(self):
        """A log over 16 MiB at a start becomes etcd.log.1 (replacing the
        one before) and etcd writes a fresh one; a smaller one is appended
        to. Restarts used to append for ever."""
        log = os.path.join(self.state, "etcd.log")
        previous = log + ".1"
        with open(previous, "w") as f:
            f.write("the generation before\n")
        with open(log, "wb") as f:
            f.write(b"old line\n")
            f.truncate((16 << 20) + 1)  # sparse: no 16 MiB written
        os.chmod(log, 0o600)
        p, _ = self.serving()
        self.stop(p)
        self.assertEqual(os.path.getsize(previous), (16 << 20) + 1)
        with open(previous, "rb") as f:
            self.assertEqual(f.read(9), b"old line\n")
        size = os.path.getsize(log)
        self.assertGreater(size, 0)
        self.assertLess(size, 1 << 20)
        with open(log, "rb") as f:
            self.assertNotIn(b"old line", f.read())
        p, _ = self.serving()  # under the limit: appended to, nothing moved
        self.stop(p)
        self.assertGreater(os.path.getsize(log), size)
        self.assertEqual(os.path.getsize(previous), (16 << 20) + 1)

    def serving(self, extra=(), umask=None, env_extra=None, preexec_fn=None):
        """Starts a coordinator; returns it and its etcd's pid once it listens."""
        if os.path.exists(self.port_file):
            os.remove(self.port_file)
        p = coordinator(self.state, self.port_file, extra, umask, env_extra, preexec_fn)
        ferry_harness.wait_until(lambda: os.path.exists(self.port_file) or
                                 p.poll() is not None, 60, "the coordinator to listen")
        if p.poll() is not None:
            self.fail(p.stdout.read())
        etcds = [k for k in children_of(p.pid) if cmdline(k)[0].endswith("etcd")]
        self.assertEqual(len(etcds), 1)
        return p, etcds[0]

    def stop(self, p):
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 0, out)
        return out

    def password(self):
        with open(os.path.join(self.state, "etcd-password")) as f:
            return f.read().strip()

    def token(self, endpoint):
        reply, err = etcd_post(endpoint, "/v3/auth/authenticate",
                               {"name": "root", "password": self.password()})
        self.assertIsNone(err)
        return reply["token"]

    def test_etcd_listens_only_on_sockets_in_the_state_directory_with_auth_on(self):
        p, etcd = self.serving()
        try:
            argv = cmdline(etcd)
            endpoint = client_endpoint(self.state, etcd)
            sock = endpoint[len("unix://"):]
            self.assertTrue(stat.S_ISSOCK(os.stat(sock).st_mode), sock)
            self.assertEqual(tcp_listeners(etcd), [])
            st = os.stat(os.path.join(self.state, "etcd-password"))
            self.assertEqual(st.st_mode & 0o777, 0o600)
            self.assertGreaterEqual(len(self.password()), 32)
            # Without a token: refused, nothing written.
            _, err = etcd_post(endpoint, "/v3/kv/put", {"key": b64("/x"), "value": b64("y")})
            self.assertIsNotNone(err)
            self.assertIn("user name is empty", err.get("error", ""))
            _, err = etcd_post(endpoint, "/v3/kv/range", {"key": b64("/"), "range_end": b64("0")})
            self.assertIn("user name is empty", err.get("error", ""))
            # A wrong password gets no token.
            _, err = etcd_post(endpoint, "/v3/auth/authenticate",
                               {"name": "root", "password": "guess"})
            self.assertIn("authentication failed", err.get("error", ""))
            # The holder of the file gets in.
            reply, err = etcd_post(endpoint, "/v3/kv/range", {"key": b64("/x")},
                                   self.token(endpoint))
            self.assertIsNone(err)
            self.assertEqual(int(reply.get("count", 0)), 0)
            # The peer port: a unix socket in the (0700) state directory.
            peer = argv[argv.index("--listen-peer-urls") + 1]
            self.assertTrue(peer.startswith("unix://"), peer)
            sock = os.path.join(self.state, peer[len("unix://"):])
            self.assertTrue(os.path.exists(sock), sock)
            self.assertEqual(os.stat(self.state).st_mode & 0o077, 0)
        finally:
            self.stop(p)

    def test_operations_go_through_the_socket_over_either_api(self):
        gen = os.path.join(self.tmp, "gen")
        ferry_harness.generate_stubs(gen)
        import grpc
        from ferry.v1 import coordinator_pb2 as cpb, coordinator_pb2_grpc, types_pb2 as pb
        for api in ("grpc", "gateway"):
            with self.subTest(api=api):
                p, etcd = self.serving(("--etcd-kv-api", api))
                rid = f"private-{api}"
                try:
                    with open(self.port_file) as f:
                        port = int(f.read().strip())
                    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
                        md = pb.RdmaMetadata(
                            version=1, kind=pb.OPERATION_KIND_WRITE, worker_address=b"\x01" * 64,
                            descriptors=[pb.Descriptor(address=0x10000, size=4096,
                                                       device=pb.Device(kind=pb.DEVICE_KIND_HOST),
                                                       rkey=b"k" * 32)],
                            notification_key=os.urandom(16), worker_name=rid,
                            hostname="localhost")
                        reg = stub.Register(cpb.RegisterRequest(
                            request_id=rid, metadata=md, owner="py"), timeout=10)
                        look = stub.Lookup(cpb.LookupRequest(
                            request_id=rid, access_token=reg.access_token), timeout=10)
                        self.assertEqual(look.operation.state, pb.OPERATION_STATE_REGISTERED)
                        self.assertEqual(look.operation.metadata.worker_name, rid)
                    # In etcd, read through the socket as root.
                    endpoint = client_endpoint(self.state, etcd)
                    reply, err = etcd_post(endpoint, "/v3/kv/range",
                                           {"key": b64("/ferry/"), "range_end": b64("/ferry0"),
                                            "keys_only": True}, self.token(endpoint))
                    self.assertIsNone(err, err)
                    keys = [base64.b64decode(kv["key"]).decode() for kv in reply.get("kvs", [])]
                    self.assertTrue(any(k.endswith("/" + rid) for k in keys), keys)
                finally:
                    self.stop(p)

    def test_a_second_coordinator_on_the_directory_is_refused(self):
        p, etcd = self.serving()
        try:
            other = coordinator(self.state, os.path.join(self.tmp, "port2"))
            out, _ = other.communicate(timeout=30)
            self.assertNotEqual(other.returncode, 0, out)
            self.assertIn(f"another coordinator, or the etcd of one that stopped, uses the "
                          f"state directory {self.state}", out)
            self.assertFalse(os.path.exists(os.path.join(self.tmp, "port2")), out)
            # The first one's etcd still answers on its socket.
            self.assertIsNone(p.poll())
            endpoint = client_endpoint(self.state, etcd)
            reply, err = etcd_post(endpoint, "/v3/kv/range", {"key": b64("/x")},
                                   self.token(endpoint))
            self.assertIsNone(err, err)
        finally:
            self.stop(p)
        # And when it has stopped, the directory is free again.
        p, _ = self.serving()
        self.stop(p)

    def test_its_sockets_are_ours_alone_whatever_the_umask(self):
        """etcd makes its sockets with the umask it inherits and changes
        none: under a supervisor's umask 0 they were 0777, and on a state
        directory others may search (0755 is accepted) any local user could
        connect, to the peer port without any auth. The coordinator gives
        etcd umask 077."""
        os.chmod(self.state, 0o755)
        p, etcd = self.serving(umask=0)
        try:
            argv = cmdline(etcd)
            for flag in ("--listen-client-urls", "--listen-peer-urls"):
                sock = os.path.join(self.state, argv[argv.index(flag) + 1][len("unix://"):])
                mode = os.stat(sock).st_mode
                self.assertTrue(stat.S_ISSOCK(mode), sock)
                self.assertEqual(mode & 0o077, 0, f"{sock}: {oct(mode)}")
        finally:
            self.stop(p)

    def test_etcd_variables_of_the_environment_do_not_reach_it(self):
        """etcd takes ETCD_* variables as flags and refuses to start where
        one shadows a flag given (an operator's ETCD_NAME, say, made every
        start fail); the private etcd's flags say all, so it gets none, nor
        the password of another etcd (FERRY_ETCD_PASSWORD)."""
        p, etcd = self.serving(env_extra={"ETCD_NAME": "operator", "ETCD_DEBUG": "true",
                                          "FERRY_ETCD_PASSWORD": "another-etcds",
                                          "ETCD_UNSUPPORTED_ARCH": "amd64"})
        try:
            with open(f"/proc/{etcd}/environ") as f:
                names = [v.split("=", 1)[0] for v in f.read().split("\0") if v]
            # Only the one upstream etcd needs to start on arm64 and others.
            self.assertEqual([n for n in names if n.startswith("ETCD_")],
                             ["ETCD_UNSUPPORTED_ARCH"])
            self.assertNotIn("FERRY_ETCD_PASSWORD", names)
        finally:
            self.stop(p)

    def test_etcd_holds_the_lock_even_when_started_without_stdin_and_stdout(self):
        """etcd holds the state directory's lock file open (it inherits it).
        A coordinator started with stdin and stdout closed used to open the
        directory and the lock file onto fds 0 and 1, and etcd's stdout (its
        log) replaced the lock: etcd ran without it. They get /dev/null
        first now."""
        def close_stdin_stdout():
            os.close(0)
            os.close(1)  # its output still goes to the pipe through fd 2
        p, etcd = self.serving(preexec_fn=close_stdin_stdout)
        try:
            lock = os.path.join(os.path.realpath(self.state), "coordinator.lock")
            held = [os.readlink(f"/proc/{etcd}/fd/{fd}") for fd in os.listdir(f"/proc/{etcd}/fd")]
            self.assertIn(lock, held)
        finally:
            self.stop(p)

    def orphan_etcd(self):
        """A coordinator killed while its etcd cannot act on the SIGTERM it
        gets then (stopped here; still shutting down, in practice): returns
        that etcd's pid and client socket, the etcd stopped and holding the
        state directory's lock (it inherits it)."""
        p, etcd = self.serving()
        sock = client_endpoint(self.state, etcd)[len("unix://"):]
        os.kill(etcd, signal.SIGSTOP)
        p.kill()
        p.communicate(timeout=30)
        return etcd, sock

    def wait_etcd_gone(self, etcd):
        def gone():
            try:
                with open(f"/proc/{etcd}/stat") as f:
                    return f.read().rsplit(")", 1)[1].split()[0] == "Z"
            except OSError:
                return True
        ferry_harness.wait_until(gone, 30, "the old etcd to go")

    def test_an_etcd_that_outlived_its_coordinator_keeps_the_next_one_off(self):
        """The lock is etcd's too: an etcd that outlived its killed
        coordinator and does not exit keeps the next coordinator off. That
        one waits for it as long as a coordinator's own stop gives its etcd
        (10 s), then is refused, naming the directory and the etcd, and
        leaves that etcd's socket alone; it used to take the lock, remove
        the live socket, and start an etcd that waited on the data's lock
        until the start timed out. Once the old etcd is gone, the directory
        serves again."""
        etcd, sock = self.orphan_etcd()
        try:
            other = coordinator(self.state, os.path.join(self.tmp, "port2"))
            out, _ = other.communicate(timeout=60)
            self.assertNotEqual(other.returncode, 0, out)
            self.assertIn(f"its etcd (pid {etcd}) still holds the directory's lock; waiting up "
                          f"to 10000 ms", out)
            self.assertIn(f"the etcd of one that stopped, uses the state directory {self.state}",
                          out)
            self.assertIn(f"its etcd pid {etcd})", out)  # from the lock file
            self.assertTrue(stat.S_ISSOCK(os.stat(sock).st_mode), sock)
        finally:
            os.kill(etcd, signal.SIGKILL)
            os.kill(etcd, signal.SIGCONT)
        self.wait_etcd_gone(etcd)
        p, _ = self.serving()
        self.stop(p)

    def test_a_coordinator_restarted_at_once_waits_for_the_old_etcd(self):
        """A supervisor restarts a coordinator that died at once (systemd's
        Restart= after 100 ms), while its etcd still shuts down: the new one
        used to be refused, and each restart again, until the supervisor
        gave up. It waits for that etcd to exit now, then starts its own on
        the same data: the records registered before are still there."""
        gen = os.path.join(self.tmp, "gen")
        ferry_harness.generate_stubs(gen)
        import grpc
        from ferry.v1 import coordinator_pb2 as cpb, coordinator_pb2_grpc, types_pb2 as pb

        def stub():
            with open(self.port_file) as f:
                return grpc.insecure_channel(f"127.0.0.1:{int(f.read().strip())}")
        p, etcd = self.serving()
        with stub() as channel:
            md = pb.RdmaMetadata(
                version=1, kind=pb.OPERATION_KIND_WRITE, worker_address=b"\x01" * 64,
                descriptors=[pb.Descriptor(address=0x10000, size=4096,
                                           device=pb.Device(kind=pb.DEVICE_KIND_HOST),
                                           rkey=b"k" * 32)],
                notification_key=os.urandom(16), worker_name="w", hostname="localhost")
            reg = coordinator_pb2_grpc.CoordinatorStub(channel).Register(cpb.RegisterRequest(
                request_id="before-the-crash", metadata=md, owner="py", ttl_seconds=300),
                timeout=10)
        os.kill(etcd, signal.SIGSTOP)
        p.kill()
        p.communicate(timeout=30)
        os.remove(self.port_file)
        other = coordinator(self.state, self.port_file)
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(other.stdout), daemon=True)
        reader.start()
        try:
            ferry_harness.wait_until(
                lambda: any(f"its etcd (pid {etcd}) still holds" in l for l in lines) or
                other.poll() is not None, 30, "the new coordinator to wait for the old etcd")
            self.assertIsNone(other.poll(), "".join(lines))
            os.kill(etcd, signal.SIGCONT)  # its SIGTERM, pending, now ends it
            ferry_harness.wait_until(lambda: os.path.exists(self.port_file) or
                                     other.poll() is not None, 60, "the coordinator to listen")
            self.assertIsNone(other.poll(), "".join(lines))
            with stub() as channel:
                look = coordinator_pb2_grpc.CoordinatorStub(channel).Lookup(cpb.LookupRequest(
                    request_id="before-the-crash", access_token=reg.access_token), timeout=10)
                self.assertEqual(look.operation.state, pb.OPERATION_STATE_REGISTERED)
        finally:
            try:
                os.kill(etcd, signal.SIGCONT)
            except ProcessLookupError:
                pass  # gone, as it should be
            other.send_signal(signal.SIGTERM)
            other.wait(timeout=30)
            reader.join(timeout=10)
        self.assertEqual(other.returncode, 0, "".join(lines))
        self.wait_etcd_gone(etcd)

    def test_a_state_directory_from_before_auth_is_taken_over(self):
        # What an earlier coordinator left: etcd's data, auth off, a key.
        port, peer = ferry_harness.free_port(), ferry_harness.free_port()
        endpoint = f"http://127.0.0.1:{port}"
        old = subprocess.Popen(
            [shutil.which("etcd") or "/usr/bin/etcd", "--name", "ferry", "--data-dir",
             os.path.join(self.state, "etcd"), "--listen-client-urls", endpoint,
             "--advertise-client-urls", endpoint, "--listen-peer-urls",
             f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls",
             f"http://127.0.0.1:{peer}", "--initial-cluster", f"ferry=http://127.0.0.1:{peer}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            def put():
                try:
                    return etcd_post(endpoint, "/v3/kv/put",
                                     {"key": b64("/kept"), "value": b64("v")})[1] is None
                except OSError:
                    return False
            ferry_harness.wait_until(put, 30, "the old etcd to take a put")
        finally:
            old.terminate()
            old.wait(timeout=30)
        p, etcd = self.serving()
        try:
            endpoint = client_endpoint(self.state, etcd)
            _, err = etcd_post(endpoint, "/v3/kv/range", {"key": b64("/kept")})
            self.assertIn("user name is empty", err.get("error", ""))
            reply, err = etcd_post(endpoint, "/v3/kv/range", {"key": b64("/kept")},
                                   self.token(endpoint))
            self.assertIsNone(err)
            self.assertEqual(reply["kvs"][0]["value"], b64("v"))
        finally:
            self.stop(p)
        # And again: a restart with auth already on.
        p, _ = self.serving()
        self.stop(p)

    def write_password(self, text, mode=0o600):
        """Writes the state directory's password file; its path."""
        path = os.path.join(self.state, "etcd-password")
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def test_a_password_file_others_may_read_is_refused(self):
        path = self.write_password("0123456789abcdef0123456789abcdef\n", 0o644)
        out = self.refused()
        self.assertIn(path, out)
        self.assertIn("no one else may read", out)

    def test_a_password_file_too_short_is_refused(self):
        path = self.write_password("short\n")
        out = self.refused()
        self.assertIn(path, out)
        self.assertIn("at least 16 characters", out)

    def test_a_password_file_that_is_a_link_is_refused(self):
        target = os.path.join(self.tmp, "elsewhere")
        with open(target, "w") as f:
            f.write("0123456789abcdef0123456789abcdef\n")
        os.chmod(target, 0o600)
        os.symlink(target, os.path.join(self.state, "etcd-password"))
        out = self.refused()
        self.assertIn("etcd-password", out)
        self.assertIn("a link: refused", out)

    def test_a_password_etcd_refuses_stops_the_start(self):
        p, _ = self.serving()
        self.stop(p)
        path = self.write_password("another-password-0123456789\n")
        os.remove(self.port_file)
        p = coordinator(self.state, self.port_file)
        out, _ = p.communicate(timeout=60)
        self.assertNotEqual(p.returncode, 0, out)
        # Said at once, not after waiting out the start-up deadline.
        self.assertIn("was refused", out)
        self.assertNotIn("timed out; the line above", out)
        self.assertIn(path, out)

    def test_a_user_besides_root_stops_the_start(self):
        """A user besides root in the private etcd stops every start,
        naming it: on its first start etcd's auth is off until the
        coordinator turns it on, and a local user who reached the loopback
        port an older version gave it then could have added one of their
        own, with root's role. Planted here with root's token, after the
        fact."""
        p, etcd = self.serving()
        try:
            endpoint = client_endpoint(self.state, etcd)
            token = self.token(endpoint)
            for path, body in (("/v3/auth/user/add", {"name": "mallory",
                                                      "password": "pw-0123456789"}),
                               ("/v3/auth/user/grant", {"user": "mallory", "role": "root"})):
                _, err = etcd_post(endpoint, path, body, token)
                self.assertIsNone(err, err)
        finally:
            self.stop(p)
        os.remove(self.port_file)
        p = coordinator(self.state, self.port_file)
        out, _ = p.communicate(timeout=60)
        self.assertNotEqual(p.returncode, 0, out)
        self.assertIn("users besides root (mallory)", out)
        self.assertIn(os.path.join(self.state, "etcd"), out)
        self.assertFalse(os.path.exists(self.port_file), out)

    def test_a_private_etcd_that_dies_stops_the_coordinator(self):
        p = coordinator(self.state, self.port_file)
        try:
            ferry_harness.wait_until(lambda: os.path.exists(self.port_file) or
                                     p.poll() is not None, 60, "the coordinator to listen")
            self.assertIsNone(p.poll())
            etcds = [k for k in children_of(p.pid) if cmdline(k)[0].endswith("etcd")]
            self.assertEqual(len(etcds), 1)
            os.kill(etcds[0], signal.SIGKILL)
            out, _ = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        self.assertEqual(p.returncode, 1, out)
        self.assertIn(f"the private etcd (pid {etcds[0]}) was killed by signal 9", out)
        # Its socket is left behind; the next start takes its place.
        self.assertTrue(os.path.exists(os.path.join(self.state, "etcd-client:1")))
        p, _ = self.serving()
        self.stop(p)


if __name__ == "__main__":
    unittest.main()
