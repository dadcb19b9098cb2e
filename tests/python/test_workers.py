"""ferry-worker processes moving real bytes over UCX through a real
coordinator and etcd: both directions, sizes from 1 byte to 256 MiB, one and
many descriptors, concurrent pairs, and the refusals (wrong token, unknown
ID, size mismatch, a write into a readable). The receiving side checks every
byte against the pattern; its exit code says whether they matched. With
--stats-json each side writes libferry's counters, and each moved by exactly
the one operation it ran. Each side frees its buffer only once UCX is gone.
"""
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import ferry_harness  # noqa: E402

WORKER = os.path.join(ferry_harness.BUILD_DIR, "worker", "ferry-worker")
TOKEN = "worker-token-0123456789"
CLUSTER = None

EXIT_OK, EXIT_USAGE, EXIT_TIMEOUT, EXIT_REFUSED = 0, 2, 4, 5


def setUpModule():
    global CLUSTER
    CLUSTER = ferry_harness.Cluster(ttl=3)


def tearDownModule():
    rc = CLUSTER.close()
    if rc != 0:
        raise AssertionError(f"coordinator exited with {rc} after SIGTERM")


def worker(cmd, rid, size, descriptors=1, token=TOKEN, timeout=60, extra=(), env=None,
           coordinator=None):
    args = [WORKER, cmd, "--coordinator", coordinator or CLUSTER.coordinator.target,
            "--request-id", rid,
            "--size", str(size), "--descriptors", str(descriptors), "--timeout", str(timeout),
            "--quiet", *extra]
    if token is not None:
        args += ["--token", token]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def start_passive(cmd, rid, size, descriptors=1, timeout=60, extra=(), env=None, token=TOKEN,
                  coordinator=None):
    """Starts recv/serve and returns once it says it registered."""
    p = worker(cmd, rid, size, descriptors, token=token, timeout=timeout, extra=extra, env=env,
               coordinator=coordinator)
    line = p.stdout.readline()  # blocks until registered (or the process died)
    if "registered" not in line:
        out, err = p.communicate(timeout=30)
        raise AssertionError(f"{cmd} did not register: {line}{out}{err}")
    return p


def finish(p, timeout=120):
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


class Transfers(unittest.TestCase):
    def pair(self, passive, active, rid, size, descriptors=1):
        p = start_passive(passive, rid, size, descriptors)
        rc_a, out_a, err_a = finish(worker(active, rid, size, descriptors))
        rc_p, out_p, err_p = finish(p)
        self.assertEqual(rc_a, EXIT_OK, f"{active}: {err_a}")
        self.assertEqual(rc_p, EXIT_OK, f"{passive}: {err_p}")
        self.assertIn(f"{size} bytes", out_a)
        self.assertIn(f"{size} bytes", out_p)

    def test_write_sizes(self):
        for size, descs in [(1, 1), (4096, 1), (4096, 16), ((1 << 20) + 7, 3),
                            (64 << 20, 1), (256 << 20, 16)]:
            with self.subTest(size=size, descriptors=descs):
                self.pair("recv", "send", f"w-{size}-{descs}", size, descs)

    def test_read_sizes(self):
        for size, descs in [(1, 1), (1 << 20, 1), (1 << 20, 16), (256 << 20, 4)]:
            with self.subTest(size=size, descriptors=descs):
                self.pair("serve", "read", f"r-{size}-{descs}", size, descs)

    def test_the_request_id_is_free_once_both_sides_exit(self):
        # The receiver releases its record before it exits: its Release waits
        # for the writer's Complete, which its coordinator client's watch
        # shows, and disconnect gives that a call timeout. Released, the
        # request ID registers again at once; a record left behind would
        # hold it (ALREADY_EXISTS) until the receiver's lease ran out.
        for i in range(3):
            with self.subTest(round=i):
                self.pair("recv", "send", "again-1", 4096)
        for i in range(3):
            with self.subTest(round=i):
                self.pair("serve", "read", "again-2", 4096)

    def test_concurrent_pairs(self):
        size = 16 << 20
        receivers = [start_passive("recv", f"c-{i}", size, 4) for i in range(4)]
        senders = [worker("send", f"c-{i}", size, 4) for i in range(4)]
        for i, p in enumerate(senders + receivers):
            rc, out, err = finish(p)
            self.assertEqual(rc, EXIT_OK, f"process {i}: {err}")


