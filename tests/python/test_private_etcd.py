"""The private etcd a coordinator starts when it is given no --etcd
(coordinator/etcd_child.c), with the real binaries:

- its state directory must be ours alone to write: one another user owns
  (/tmp/ferry-<uid>, made first by someone else, when there is no HOME), or
  one others may write to, is refused before etcd starts, naming the
  directory; its etcd holds the key that mints lease tokens;
- its log is not opened through a link: an etcd.log that points elsewhere is
  refused, and the file it points at is left as it was;
- a good one starts etcd with periodic compaction (without it, etcd keeps
  every revision until its quota stops every write), the coordinator
  serves, and etcd goes with the coordinator;
- an etcd that dies takes the coordinator with it (exit 1, saying so), for
  its supervisor to start both again: it used to stay up, NOT_SERVING, with
  etcd a zombie;
- its client port is on loopback, where any local user can connect, so its
  auth is on: only root, whose password the coordinator keeps in the state
  directory (etcd-password, 0600), gets in; a request without a token is
  refused. Its peer port is a unix socket in the state directory, not a
  loopback port. Both were open to every local user before;
- a state directory from before (etcd data without auth) is taken over:
  auth turned on, its keys kept; a password file others may read, or one
  etcd refuses (data set up with another), stops the start with a message
  that names the file;
- a user besides root (one a local user could have added while auth was
  still off, on the first start) stops every start, naming it.
"""
import os
import shutil
import signal
import subprocess
import sys
import json
import tempfile
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import ferry_harness  # noqa: E402


def coordinator(state_dir, port_file):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env["FERRY_ETCD_BIN"] = shutil.which("etcd") or "/usr/bin/etcd"
    return subprocess.Popen([ferry_harness.COORDINATOR, "--listen", "127.0.0.1:0",
                             "--state-dir", state_dir, "--port-file", port_file],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


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


def etcd_post(endpoint, path, body, token=None):
    """POSTs to etcd's JSON gateway: (reply, None) or (None, error reply)."""
    req = urllib.request.Request(endpoint + path, data=json.dumps(body).encode(),
                                 headers={"Authorization": token} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r), None
    except urllib.error.HTTPError as e:
        return None, json.load(e)


def b64(text):
    import base64
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
            self.assertEqual(argv[argv.index("--auto-compaction-retention") + 1], "1h")
            self.assertEqual(os.stat(os.path.join(self.state, "etcd.log")).st_mode & 0o777, 0o600)
        finally:
            p.send_signal(signal.SIGTERM)
            p.communicate(timeout=30)
        self.assertEqual(p.returncode, 0)
        ferry_harness.wait_until(lambda: not os.path.exists(f"/proc/{etcds[0]}"), 10,
                                 "the private etcd to go")

    def serving(self):
        """Starts a coordinator; returns it and its etcd's pid once it listens."""
        if os.path.exists(self.port_file):
            os.remove(self.port_file)
        p = coordinator(self.state, self.port_file)
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

    def test_auth_is_on_and_the_peer_port_is_a_socket_in_the_state_directory(self):
        p, etcd = self.serving()
        try:
            argv = cmdline(etcd)
            endpoint = argv[argv.index("--listen-client-urls") + 1]
            self.assertTrue(endpoint.startswith("http://127.0.0.1:"), endpoint)
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
            argv = cmdline(etcd)
            endpoint = argv[argv.index("--listen-client-urls") + 1]
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
        self.assertNotIn("could not start a private etcd: timed out", out)
        self.assertIn(path, out)

    def test_a_user_besides_root_stops_the_start(self):
        """A user besides root in the private etcd stops every start,
        naming it: on its first start etcd's auth is off until the
        coordinator turns it on, and a local user who reached its loopback
        port then could have added one of their own, with root's role.
        Planted here with root's token, after the fact."""
        p, etcd = self.serving()
        try:
            argv = cmdline(etcd)
            endpoint = argv[argv.index("--listen-client-urls") + 1]
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


if __name__ == "__main__":
    unittest.main()
