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
  etcd a zombie.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

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