class Targets(unittest.TestCase):
    """--coordinator names one gRPC target. ferryctl's replica list
    (`a,b`, also from FERRY_COORDINATOR) was taken as one DNS name: every
    call failed UNAVAILABLE once the timeout ran out. It is refused at once,
    saying the forms that work; ipv4:a,b is one of them, and it tries the
    addresses in order."""

    def test_a_replica_list_is_refused_at_once(self):
        dead = f"127.0.0.1:{ferry_harness.free_port()}"
        for target in (f"{dead},{CLUSTER.coordinator.target}", "ferry-0:7400,ferry-1:7400"):
            with self.subTest(target=target):
                rc, _, err = finish(worker("recv", "list-1", 64, timeout=600,
                                           coordinator=target), timeout=30)
                self.assertEqual(rc, EXIT_USAGE, err)
                self.assertIn(f"'{target}' lists several addresses", err)
                self.assertIn("ipv4:10.0.0.1:7400,10.0.0.2:7400", err)

    def test_ipv4_addresses_are_tried_in_order(self):
        host, port = CLUSTER.coordinator.target.rsplit(":", 1)
        self.assertEqual(host, "127.0.0.1")
        dead = ferry_harness.free_port()
        target = f"ipv4:127.0.0.1:{dead},127.0.0.1:{port}"
        p = start_passive("recv", "ipv4-list-1", 4096, coordinator=target)
        rc_a, _, err_a = finish(worker("send", "ipv4-list-1", 4096, coordinator=target))
        rc_p, out_p, err_p = finish(p)
        self.assertEqual(rc_a, EXIT_OK, err_a)
        self.assertEqual(rc_p, EXIT_OK, err_p)
        self.assertIn("4096 bytes", out_p)


def etcd_post(path, body):
    req = urllib.request.Request(CLUSTER.etcd.endpoint + path, data=json.dumps(body).encode(),
                                 method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)


def record_lease(rid):
    """The etcd lease of rid's record, read from etcd itself (the
    coordinator shows lease IDs to their grantees only)."""
    everything = {"key": base64.b64encode(b"\0").decode(),
                  "range_end": base64.b64encode(b"\0").decode()}
    for kv in etcd_post("/v3/kv/range", everything).get("kvs", []):
        if base64.b64decode(kv["key"]).endswith(b"/" + rid.encode()) and "lease" in kv:
            return int(kv["lease"])
    raise AssertionError(f"no record of {rid} on a lease in etcd")


class SessionLease(unittest.TestCase):
    def test_a_clean_exit_ends_the_session_lease(self):
        """A worker that exits cleanly has released everything on its
        session lease, and ends it (Revoke) rather than leave it in etcd for
        a TTL (--ttl, 10 s here) with nothing on it."""
        p = start_passive("recv", "lease-end-1", 4096, extra=("--ttl", "10"))
        lease = record_lease("lease-end-1")
        self.assertGreater(int(etcd_post("/v3/lease/timetolive", {"ID": lease})["TTL"]), 0)
        rc_a, _, err_a = finish(worker("send", "lease-end-1", 4096))
        rc_p, _, err_p = finish(p)
        self.assertEqual(rc_a, EXIT_OK, err_a)
        self.assertEqual(rc_p, EXIT_OK, err_p)
        self.assertEqual(int(etcd_post("/v3/lease/timetolive", {"ID": lease})["TTL"]), -1,
                         "the receiver's session lease outlived its clean exit")


