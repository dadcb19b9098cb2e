"""Every numeric flag of ferry-worker and ferry-coordinator, and the
coordinator's --prefix, at and past its limits: a value out of range exits 2
with a message that names the flag and the range, before anything is
allocated or started; the values at the limits are accepted. ferry-worker's
stray arguments and the client TLS flags of ferry-worker and ferryctl that
would be dropped (a certificate, key or server name without --tls-ca) exit 2
naming them too. No etcd or coordinator runs: a refused flag stops the
program before it connects, and an accepted set is followed by a mistake the
parser reports after the flags (an unknown command; --tls-ca without
--tls-cert), so nothing starts either. CoordinatorStartupWarnings alone
starts a coordinator, against an etcd that is not there, reads its lines up
to "serving on" and stops it.
"""
import os
import subprocess
import sys
import tempfile
import threading
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import ferry_harness  # noqa: E402

WORKER = os.path.join(ferry_harness.BUILD_DIR, "worker", "ferry-worker")
FERRYCTL = os.path.join(ferry_harness.BUILD_DIR, "tools", "ferryctl")
COORDINATOR = ferry_harness.COORDINATOR
EXIT_USAGE = 2


STATE = tempfile.TemporaryDirectory(prefix="ferry-flags-")


def run(args, env=None):
    # Should a program take its flags after all, it finds an etcd that is
    # not there and a state directory of its own, and the timeout ends it.
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    full_env.update({"FERRY_ETCD": "http://127.0.0.1:9", "XDG_STATE_HOME": STATE.name,
                     "FERRY_COORDINATOR": "127.0.0.1:9"})
    full_env.update(env or {})
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=30, env=full_env)
    return p.returncode, p.stderr


def prefix_of(n):
    return "/" + "p" * (n - 2) + "/"