class StatsJson(unittest.TestCase):
    """--stats-json: one JSON object on exit, to stdout ('-') or a file, in
    which the one operation each side ran moved exactly its cell of
    transfers[direction][outcome] (by one, and by its bytes) and no other."""

    def expect_one(self, stats, direction, outcome, size):
        for d, outcomes in stats["transfers"].items():
            for o, cell in outcomes.items():
                want = {"ops": 1, "bytes": size} if (d, o) == (direction, outcome) else \
                    {"ops": 0, "bytes": 0}
                self.assertEqual(cell, want, f"{d}/{o}")
        self.assertEqual(set(stats["transfers"]), {"write", "read", "received", "served"})

    def test_write_to_stdout_and_a_file(self):
        size = (1 << 20) + 3
        path = os.path.join(CLUSTER.tmp, "recv-stats.json")
        p = start_passive("recv", "js-1", size, 2, extra=("--stats-json", path))
        rc_a, out_a, err_a = finish(worker("send", "js-1", size, 2,
                                           extra=("--stats-json", "-")))
        rc_p, out_p, err_p = finish(p)
        self.assertEqual(rc_a, EXIT_OK, err_a)
        self.assertEqual(rc_p, EXIT_OK, err_p)
        sent = json.loads(out_a.splitlines()[-1])  # after the report line
        self.assertEqual((sent["command"], sent["request_id"], sent["exit_code"]),
                         ("send", "js-1", 0))
        self.expect_one(sent, "write", "complete", size)
        self.assertEqual(sent["endpoints_created"], 1)
        with open(path) as f:
            received = json.load(f)
        self.expect_one(received, "received", "complete", size)
        self.assertEqual(received["notices_received"], 1)
        # The receiver registered each of its 2 descriptors (no region);
        # the writer's puts needed no registration of its own memory.
        self.assertEqual(received["mem_maps"], 2)
        self.assertEqual(sent["mem_maps"], 0)
        # An honest transfer loses no message to the loop's bounds.
        self.assertEqual((sent["messages_dropped"], received["messages_dropped"]), (0, 0))

    def test_read_and_a_refused_write(self):
        size = 4096
        p = start_passive("serve", "js-2", size, extra=("--stats-json", "-"))
        rc, out, err = finish(worker("send", "js-2", size, extra=("--stats-json", "-")))
        self.assertEqual(rc, EXIT_USAGE, err)  # a write into a readable: refused at begin
        refused = json.loads(out.splitlines()[-1])
        self.assertEqual(refused["exit_code"], EXIT_USAGE)
        for outcomes in refused["transfers"].values():
            for cell in outcomes.values():
                self.assertEqual(cell, {"ops": 0, "bytes": 0})
        rc, out, err = finish(worker("read", "js-2", size, extra=("--stats-json", "-")))
        self.assertEqual(rc, EXIT_OK, err)
        self.expect_one(json.loads(out.splitlines()[-1]), "read", "complete", size)
        rc, out, err = finish(p)
        self.assertEqual(rc, EXIT_OK, err)
        self.expect_one(json.loads(out.splitlines()[-1]), "served", "complete", size)


class Refusals(unittest.TestCase):
    def test_wrong_token_then_right_one(self):
        size = 1 << 20
        p = start_passive("recv", "tok-1", size)
        rc, out, err = finish(worker("send", "tok-1", size, token="wrong-token-0123456789"))
        self.assertEqual(rc, EXIT_REFUSED, err)
        self.assertIn("PERMISSION_DENIED", err)
        # Nothing was harmed: the right sender still gets through.
        rc, out, err = finish(worker("send", "tok-1", size))
        self.assertEqual(rc, EXIT_OK, err)
        self.assertEqual(finish(p)[0], EXIT_OK)

    def test_an_empty_token_is_none(self):
        """recv with an empty token (FERRY_TOKEN= in a script) prints the
        token libferry drew, as without one, and the sender with
        that token gets through; an empty token was sent as it was, and the
        coordinator's pick was never shown."""
        size = 4096
        p = worker("recv", "empty-tok-1", size, token="")
        line = p.stdout.readline()
        self.assertTrue(line.startswith("token "), line)
        picked = line.split()[1]
        self.assertIn("registered", p.stdout.readline())
        rc, out, err = finish(worker("send", "empty-tok-1", size, token=picked))
        self.assertEqual(rc, EXIT_OK, err)
        self.assertEqual(finish(p)[0], EXIT_OK)
        rc, out, err = finish(worker("send", "empty-tok-2", size, token=""))
        self.assertEqual(rc, EXIT_USAGE, err)
        self.assertIn("needs --token", err)

    def test_unknown_id_times_out(self):
        rc, out, err = finish(worker("send", "nobody-here", 4096, timeout=1))
        self.assertEqual(rc, EXIT_TIMEOUT, err)
        self.assertIn("nobody-here", err)
        # The code, named once: libferry's message is for people, the
        # returned status names the code (ferry-worker adds it).
        self.assertEqual(err.count("FERRY_ERR_TIMED_OUT"), 1, err)
        # The user's --timeout is named, not the last slice's wait_ms.
        self.assertIn("--timeout (1 s) ran out", err)

    def test_a_receiver_nobody_wrote_to_says_its_timeout_ran_out(self):
        """It said "operation ended INITIALIZED: no detail", of an operation
        that had not ended: the wait had run out."""
        rc, out, err = finish(start_passive("recv", "nobody-wrote", 4096, timeout=1))
        self.assertEqual(rc, EXIT_TIMEOUT, err)
        self.assertIn("--timeout (1 s) ran out with the operation still INITIALIZED: "
                      "no peer came", err)
        self.assertNotIn("ended", err)

    def test_size_mismatch_names_both_sizes(self):
        p = start_passive("recv", "size-1", 1 << 20)
        rc, out, err = finish(worker("send", "size-1", 2 << 20))
        self.assertEqual(rc, EXIT_USAGE, err)
        self.assertIn(str(1 << 20), err)
        self.assertIn(str(2 << 20), err)
        rc, out, err = finish(worker("send", "size-1", 1 << 20))
        self.assertEqual(rc, EXIT_OK, err)
        self.assertEqual(finish(p)[0], EXIT_OK)

    def test_peer_error_handling_must_agree(self):
        # UCX 1.13 cannot connect two workers that differ in it: the
        # coordinator refuses the Claim, naming the field, nothing written,
        # and a sender set alike (the variable, as the flag) then completes.
        p = start_passive("recv", "peer-errors-1", 4096, extra=("--peer-error-handling", "off"))
        rc, out, err = finish(worker("send", "peer-errors-1", 4096))
        self.assertEqual(rc, EXIT_REFUSED, err)
        self.assertIn("peer_error_handling: the claimant's is on", err)
        rc, out, err = finish(worker("send", "peer-errors-1", 4096,
                                     env=dict(os.environ, FERRY_PEER_ERROR_HANDLING="off")))
        self.assertEqual(rc, EXIT_OK, err)
        self.assertEqual(finish(p)[0], EXIT_OK)

    def test_write_into_a_readable_is_refused(self):
        p = start_passive("serve", "kind-1", 4096)
        rc, out, err = finish(worker("send", "kind-1", 4096))
        self.assertEqual(rc, EXIT_USAGE, err)
        self.assertIn("readable", err)
        rc, out, err = finish(worker("read", "kind-1", 4096))
        self.assertEqual(rc, EXIT_OK, err)
        self.assertEqual(finish(p)[0], EXIT_OK)

    def test_second_writer_is_refused(self):
        size = 4096
        p = start_passive("recv", "two-1", size)
        self.assertEqual(finish(worker("send", "two-1", size))[0], EXIT_OK)
        self.assertEqual(finish(p)[0], EXIT_OK)
        # The operation is COMPLETE: a second writer gets nothing.
        rc, out, err = finish(worker("send", "two-1", size, timeout=2))
        self.assertIn(rc, (EXIT_REFUSED, EXIT_TIMEOUT), err)


FREE_ORDER = os.path.join(ferry_harness.BUILD_DIR, "tests", "worker", "libferry_free_order.so")
FREED_AFTER = "free-order: buffer freed after ucp_cleanup"