class WorkerFlags(unittest.TestCase):
    BAD = {
        "--size": ["0", "18446744073709551615", "1099511627777", "2TiB", "16EiB", "-1", "x", ""],
        "--descriptors": ["0", "1025", "-1", "18446744073709551617", "x", ""],
        "--timeout": ["0", "1e10", "-1", "nan", "inf", "0.0001", "86401", "x", ""],
        "--ttl": ["0", "3601", "-5", "99999999999999999999", "1.5", "x", ""],
    }

    def test_out_of_range_is_usage_error_naming_flag(self):
        for flag, values in self.BAD.items():
            for value in values:
                with self.subTest(flag=flag, value=value):
                    rc, err = run([WORKER, "recv", "--request-id", "r1", flag, value])
                    self.assertEqual(rc, EXIT_USAGE, err)
                    self.assertIn(flag, err)
                    self.assertNotIn("Segmentation", err)

    def test_limits_are_accepted(self):
        for args in (["--size", "1", "--descriptors", "1", "--timeout", "0.001", "--ttl", "1"],
                     ["--size", "1TiB", "--descriptors", "1024", "--timeout", "86400",
                      "--ttl", "3600"]):
            with self.subTest(args=args):
                rc, err = run([WORKER, "bogus", "--request-id", "r1", *args])
                self.assertEqual(rc, EXIT_USAGE, err)
                self.assertIn("unknown command", err)

    def test_recv_with_huge_size_does_not_crash(self):
        # The crash of issue 9: the page rounding wrapped to 0, then memset
        # ran over the whole size.
        rc, err = run([WORKER, "recv", "--request-id", "r1", "--coordinator", "127.0.0.1:1",
                       "--size", "18446744073709551615", "--timeout", "1"])
        self.assertEqual(rc, EXIT_USAGE, err)
        self.assertIn("--size must be from 1 byte to 1TiB", err)

    def test_stray_argument_is_usage_error_naming_it(self):
        # getopt_long moves operands past the flags: `--size 1 GiB` was a
        # 1-byte transfer that exited 0.
        for args, stray in ((["recv", "--request-id", "j", "--size", "1", "GiB"], "GiB"),
                            (["send", "extra", "--request-id", "j", "--token", "t"], "extra"),
                            (["serve", "--request-id", "j", "--", "--size"], "--size")):
            with self.subTest(args=args):
                rc, err = run([WORKER, *args, "--timeout", "1"])
                self.assertEqual(rc, EXIT_USAGE, err)
                self.assertIn(f"unexpected argument '{stray}'", err)

    def test_peer_error_handling_is_on_or_off(self):
        for args, env, named in ((["--peer-error-handling", "yes"], {}, "--peer-error-handling"),
                                 ([], {"FERRY_PEER_ERROR_HANDLING": ""},
                                  "FERRY_PEER_ERROR_HANDLING"),
                                 ([], {"FERRY_PEER_ERROR_HANDLING": "1"},
                                  "FERRY_PEER_ERROR_HANDLING")):
            with self.subTest(args=args, env=env):
                rc, err = run([WORKER, "recv", "--request-id", "j", *args], env=env)
                self.assertEqual(rc, EXIT_USAGE, err)
                self.assertIn(f"{named} must be on or off", err)

    def test_device_is_host_memory_only_and_says_where_gpus_go(self):
        # The usage said "cpu (default) or cuda:N" and every build refused
        # cuda:N with "not supported by this build".
        p = subprocess.run([WORKER, "--help"], capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertNotIn("or cuda:N", p.stdout)
        self.assertIn("ferry-worker moves host", p.stdout)
        for device in ("cuda:0", "cuda:3", "cuda"):
            with self.subTest(device=device):
                rc, err = run([WORKER, "recv", "--request-id", "r1", "--device", device])
                self.assertEqual(rc, EXIT_USAGE, err)
                self.assertIn(f"--device {device}: ferry-worker moves host memory only", err)
                self.assertIn("libferry or the Python package with cuda:N descriptors", err)
        rc, err = run([WORKER, "bogus", "--request-id", "r1", "--device", "cpu"])
        self.assertIn("unknown command", err)


class ClientLogVariables(unittest.TestCase):
    """A FERRY_LOG_LEVEL or FERRY_LOG_FORMAT the clients do not know was
    ignored without a word (a log pipeline set up for JSON got text); it is
    warned of on stderr, naming the variable and what is used instead. The
    coordinator refuses them (CoordinatorFlags)."""

    def test_unknown_values_are_warned_of(self):
        env = {"FERRY_LOG_LEVEL": "verbose", "FERRY_LOG_FORMAT": "yaml"}
        rc, err = run([FERRYCTL, "bogus"], env=env)
        self.assertEqual(rc, EXIT_USAGE, err)
        self.assertIn("ferryctl: FERRY_LOG_LEVEL 'verbose' is not off, error, warn, info, debug "
                      "or trace; logging at warn", err)
        self.assertIn("ferryctl: FERRY_LOG_FORMAT 'yaml' is neither json nor text", err)
        # The refused target ends ferry-worker right after its connector
        # (where it reads the level) is made.
        rc, err = run([WORKER, "recv", "--request-id", "r1", "--coordinator",
                       "127.0.0.1:9,127.0.0.1:10"], env=env)
        self.assertEqual(rc, EXIT_USAGE, err)
        self.assertIn("ferry-worker: FERRY_LOG_LEVEL 'verbose' is not off, error, warn, info, "
                      "debug or trace; logging at info", err)

    def test_known_values_are_quiet(self):
        for env in ({"FERRY_LOG_LEVEL": "debug", "FERRY_LOG_FORMAT": "text"},
                    {"FERRY_LOG_LEVEL": "off", "FERRY_LOG_FORMAT": "json"},
                    {"FERRY_LOG_FORMAT": ""}):
            with self.subTest(env=env):
                rc, err = run([FERRYCTL, "bogus"], env=env)
                self.assertEqual(rc, EXIT_USAGE, err)
                self.assertNotIn("FERRY_LOG", err)
                rc, err = run([COORDINATOR, "--tls-ca", "ca.pem"], env=env)
                self.assertEqual(rc, EXIT_USAGE, err)
                self.assertNotIn("FERRY_LOG", err)


class ClientTlsFlags(unittest.TestCase):
    """--tls-ca turns TLS to the coordinator on, in ferry-worker and ferryctl
    alike: a certificate, key or server name without it was dropped, and the
    program talked plaintext. Now it exits 2 naming the flag (or variable)
    and --tls-ca; a certificate without its key, or a key without its
    certificate, exits 2 naming both; any of them set but empty exits 2
    naming it."""

    PROGRAMS = {"ferry-worker": [WORKER, "recv", "--request-id", "j", "--timeout", "1"],
                "ferryctl": [FERRYCTL, "health", "--timeout", "1"]}
    WITHOUT_CA = [
        (["--tls-cert", "c.pem", "--tls-key", "k.pem"], {}, "--tls-cert (FERRY_TLS_CERT)"),
        ([], {"FERRY_TLS_CERT": "c.pem", "FERRY_TLS_KEY": "k.pem"}, "--tls-cert (FERRY_TLS_CERT)"),
        (["--tls-key", "k.pem"], {}, "--tls-key (FERRY_TLS_KEY)"),
        (["--tls-server-name", "ferry.test"], {}, "--tls-server-name"),
    ]

    def test_without_ca_is_usage_error_naming_the_flag(self):
        for prog, base in self.PROGRAMS.items():
            for args, env, named in self.WITHOUT_CA:
                with self.subTest(prog=prog, args=args, env=env):
                    rc, err = run([*base, *args], env=env)
                    self.assertEqual(rc, EXIT_USAGE, err)
                    self.assertIn(f"{named} needs --tls-ca (FERRY_TLS_CA)", err)

    def test_cert_and_key_go_together(self):
        for prog, base in self.PROGRAMS.items():
            for args in (["--tls-cert", "c.pem"], ["--tls-key", "k.pem"]):
                with self.subTest(prog=prog, args=args):
                    rc, err = run([*base, "--tls-ca", "ca.pem", *args])
                    self.assertEqual(rc, EXIT_USAGE, err)
                    self.assertIn("--tls-cert (FERRY_TLS_CERT) and --tls-key (FERRY_TLS_KEY) go "
                                  "together", err)

    def test_set_but_empty_is_usage_error_naming_it(self):
        # A template that left a variable blank: refused, as the coordinator
        # does, not taken as unset (plaintext) or as a file named "".
        cases = [
            ([], {"FERRY_TLS_CA": ""}, "--tls-ca (FERRY_TLS_CA)"),
            (["--tls-ca", ""], {}, "--tls-ca (FERRY_TLS_CA)"),
            ([], {"FERRY_TLS_CA": "ca.pem", "FERRY_TLS_CERT": "", "FERRY_TLS_KEY": "k.pem"},
             "--tls-cert (FERRY_TLS_CERT)"),
            (["--tls-ca", "ca.pem", "--tls-cert", "c.pem", "--tls-key", ""], {},
             "--tls-key (FERRY_TLS_KEY)"),
            (["--tls-ca", "ca.pem", "--tls-server-name", ""], {}, "--tls-server-name"),
        ]
        for prog, base in self.PROGRAMS.items():
            for args, env, named in cases:
                with self.subTest(prog=prog, args=args, env=env):
                    rc, err = run([*base, *args], env=env)
                    self.assertEqual(rc, EXIT_USAGE, err)
                    self.assertIn(f"{named} is set but empty", err)


class ClientEmptyCoordinator(unittest.TestCase):
    """FERRY_COORDINATOR="" (FERRY_COORDINATOR= in a script) is unset, as an
    empty FERRY_TOKEN is no token: ferryctl refused it as an empty entry,
    ferry-worker as an empty target (exit 2 both). Both now go to the
    default, 127.0.0.1:7400."""

    def test_ferryctl_takes_the_default(self):
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
        full_env["FERRY_COORDINATOR"] = ""
        p = subprocess.run([FERRYCTL, "health", "--timeout", "1"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=30, env=full_env)
        self.assertNotEqual(p.returncode, EXIT_USAGE, p.stderr)
        self.assertIn("127.0.0.1:7400", p.stdout + p.stderr)

    def test_ferry_worker_takes_the_default(self):
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
        full_env["FERRY_COORDINATOR"] = ""
        p = subprocess.Popen([WORKER, "recv", "--request-id", "r-empty", "--timeout", "1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=full_env)
        try:
            # Refused, it exits 2 at once; on the default target it goes on
            # (registering, or retrying a coordinator that is not there).
            rc = p.wait(timeout=2)
        except subprocess.TimeoutExpired:
            rc = None
        p.terminate()
        err = p.communicate(timeout=30)[1]
        self.assertIsNone(rc, err)
        self.assertNotIn("target is required", err)


class CoordinatorFlags(unittest.TestCase):
    BAD = {
        "--ttl": ["0", "3601", "-1", "99999999999999999999", "x", "", "+5", " 5"],
        "--threads": ["0", "257", "-3", "x"],
        "--grace-ms": ["-1", "600001", "1e3", "x"],
        "--max-connection-age-ms": ["-1", "1", "999", "86400001", "30m", ""],
        "--max-connection-age-grace-ms": ["-1", "86400001", "x"],
        "--etcd-inflight": ["0", "1025", "-1", "x"],
        "--etcd-queue": ["-1", "1000001", "x"],
        "--register-batch": ["0", "129", "-1", "x"],
        "--max-waits": ["0", "1000001", "-1", "x"],
        "--max-watches": ["0", "1000001", "-1", "x"],
        "--watch-memory-mib": ["0", "1048577", "-1", "x", ""],
        "--max-watches-per-peer": ["1000001", "-1", "x", ""],
        "--max-waits-per-peer": ["1000001", "-1", "x", ""],
        "--etcd-reads-per-peer": ["1000001", "-1", "x", ""],
        "--etcd-writes-per-peer": ["1000001", "-1", "x", ""],
        "--stored-mib-per-peer": ["1048577", "-1", "x", ""],
        "--handshake-timeout-ms": ["999", "600001", "-1", "x", ""],
        "--request-memory-mib": ["3", "1048577", "-1", "x", "", "99999999999999999999"],
        "--listen": ["127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:x", "127.0.0.1:"],
        "--metrics-listen": ["127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:x", "nohost"],
        "--prefix": [prefix_of(257), prefix_of(4096), "/ferry", ""],
        "--log-level": ["OFF", "none", "warning", ""],
    }
    ENV = {
        "FERRY_TTL": ["0", "3601"],
        "FERRY_THREADS": ["0", "1000"],
        "FERRY_GRACE_MS": ["-1", "soon"],
        "FERRY_MAX_CONNECTION_AGE_MS": ["-1", "500", "86400001"],
        "FERRY_MAX_CONNECTION_AGE_GRACE_MS": ["never"],
        "FERRY_ETCD_INFLIGHT": ["0", "many"],
        "FERRY_ETCD_QUEUE": ["-1"],
        "FERRY_REGISTER_BATCH": ["0", "129"],
        "FERRY_MAX_WAITS": ["0", "1000001"],
        "FERRY_MAX_WATCHES": ["0", "1000001"],
        "FERRY_WATCH_MEMORY_MIB": ["0", "1048577", "lots"],
        "FERRY_MAX_WATCHES_PER_PEER": ["-1", "1000001"],
        "FERRY_MAX_WAITS_PER_PEER": ["few"],
        "FERRY_ETCD_READS_PER_PEER": ["-1", "1000001"],
        "FERRY_ETCD_WRITES_PER_PEER": ["-1", "1000001", "many"],
        "FERRY_STORED_MIB_PER_PEER": ["-1", "1048577", "lots"],
        "FERRY_HANDSHAKE_TIMEOUT_MS": ["0", "600001"],
        "FERRY_REQUEST_MEMORY_MIB": ["0", "2", "lots"],
        "FERRY_LOG_LEVEL": ["verbose"],
        "FERRY_LOG_FORMAT": ["yaml", "JSON"],
        "FERRY_RPC_KEEPALIVE_MS": ["999", "2000001", "x", " 20000", "+20000"],
        "FERRY_TLS_REFRESH_S": ["0", "86401", "x"],
        "FERRY_LISTEN": ["127.0.0.1:99999", "127.0.0.1:x"],
    }

    def test_out_of_range_is_usage_error_naming_flag(self):
        for flag, values in self.BAD.items():
            for value in values:
                with self.subTest(flag=flag, value=value[:40]):
                    rc, err = run([COORDINATOR, flag, value])
                    self.assertEqual(rc, EXIT_USAGE, err)
                    self.assertIn(flag, err)

    def test_out_of_range_variable_is_usage_error_naming_it(self):
        for name, values in self.ENV.items():
            for value in values:
                with self.subTest(name=name, value=value):
                    rc, err = run([COORDINATOR], env={name: value})
                    self.assertEqual(rc, EXIT_USAGE, err)
                    self.assertIn(name, err)

    def test_set_but_empty_variable_is_usage_error_naming_it(self):
        """A variable set but empty was taken as unset: FERRY_ETCD= started a
        private etcd (a replica SERVING a store of its own), FERRY_PREFIX=
        meant /ferry/, FERRY_METRICS_LISTEN= no metrics. Refused, naming it;
        its flag still wins."""
        for flag, name in (("--etcd", "FERRY_ETCD"), ("--prefix", "FERRY_PREFIX"),
                           ("--listen", "FERRY_LISTEN"),
                           ("--metrics-listen", "FERRY_METRICS_LISTEN"),
                           ("--state-dir", "FERRY_STATE_DIR"), ("--name", "FERRY_NAME"),
                           ("--log-level", "FERRY_LOG_LEVEL"),
                           ("--etcd-kv-api", "FERRY_ETCD_KV_API")):
            with self.subTest(name=name):
                rc, err = run([COORDINATOR], env={name: ""})
                self.assertEqual(rc, EXIT_USAGE, err)
                self.assertIn(f"{flag} ({name}) is set but empty: give it ", err)
        for name in ("FERRY_TTL", "FERRY_REQUEST_MEMORY_MIB", "FERRY_MAX_WAITS",
                     "FERRY_ETCD_BIN"):
            with self.subTest(name=name):
                rc, err = run([COORDINATOR], env={name: ""})
                self.assertEqual(rc, EXIT_USAGE, err)
                self.assertIn(f"{name} is set but empty", err)
        rc, err = run([COORDINATOR], env={"FERRY_NAME": ""})
        self.assertIn("--name (FERRY_NAME) is set but empty: give it the replica's name or "
                      "unset it", err)  # it read "name a name"
        rc, err = run([COORDINATOR, "--prefix", "/t/", "--tls-ca", "ca.pem"],
                      env={"FERRY_PREFIX": ""})
        self.assertEqual(rc, EXIT_USAGE, err)
        self.assertIn("--tls-ca needs --tls-cert", err)

    def test_metrics_listen_off(self):
        """off, from the flag or the variable, turns the metrics off: with
        empty refused, an overlay could not turn off the base's
        FERRY_METRICS_LISTEN (review-s33b L3). Accepted, then stopped by
        --tls-ca without a certificate, so nothing starts."""
        for args, env in ((["--metrics-listen", "off"], {}),
                          ([], {"FERRY_METRICS_LISTEN": "off"}),
                          (["--metrics-listen", "off"], {"FERRY_METRICS_LISTEN": "0.0.0.0:9400"})):
            with self.subTest(args=args, env=env):
                rc, err = run([COORDINATOR, *args, "--tls-ca", "ca.pem"], env=env)
                self.assertEqual(rc, EXIT_USAGE, err)
                self.assertIn("--tls-ca needs --tls-cert", err)
        p = subprocess.run([COORDINATOR, "--help"], stdout=subprocess.PIPE, text=True,
                           timeout=30)
        self.assertIn("or off: no metrics", p.stdout)

    def test_help_lists_the_variables_without_a_flag(self):
        p = subprocess.run([COORDINATOR, "--help"], stdout=subprocess.PIPE, text=True,
                           timeout=30)
        self.assertEqual(p.returncode, 0)
        for name in ("FERRY_RPC_KEEPALIVE_MS", "FERRY_TLS_REFRESH_S", "FERRY_ETCD_PASSWORD",
                     "FERRY_ETCD_BIN"):
            self.assertIn(name, p.stdout)
        # The password is no number: listed apart from the numbers' range rule.
        numbers, _, others = p.stdout.partition("Other variables without a flag:")
        self.assertIn("Numbers without a flag (out of range", numbers)
        numbers = numbers.partition("Numbers without a flag")[2]
        self.assertNotIn("FERRY_ETCD_PASSWORD", numbers)
        self.assertIn("FERRY_ETCD_PASSWORD", others)

    def test_etcd_user_without_its_password_is_usage_error(self):
        """A user without FERRY_ETCD_PASSWORD (unset or empty) is refused at
        once: it started, failed authentication on every try, and served
        nothing, never ready, with the cause only in its log."""
        for env in ({"FERRY_ETCD_USER": "ferry"},
                    {"FERRY_ETCD_USER": "ferry", "FERRY_ETCD_PASSWORD": ""}):
            with self.subTest(env=env):
                rc, err = run([COORDINATOR], env=env)
                self.assertEqual(rc, EXIT_USAGE, err)
                self.assertIn("FERRY_ETCD_PASSWORD", err)
        rc, err = run([COORDINATOR, "--etcd-user", "ferry"])
        self.assertEqual(rc, EXIT_USAGE, err)
        self.assertIn("--etcd-user (FERRY_ETCD_USER) needs its password", err)

    def test_tls_pairs_are_checked_at_start(self):
        """A certificate and key that do not match, or do not read, exit 2
        naming the flags and files: the replica started, failed every
        handshake, and ran NOT_SERVING with the cause in TLS words or none
        (etcd refusing a client certificate read as "failed to connect");
        an etcd certificate without its key too. (Matching pairs start:
        python_etcd_tls, the TLS clusters.)"""
        certs = ferry_harness.make_certs(STATE.name)
        pem = {n: os.path.join(certs, n) for n in ("server.pem", "server.key", "client.pem",
                                                     "client.key")}
        etcd = ["--etcd", "https://127.0.0.1:9"]
        for args, want in (
                (["--tls-cert", pem["server.pem"], "--tls-key", pem["client.key"]],
                 f"--tls-key (FERRY_TLS_KEY) '{pem['client.key']}' is not the key of "
                 f"--tls-cert (FERRY_TLS_CERT) '{pem['server.pem']}'"),
                (etcd + ["--etcd-cert", pem["client.pem"], "--etcd-key", pem["server.key"]],
                 f"--etcd-key (FERRY_ETCD_KEY) '{pem['server.key']}' is not the key of "
                 f"--etcd-cert (FERRY_ETCD_CERT) '{pem['client.pem']}'"),
                (etcd + ["--etcd-cert", pem["client.pem"]],
                 f"--etcd-cert (FERRY_ETCD_CERT) '{pem['client.pem']}' holds no private key and "
                 "no --etcd-key (FERRY_ETCD_KEY) is given"),
                (etcd + ["--etcd-key", pem["client.key"]],
                 "--etcd-key (FERRY_ETCD_KEY) needs --etcd-cert (FERRY_ETCD_CERT)"),
                (["--tls-cert", pem["server.key"], "--tls-key", pem["server.key"]],
                 f"--tls-cert (FERRY_TLS_CERT) '{pem['server.key']}': holds no PEM certificate"),
                (etcd + ["--etcd-cert", pem["client.pem"], "--etcd-key", pem["client.pem"]],
                 f"--etcd-key (FERRY_ETCD_KEY) '{pem['client.pem']}': holds no PEM private key"),
                (["--tls-cert", pem["server.pem"], "--tls-key", certs + "/absent.key"],
                 f"--tls-key (FERRY_TLS_KEY) '{certs}/absent.key': No such file")):
            with self.subTest(args=args):
                rc, err = run([COORDINATOR, *args])
                self.assertEqual(rc, EXIT_USAGE, err)
                self.assertIn(want, err)

    def test_prefix_message_says_the_limit(self):
        rc, err = run([COORDINATOR, "--prefix", prefix_of(300)])
        self.assertEqual(rc, EXIT_USAGE, err)
        self.assertIn("--prefix must be 1 to 256 bytes, not 300", err)

    def test_limits_are_accepted(self):
        for args in (["--ttl", "1", "--threads", "1", "--grace-ms", "0",
                      "--etcd-inflight", "1", "--etcd-queue", "0", "--register-batch", "1",
                      "--max-waits", "1", "--max-watches", "1", "--request-memory-mib", "4",
                      "--watch-memory-mib", "1", "--max-watches-per-peer", "0",
                      "--max-waits-per-peer", "0", "--etcd-reads-per-peer", "0",
                      "--etcd-writes-per-peer", "0", "--stored-mib-per-peer", "0",
                      "--handshake-timeout-ms", "1000",
                      "--max-connection-age-ms", "1000", "--max-connection-age-grace-ms", "0",
                      "--listen", "127.0.0.1:0", "--prefix", "/", "--log-level", "off"],
                     ["--ttl", "3600", "--threads", "256", "--grace-ms", "600000",
                      "--etcd-inflight", "1024", "--etcd-queue", "1000000",
                      "--register-batch", "128", "--max-waits", "1000000",
                      "--max-watches", "1000000", "--request-memory-mib", "1048576",
                      "--watch-memory-mib", "1048576", "--max-watches-per-peer", "1000000",
                      "--max-waits-per-peer", "1000000", "--etcd-reads-per-peer", "1000000",
                      "--etcd-writes-per-peer", "1000000", "--stored-mib-per-peer", "1048576",
                      "--handshake-timeout-ms", "600000",
                      "--max-connection-age-ms", "86400000",
                      "--max-connection-age-grace-ms", "86400000",
                      "--listen", "127.0.0.1:65535", "--prefix", prefix_of(256),
                      "--log-level", "trace"]):
            with self.subTest(args=args[:12]):
                rc, err = run([COORDINATOR, *args, "--tls-ca", "ca.pem"])
                self.assertEqual(rc, EXIT_USAGE, err)
                self.assertIn("--tls-ca needs --tls-cert", err)


def startup_lines(args):
    """The coordinator's log up to its "serving on" line; then SIGTERM."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env.update({"FERRY_ETCD": "http://127.0.0.1:9", "XDG_STATE_HOME": STATE.name})
    p = subprocess.Popen([COORDINATOR, "--listen", "127.0.0.1:0", *args],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    watchdog = threading.Timer(30, p.kill)  # a coordinator that never serves ends the read
    watchdog.start()
    try:
        for line in p.stderr:
            lines.append(line)
            if " serving on " in line:
                break
    finally:
        watchdog.cancel()
        p.terminate()
        p.communicate(timeout=30)
    return "".join(lines)


class CoordinatorStartupWarnings(unittest.TestCase):
    def test_request_memory_that_parked_waits_fill(self):
        """--request-memory-mib at or under --max-waits x 16 KiB: parked
        Lookups alone can refuse the Register they wait for. Warned of at
        startup, as the Watch bound's pair is; not where it is above."""
        warned = "parked Lookups and Claims alone can fill it"
        out = startup_lines(["--request-memory-mib", "64"])
        self.assertIn("--request-memory-mib 64 is not above --max-waits (10000) x 16 KiB "
                      "(157 MiB)", out)
        out = startup_lines(["--request-memory-mib", "64", "--max-waits", "4096"])
        self.assertIn("--request-memory-mib 64 is not above --max-waits (4096)", out)
        for args in (["--request-memory-mib", "192"],
                     ["--request-memory-mib", "64", "--max-waits", "4095"], []):
            with self.subTest(args=args):
                out = startup_lines(args)
                self.assertIn(" serving on ", out)
                self.assertNotIn(warned, out)


if __name__ == "__main__":
    unittest.main()