class Signals(unittest.TestCase):
    """SIGTERM, SIGINT or SIGHUP stop a worker cleanly: its operation is
    cancelled and its records released, then it dies of the signal (so a
    shell sees a Ctrl-C as one; it used to exit 128 + N, after which bash
    went on with its script). Killed (as it was, having no handler), a receiver's record held
    its request ID until its lease ran out; as PID 1 in a container SIGTERM
    did nothing at all."""

    def test_a_waiting_receiver_stops_and_frees_its_request_id(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            with self.subTest(signal=sig.name):
                p = start_passive("recv", "sig-recv", 4096)
                p.send_signal(sig)
                rc, out, err = finish(p, timeout=30)
                self.assertEqual(rc, -sig, err)
                self.assertIn(f"stopped by signal {int(sig)}", err)
                # Released before the exit: the ID registers again at once
                # (ALREADY_EXISTS while a record was left behind).
                again = start_passive("recv", "sig-recv", 4096)
                again.send_signal(signal.SIGTERM)
                self.assertEqual(finish(again, timeout=30)[0], -signal.SIGTERM)

    def test_a_sender_waiting_for_its_id_stops(self):
        p = worker("send", "sig-nobody", 4096, timeout=600)
        # Waiting for the ID, in Claims that wait: the process's own
        # threads are up once it has a connection to the coordinator.
        ferry_harness.wait_until(lambda: p.poll() is not None or
                                 ferry_harness.tcp_sockets(p.pid), 30, "the sender to connect")
        p.send_signal(signal.SIGTERM)
        rc, out, err = finish(p, timeout=30)
        self.assertEqual(rc, -signal.SIGTERM, err)
        self.assertIn("stopped by signal 15 while waiting for sig-nobody", err)

    def test_a_receiver_registering_with_a_frozen_coordinator_stops(self):
        """SIGTERM while a receiver's registration waits on a coordinator
        that does not answer (its process stopped): it stops at once, as
        stopped by the signal (libferry's interrupt check ends the call).
        It used to wait for the call's 10 s, then exit 1 ("publish: ...")
        as if the coordinator had failed it."""
        cluster = ferry_harness.Cluster(ttl=3)
        try:
            ferry_harness.freeze(cluster.coordinator.proc)
            p = subprocess.Popen(
                [WORKER, "recv", "--coordinator", cluster.coordinator.target, "--request-id",
                 "sig-frozen", "--size", "4096", "--timeout", "600", "--token", TOKEN,
                 "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            # Its signal handlers are in place once it has a connection.
            ferry_harness.wait_until(lambda: p.poll() is not None or
                                     ferry_harness.tcp_sockets(p.pid), 30,
                                     "the receiver to connect")
            p.send_signal(signal.SIGTERM)
            rc, out, err = finish(p, timeout=30)
            self.assertEqual(rc, -signal.SIGTERM, err)
            self.assertIn("stopped by signal 15 while registering sig-frozen", err)
            self.assertNotIn("registered", out)
        finally:
            cluster.coordinator.proc.send_signal(signal.SIGCONT)
            cluster.close()

    def test_a_sender_whose_receiver_stopped_mid_transfer_stops(self):
        """A receiver stopped (SIGSTOP: a hung process, a frozen node) while
        the bytes move over TCP, where UCX emulates the puts and needs the
        receiver to take them: the sender's SIGTERM cancels, and the sender
        exits at once, of the signal, without claiming success. Its destroy used
        to wait for the puts' flush, which never came (no peer error
        handling), so the process could only be killed with SIGKILL."""
        size = 1 << 30
        env = dict(os.environ, UCX_TLS="tcp")
        r = start_passive("recv", "sig-frozen", size, timeout=600, env=env)
        s = worker("send", "sig-frozen", size, timeout=600, env=env)
        try:
            ferry_harness.wait_until(lambda: s.poll() is not None or landed(r.pid, size), 60,
                                     "the first bytes to land in the receiver")
            os.kill(r.pid, signal.SIGSTOP)
            self.assertIsNone(s.poll(), "the transfer ended before the receiver was stopped")
            s.send_signal(signal.SIGTERM)
            rc, out, err = finish(s, timeout=30)
            self.assertEqual(rc, -signal.SIGTERM, err)
            self.assertIn("stopped by signal 15", err)
            self.assertNotIn("bytes", out)
        finally:
            os.kill(r.pid, signal.SIGCONT)
            for p in (s, r):
                if p.poll() is None:
                    p.kill()
                p.communicate(timeout=30)


class Output(unittest.TestCase):
    """What ferry-worker prints: a reader of its output that leaves does
    not kill it, and text another client chose reaches the terminal only
    escaped."""

    def test_a_reader_that_leaves_does_not_kill_the_receiver(self):
        """`recv | head -1` takes the token libferry drew and
        leaves: the receiver's report line then went to a pipe without a
        reader, SIGPIPE killed it after the transfer, and its record held
        the request ID until its lease ran out."""
        r = worker("recv", "pipe-1", 4096, token=None)
        line = r.stdout.readline()
        self.assertTrue(line.startswith("token "), line)
        r.stdout.close()  # what head -1 does
        rc, out, err = finish(worker("send", "pipe-1", 4096, token=line.split()[1]))
        self.assertEqual(rc, EXIT_OK, err)
        self.assertEqual(r.wait(timeout=60), EXIT_OK, r.stderr.read())
        r.stderr.close()
        # Released: the ID registers again at once.
        again = start_passive("recv", "pipe-1", 4096)
        again.send_signal(signal.SIGTERM)
        self.assertEqual(finish(again, timeout=30)[0], -signal.SIGTERM)

    def test_the_token_goes_to_a_file_of_its_own(self):
        """--token-file: the token libferry drew goes to a new file
        (mode 0600) instead of stdout, which a service's log keeps. It is
        there whole once the receiver says it registered, and gone when the
        run ends, so a service restarted on the same path starts again."""
        tmp = tempfile.mkdtemp(prefix="ferry-token-")
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        path = os.path.join(tmp, "token")
        for run in range(2):
            with self.subTest(run=run):
                r = start_passive("recv", "tokfile-1", 4096, extra=("--token-file", path),
                                  token=None)
                self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
                with open(path) as f:
                    text = f.read()
                self.assertTrue(text.endswith("\n") and len(text) > 1, repr(text))
                token = text.strip()
                rc, out, err = finish(worker("send", "tokfile-1", 4096, token=token))
                self.assertEqual(rc, EXIT_OK, err)
                rc, out, err = finish(r)
                self.assertEqual(rc, EXIT_OK, err)
                self.assertNotIn(token, out)
                self.assertFalse(os.path.exists(path))
                self.assertEqual(os.listdir(tmp), [])  # no temporary file left either
        # Stopped by a signal, too.
        r = start_passive("recv", "tokfile-1", 4096, extra=("--token-file", path), token=None)
        self.assertTrue(os.path.exists(path))
        r.send_signal(signal.SIGTERM)
        self.assertEqual(finish(r, timeout=30)[0], -signal.SIGTERM)
        self.assertEqual(os.listdir(tmp), [])

    def test_a_token_file_is_not_left_when_registering_fails(self):
        """A registration the coordinator refuses (the request ID is taken)
        leaves no token file and no temporary file behind."""
        tmp = tempfile.mkdtemp(prefix="ferry-token-")
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        first = start_passive("recv", "tokfile-3", 4096)
        try:
            rc, out, err = finish(worker("recv", "tokfile-3", 4096, token=None,
                                         extra=("--token-file", os.path.join(tmp, "token"))))
            self.assertEqual(rc, EXIT_REFUSED, err)
            self.assertEqual(os.listdir(tmp), [])
        finally:
            first.send_signal(signal.SIGTERM)
            finish(first, timeout=30)

    def test_a_token_file_that_exists_is_refused_before_registering(self):
        """An existing file (or a link) is not written over: the run stops
        before anything is registered, and the file is left as it was (and
        nothing is left beside it)."""
        tmp = tempfile.mkdtemp(prefix="ferry-token-")
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        path = os.path.join(tmp, "token")
        with open(path, "w") as f:
            f.write("mine\n")
        rc, out, err = finish(worker("recv", "tokfile-2", 4096, token=None,
                                     extra=("--token-file", path)))
        self.assertEqual(rc, EXIT_USAGE, err)
        self.assertIn(f"--token-file {path}: File exists", err)
        with open(path) as f:
            self.assertEqual(f.read(), "mine\n")
        self.assertEqual(os.listdir(tmp), ["token"])
        os.symlink(os.path.join(tmp, "elsewhere"), os.path.join(tmp, "link"))
        rc, out, err = finish(worker("recv", "tokfile-2", 4096, token=None,
                                     extra=("--token-file", os.path.join(tmp, "link"))))
        self.assertEqual(rc, EXIT_USAGE, err)
        self.assertFalse(os.path.exists(os.path.join(tmp, "elsewhere")))
        again = start_passive("recv", "tokfile-2", 4096)  # nothing was registered
        again.send_signal(signal.SIGTERM)
        self.assertEqual(finish(again, timeout=30)[0], -signal.SIGTERM)
        rc, out, err = finish(worker("recv", "tokfile-2", 4096, token=None,
                                     extra=("--token-file", "")))
        self.assertEqual(rc, EXIT_USAGE, err)
        self.assertIn("--token-file needs a path", err)
        rc, out, err = finish(worker("send", "tokfile-2", 4096, extra=("--token-file", path)))
        self.assertEqual(rc, EXIT_USAGE, err)
        self.assertIn("--token-file is for recv and serve without a token", err)

    def test_a_message_that_quotes_another_client_is_escaped(self):
        """The coordinator's refusal quotes the claimant's name, which the
        claiming client chose: a terminal control in it (ESC, a C1 CSI, a
        right-to-left override) shows as \\xNN on ferry-worker's stderr."""
        tmp = tempfile.mkdtemp(prefix="ferry-stubs-")
        self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
        gen = os.path.join(tmp, "gen")
        ferry_harness.generate_stubs(gen)
        import grpc
        from ferry.v1 import coordinator_pb2 as cpb, coordinator_pb2_grpc
        r = start_passive("recv", "esc-claimed", 4096)
        try:
            with grpc.insecure_channel(CLUSTER.coordinator.target) as channel:
                coordinator_pb2_grpc.CoordinatorStub(channel).Claim(cpb.ClaimRequest(
                    request_id="esc-claimed", access_token=TOKEN,
                    claimant="evil\x1b[2J\u009b31m\u202egpj.exe", ttl_seconds=60), timeout=10)
            rc, out, err = finish(worker("send", "esc-claimed", 4096, timeout=1))
            self.assertEqual(rc, EXIT_REFUSED, err)
            self.assertIn("already claimed by 'evil\\x1b[2J\\xc2\\x9b31m\\xe2\\x80\\xaegpj.exe'",
                          err)
            for acting in ("\x1b", "\u009b", "\u202e"):
                self.assertNotIn(acting, err)
        finally:
            r.send_signal(signal.SIGTERM)
            finish(r, timeout=30)


def landed(pid, size):
    """Whether bytes have landed in a receiver's buffer: ferry-worker zeroes
    it, and every word of the pattern is nonzero. The buffer is in a
    writable anonymous mapping of at least size bytes: its own (size and a
    few pages), or one the kernel merged with a neighbour of the same
    flags, so not more than twice its size (a sanitizer's reservations of
    many GiB are not looked at). Windows every 16 MiB, from 1 MiB in, cover
    wherever in the mapping the buffer begins."""
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            anonymous = len(fields) == 5 or fields[5].startswith("[anon")
            if size <= hi - lo < 2 * size + (64 << 20) and fields[1].startswith("rw") and anonymous:
                with open(f"/proc/{pid}/mem", "rb") as mem:
                    for at in range(lo + (1 << 20), hi - 64, 16 << 20):
                        mem.seek(at)
                        if any(mem.read(64)):
                            return True
    return False


class BufferLifetime(unittest.TestCase):
    """The buffer outlives UCX: ferry_op_destroy does not wait for data in
    flight (an admitted writer's puts, our own gets cancelled midway), so
    ferry-worker frees its buffer only after ferry_connector_destroy, on
    every way out. libferry_free_order.so (tests/worker/free_order.c) says
    whether the buffer was freed before or after ucp_cleanup: the order, not
    a race, so each case shows it on every run."""

    SIZE = (1 << 20) + 5  # the buffer is this rounded up to a page

    def setUp(self):
        if not os.path.exists(FREE_ORDER):
            self.skipTest(f"no {FREE_ORDER} (a sanitizer build does not make it)")
        self.env = dict(os.environ, LD_PRELOAD=FREE_ORDER,
                        FERRY_TEST_WATCH_BYTES=str((self.SIZE + 4095) // 4096 * 4096))

    def assertFreedAfterUcx(self, err):
        self.assertIn(FREED_AFTER, err)
        self.assertNotIn("while UCX is up", err)

    def test_a_recv_that_times_out(self):
        rc, out, err = finish(start_passive("recv", "life-1", self.SIZE, timeout=1,
                                            env=self.env))
        self.assertEqual(rc, EXIT_TIMEOUT, err)
        self.assertFreedAfterUcx(err)

    def test_a_send_that_finds_nobody(self):
        rc, out, err = finish(worker("send", "life-nobody", self.SIZE, timeout=1, env=self.env))
        self.assertEqual(rc, EXIT_TIMEOUT, err)
        self.assertFreedAfterUcx(err)

    def test_both_sides_of_a_transfer(self):
        for passive, active in (("recv", "send"), ("serve", "read")):
            with self.subTest(passive=passive):
                rid = f"life-{passive}"
                p = start_passive(passive, rid, self.SIZE, 2, env=self.env)
                rc_a, out_a, err_a = finish(worker(active, rid, self.SIZE, 2, env=self.env))
                rc_p, out_p, err_p = finish(p)
                self.assertEqual(rc_a, EXIT_OK, err_a)
                self.assertEqual(rc_p, EXIT_OK, err_p)
                self.assertFreedAfterUcx(err_a)
                self.assertFreedAfterUcx(err_p)


if __name__ == "__main__":
    unittest.main(verbosity=2)
