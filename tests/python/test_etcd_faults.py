"""Fault tests: two coordinator replicas over a three-member etcd cluster on
loopback, under a stream of registrations, lookups and claims, while etcd
members are killed, frozen (SIGSTOP) and the quorum is lost, and while a
replica is killed.

What is asserted is correctness only: every registration the load
generator got acknowledged exists exactly once, in the state it was left
in, seen through both replicas (List) and in etcd itself (a range over the
prefix, decoded); with quorum lost writes fail UNAVAILABLE and health says
NOT_SERVING, and service comes back without restarting coordinators; with
the first --etcd endpoint frozen, both replicas keep serving writes and
lookups through the others. "Bounded" is a generous deadline per step
(wait_until raises when it passes); no timing is asserted beyond that.

The figures (acknowledged, lost, max latency during each fault, time to
recover) are printed for the record. Run with /usr/bin/python3 from CTest.
"""
import base64
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import ferry_harness  # noqa: E402
from ferry_harness import free_port, wait_until  # noqa: E402

import grpc  # noqa: E402

PREFIX = "/ferry/"
RPC_TIMEOUT = 20  # seconds; a call that takes longer counts as failed
BOUND = 30  # seconds: what "within a bounded time" means here
HEALTH_BOUND = 15  # seconds for health to follow etcd
# Answers that say a call was refused, not applied.
REFUSALS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


def post(endpoint, path, body, timeout=2):
    req = urllib.request.Request(endpoint + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


class Member:
    """One etcd member; SIGKILL, SIGSTOP/SIGCONT and restart on its data."""

    def __init__(self, tmp, name):
        self.tmp, self.name = tmp, name
        self.proc = None
        self.stopped = False
        self.new_ports()

    def new_ports(self):
        """Free loopback ports a moment ago: another process may bind one
        before etcd does (EtcdCluster.start tries again then)."""
        self.port, self.peer = free_port(), free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.peer_url = f"http://127.0.0.1:{self.peer}"

    def log(self):
        try:
            with open(os.path.join(self.tmp, f"{self.name}.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def start(self, initial_cluster):
        with open(os.path.join(self.tmp, f"{self.name}.log"), "ab") as log:
            self.proc = subprocess.Popen(
                ["etcd", "--name", self.name, "--data-dir", os.path.join(self.tmp, self.name),
                 "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                 "--listen-peer-urls", self.peer_url,
                 "--initial-advertise-peer-urls", self.peer_url,
                 "--initial-cluster", initial_cluster, "--initial-cluster-state", "new",
                 "--initial-cluster-token", os.path.basename(self.tmp)],
                stdout=log, stderr=log, preexec_fn=ferry_harness.die_with_parent,
                start_new_session=True)  # frozen: see ferry_harness.freeze
        self.stopped = False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None and not self.stopped

    def status(self):
        try:
            return post(self.endpoint, "/v3/maintenance/status", {}, timeout=1)
        except OSError:
            return None

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def freeze(self):
        ferry_harness.freeze(self.proc)
        self.stopped = True

    def thaw(self):
        self.proc.send_signal(signal.SIGCONT)
        self.stopped = False

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)


class EtcdCluster:
    START_TRIES = 3  # fresh starts on which another process took a port first

    def __init__(self, tmp, n=3):
        self.tmp = tmp
        self.members = [Member(tmp, f"m{i}") for i in range(n)]
        self.addresses()

    def addresses(self):
        self.initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        self.endpoints = ",".join(m.endpoint for m in self.members)

    def start(self):
        """A new cluster, every member following one leader. Where a member
        exits at once because another process took one of its ports, the
        cluster starts again, fresh, on new ports (a member's ports are in
        every member's --initial-cluster); a member that exits for another
        reason fails the start with its log."""
        for attempt in range(self.START_TRIES):
            for m in self.members:
                m.start(self.initial)
            try:
                self.wait_healthy()
                return
            except TimeoutError:
                dead = [m for m in self.members if m.proc.poll() is not None]
                if not dead:
                    raise
                taken = any("address already in use" in m.log() for m in dead)
                if not taken or attempt + 1 == self.START_TRIES:
                    raise RuntimeError("etcd member(s) exited at start: " + "; ".join(
                        f"{m.name} (exit {m.proc.returncode}): {m.log()[-2000:]}"
                        for m in dead)) from None
            self.close()
            for m in self.members:
                shutil.rmtree(os.path.join(self.tmp, m.name), ignore_errors=True)
                os.unlink(os.path.join(self.tmp, f"{m.name}.log"))
                m.new_ports()
            self.addresses()

    def leader(self):
        """The member that leads, by the live members' common answer."""
        for m in self.members:
            st = m.status() if m.alive() else None
            if st and st.get("leader", "0") != "0":
                for c in self.members:
                    cst = c.status() if c.alive() else None
                    if cst and cst["header"]["member_id"] == st["leader"]:
                        return c
        return None

    def wait_healthy(self):
        last = []

        def ok():
            exited = [m for m in self.members if m.proc is not None and m.proc.poll() is not None]
            if exited:  # none will follow a leader: say so now, not in 30 s
                raise TimeoutError("etcd member(s) exited: " + "; ".join(
                    f"{m.name} (exit {m.proc.returncode}): {m.log()[-1500:]}" for m in exited))
            sts = [m.status() for m in self.members]
            last[:] = [(m.name, None if s is None else (s.get("leader"), s.get("raftTerm")))
                       for m, s in zip(self.members, sts)]
            return (all(s is not None for s in sts) and
                    len({s.get("leader", "0") for s in sts}) == 1 and
                    sts[0].get("leader", "0") != "0" and self.leader() is not None)
        try:
            wait_until(ok, BOUND, "every etcd member to follow one leader")
        except TimeoutError as e:
            # What each member said last (leader, term; None: no answer
            # within its 1 s), so that a failure here explains itself.
            raise TimeoutError(f"{e}; last (leader, term) by member: {last}") from None

    def restart(self, m):
        m.start(self.initial)

    def ops(self):
        """Every operation record under the prefix, from etcd itself (a
        linearizable range on a live member): {request_id: [Operation]}."""
        from ferry.v1 import types_pb2
        key = (PREFIX + "ops/").encode()
        end = key[:-1] + bytes([key[-1] + 1])
        for m in self.members:
            if not m.alive():
                continue
            try:
                reply = post(m.endpoint, "/v3/kv/range",
                             {"key": base64.b64encode(key).decode(),
                              "range_end": base64.b64encode(end).decode()}, timeout=10)
            except OSError:
                continue
            out = {}
            for kv in reply.get("kvs", []):
                rid = base64.b64decode(kv["key"])[len(key):].decode()
                op = types_pb2.Operation.FromString(base64.b64decode(kv.get("value", "")))
                out.setdefault(rid, []).append(op)
            return out
        raise RuntimeError("no etcd member answered the range")

    def close(self):
        for m in self.members:
            m.close()


def metadata(pb):
    return pb.RdmaMetadata(
        version=1, kind=pb.OPERATION_KIND_WRITE, worker_address=b"\x01" * 64,
        descriptors=[pb.Descriptor(address=0x10000, size=4096,
                                   device=pb.Device(kind=pb.DEVICE_KIND_HOST), rkey=b"k" * 32)],
        notification_key=os.urandom(16), worker_name="fault-load", hostname="localhost")


class Replica:
    """A coordinator process and the client side of it."""

    def __init__(self, tmp, endpoints, name, gen_dir):
        self.coord = ferry_harness.Coordinator(tmp, endpoints, name=name, ttl=60)
        self.gen_dir = gen_dir
        self.name = name

    def start(self):
        from ferry.v1 import coordinator_pb2_grpc
        self.coord.start()
        self.channel = grpc.insecure_channel(self.coord.target)
        self.stub = coordinator_pb2_grpc.CoordinatorStub(self.channel)
        self.hpb, self.check = ferry_harness.health_client(self.channel, self.gen_dir)

    def health(self):
        try:
            r = self.check(self.hpb.HealthCheckRequest(service=""), timeout=2)
            return r.status
        except grpc.RpcError:
            return None

    def serving(self):
        return self.health() == self.hpb.HealthCheckResponse.SERVING

    def not_serving(self):
        return self.health() == self.hpb.HealthCheckResponse.NOT_SERVING

    def live(self):
        r = self.check(self.hpb.HealthCheckRequest(service="liveness"), timeout=2)
        return r.status == self.hpb.HealthCheckResponse.SERVING

    def kill(self):
        self.coord.proc.send_signal(signal.SIGKILL)
        self.coord.proc.wait(10)
        self.channel.close()

    def stop(self):
        self.channel.close()
        return self.coord.stop()


class Load:
    """Workers that register through alternating replicas, look each
    acknowledged ID up through the other one, and claim every fourth. A
    client whose call fails with UNAVAILABLE or DEADLINE_EXCEEDED sends its
    next calls to the other replica for a while (it fails over). Only an OK
    answer counts as acknowledged."""

    def __init__(self, replicas, pb, cpb, workers=4):
        self.replicas, self.pb, self.cpb = replicas, pb, cpb
        self.lock = threading.Lock()
        self.acked = {}  # request_id -> expected state (a set of allowed states)
        self.calls = []  # (start, latency, replica index, rpc, ok, code)
        self.lookup_misses = 0
        self.claim_failures = []  # (request_id, code)
        self.attempted = set()  # every request_id a Register was sent for
        self.stop_ev = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(w,), daemon=True)
                        for w in range(workers)]
        self.seq = 0

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(RPC_TIMEOUT * 3)

    def call(self, r, rpc, fn):
        t0 = time.monotonic()
        ok, result, code = False, None, None
        try:
            result = fn(self.replicas[r].stub)
            ok = True
        except grpc.RpcError as e:
            code = e.code()
        except ValueError:  # the channel was closed under us (replica killed)
            code = grpc.StatusCode.UNAVAILABLE
        with self.lock:
            self.calls.append((t0, time.monotonic() - t0, r, rpc, ok, code))
        return ok, result, code

    def run(self, w):
        rnd = random.Random(w)
        avoid = {}  # replica -> monotonic time until which it is avoided
        i = 0
        while not self.stop_ev.is_set():
            i += 1
            rid = f"f{w}-{i}"
            r = (i + w) % 2
            if avoid.get(r, 0) > time.monotonic():
                r = 1 - r
            with self.lock:
                self.attempted.add(rid)
            ok, reg, code = self.call(r, "register", lambda s: s.Register(
                self.cpb.RegisterRequest(request_id=rid, metadata=metadata(self.pb),
                                         ttl_seconds=600, owner="fault-load"),
                timeout=RPC_TIMEOUT))
            if not ok:
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    avoid[r] = time.monotonic() + 2
                time.sleep(0.05)
                continue
            with self.lock:
                self.acked[rid] = {self.pb.OPERATION_STATE_REGISTERED}
            o = 1 - r if avoid.get(1 - r, 0) <= time.monotonic() else r
            ok, _, code = self.call(o, "lookup", lambda s: s.Lookup(
                self.cpb.LookupRequest(request_id=rid, access_token=reg.access_token,
                                       wait_ms=3000), timeout=RPC_TIMEOUT))
            if not ok:
                with self.lock:
                    self.lookup_misses += 1
            if i % 4 == 0:
                ok, _, code = self.call(o, "claim", lambda s: s.Claim(
                    self.cpb.ClaimRequest(request_id=rid, access_token=reg.access_token,
                                          claimant="fault-writer",
                                          kind=self.pb.OPERATION_KIND_WRITE, ttl_seconds=600),
                    timeout=RPC_TIMEOUT))
                with self.lock:
                    if ok:
                        self.acked[rid] = {self.pb.OPERATION_STATE_CLAIMED}
                    elif code not in REFUSALS:
                        # UNAVAILABLE, DEADLINE_EXCEEDED, a replica killed
                        # mid-call: it may or may not have been applied. If
                        # it was, late (a quorum that came back commits the
                        # transaction after the coordinator gave up on it),
                        # the coordinator has revoked the claim's lease it
                        # made, so the claim ended ERRORED: what the README
                        # promises for an unanswered claim ("still open or
                        # ERRORED"), as libferry's abandon also makes it.
                        self.acked[rid] = {self.pb.OPERATION_STATE_REGISTERED,
                                           self.pb.OPERATION_STATE_CLAIMED,
                                           self.pb.OPERATION_STATE_ERRORED}
                    if not ok:
                        self.claim_failures.append((rid, code))
            time.sleep(rnd.uniform(0.005, 0.02))

    # --- figures ---------------------------------------------------------

    def window(self, t0, t1):
        """The calls that were in flight at some time in [t0, t1)."""
        with self.lock:
            calls = [c for c in self.calls if c[0] < t1 and c[0] + c[1] >= t0]
        return calls

    def acked_after(self, t0, replica):
        with self.lock:
            return any(c[0] >= t0 and c[2] == replica and c[3] == "register" and c[4]
                       for c in self.calls)

    def recovered_at(self, t0, replica):
        """End of the first acknowledged register through replica started
        at or after t0 (None if none yet)."""
        with self.lock:
            ends = [c[0] + c[1] for c in self.calls
                    if c[0] >= t0 and c[2] == replica and c[3] == "register" and c[4]]
        return min(ends) if ends else None


class EtcdFaults(unittest.TestCase):
    def setUp(self):
        # Cleanups run even when setUp fails (tearDown does not), after
        # tearDown and last registered first: the replicas stop, then etcd,
        # then the directory goes.
        self.tmp = tempfile.mkdtemp(prefix="ferry-faults-")
        self.addCleanup(self.remove_tmp)
        self.load = None
        self.figures = []
        self.sent = set()  # request_ids the test itself registered (register_once)
        self.gen_dir = os.path.join(self.tmp, "gen")
        ferry_harness.generate_stubs(self.gen_dir)
        from ferry.v1 import coordinator_pb2, types_pb2
        self.pb, self.cpb = types_pb2, coordinator_pb2
        self.etcd = EtcdCluster(self.tmp)
        self.addCleanup(self.etcd.close)
        self.etcd.start()
        self.replicas = [Replica(self.tmp, self.etcd.endpoints, n, self.gen_dir)
                         for n in ("r0", "r1")]
        self.addCleanup(self.stop_replicas)
        for r in self.replicas:
            r.start()
        for r in self.replicas:
            wait_until(r.serving, BOUND, f"{r.name} to serve")

    def tearDown(self):
        if self.load is not None:
            self.load.stop()

    def stop_replicas(self):
        for r in self.replicas:
            try:
                r.stop()
            except Exception:  # noqa: BLE001 (already killed, or never started)
                ferry_harness.kill(r.coord.proc)

    def remove_tmp(self):
        if os.environ.get("FERRY_KEEP_TMP"):
            print(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def note(self, load, name, t0, t1, recovered=None):
        calls = load.window(t0, t1)
        failed = {}
        for c in calls:
            if not c[4]:
                what = f"{c[3]} {c[5].name if c[5] else '?'}"
                failed[what] = failed.get(what, 0) + 1
        worst = max((c[1] for c in calls), default=0.0)
        line = (f"{self._testMethodName}: {name}: {len(calls)} calls, "
                f"{sum(failed.values())} failed {failed or ''}, max latency {worst * 1000:.0f} ms")
        if recovered is not None:
            line += f", time to recover {recovered * 1000:.0f} ms"
        self.figures.append(line)
        print("FIGURE " + line, flush=True)

    def recover_time(self, load, t0):
        """Waits until both replicas acknowledged a register started after
        t0; returns the later of the two ends, relative to t0."""
        for i in range(2):
            wait_until(lambda: load.acked_after(t0, i), BOUND,
                       f"replica r{i} to acknowledge a register after the fault")
        return max(load.recovered_at(t0, i) for i in range(2)) - t0

    def register_once(self, replica, rid):
        return self.register_answer(replica, rid)[0]

    def register_answer(self, replica, rid):
        """Registers rid once: (the status code, its details)."""
        self.sent.add(rid)
        try:
            replica.stub.Register(self.cpb.RegisterRequest(
                request_id=rid, metadata=metadata(self.pb), ttl_seconds=600),
                timeout=RPC_TIMEOUT)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            return e.code(), e.details()

    def start_load(self):
        load = Load(self.replicas, self.pb, self.cpb)
        self.load = load
        load.start()
        wait_until(lambda: len(load.acked) >= 20, BOUND, "the load to get going")
        return load

    def finish(self, load):
        load.stop()
        for r in self.replicas:
            if r.coord.proc.poll() is not None:
                r.start()
            wait_until(r.serving, BOUND, f"{r.name} to serve at the end")
        self.verify(load)

    def test_frozen_first_endpoint(self):
        """SIGSTOP of the first --etcd endpoint: both replicas keep serving
        writes through the others, and their views (the watch) follow. Until
        some failure moves them, both replicas send every request, and their
        watch, to the first endpoint."""
        load = self.start_load()
        # A Watch stream on each replica is fed by that replica's etcd watch
        # (Get would fall back to an etcd read on a view miss).
        streams = []
        for r in self.replicas:
            stream = r.stub.Watch(self.cpb.WatchRequest(request_id_prefix="frozen-"),
                                  timeout=BOUND * 3)
            self.assertTrue(next(stream).created)
            streams.append(stream)
        first = self.etcd.members[0]
        t0 = time.monotonic()
        first.freeze()
        rec = self.recover_time(load, t0)
        for i, r in enumerate(self.replicas):
            rid = f"frozen-{i}"
            wait_until(lambda: self.register_once(r, rid) in (grpc.StatusCode.OK,
                                                             grpc.StatusCode.ALREADY_EXISTS),
                       BOUND, f"a register through {r.name} with {first.name} frozen")
            load.acked[rid] = {self.pb.OPERATION_STATE_REGISTERED}
        for i, r in enumerate(self.replicas):
            # A replica sees the other one's write only through its etcd
            # watch, so only once that watch is off the frozen member. The
            # stream's deadline bounds the wait.
            other = f"frozen-{1 - i}"
            self.assertTrue(any(e.operation.request_id == other
                                for msg in streams[i] for e in msg.events),
                            f"{r.name}'s Watch never delivered {other}")
            streams[i].cancel()
            wait_until(r.serving, HEALTH_BOUND, f"{r.name} to serve with {first.name} frozen")
        time.sleep(1)  # the load runs on against the frozen member (not a synchronization)
        self.note(load, "first endpoint SIGSTOP", t0, time.monotonic(), rec)
        first.thaw()
        self.etcd.wait_healthy()
        self.finish(load)

    def follower_first(self, name):
        """A third replica whose first --etcd endpoint is a follower, and that
        member: freezing it holds what is sent to it without costing the
        cluster its leader (whose loss fails every write until an election,
        whatever the coordinator does)."""
        leader = self.etcd.leader()
        self.assertIsNotNone(leader, "no etcd leader")
        first = next(m for m in self.etcd.members if m is not leader)
        endpoints = ",".join([first.endpoint] + [m.endpoint for m in self.etcd.members
                                                 if m is not first])
        replica = Replica(self.tmp, endpoints, name, self.gen_dir)
        self.replicas.append(replica)  # stopped with the others
        replica.start()
        wait_until(replica.serving, BOUND, f"{name} to serve")
        return replica, first

    def test_a_held_write_does_not_hold_the_registers_after_it(self):
        """A Register whose transaction went to the first endpoint (a
        follower) just as it froze waits for etcd's timeout; the Registers
        after it do not wait for it: once the replica suspects the member,
        they go to another in a transaction of their own and are answered
        while the first is still out. (They queued behind it for the whole
        5 s.)"""
        r, first = self.follower_first("held")
        # A lease of the caller's, while every member answers: the Registers
        # below grant none, so each is only its transaction.
        reply = r.stub.Register(self.cpb.RegisterRequest(
            request_id="held-lease", metadata=metadata(self.pb), ttl_seconds=600),
            timeout=RPC_TIMEOUT)
        self.sent.add("held-lease")
        with open(r.coord.log_path, "rb") as f:
            offset = len(f.read())

        def suspected():
            with open(r.coord.log_path, "rb") as f:
                f.seek(offset)
                return f"{first.endpoint} is suspect".encode() in f.read()

        def on_lease(rid):
            self.sent.add(rid)
            return self.cpb.RegisterRequest(request_id=rid, metadata=metadata(self.pb),
                                            lease_id=reply.lease_id,
                                            lease_token=reply.lease_token)

        first.freeze()
        held = r.stub.Register.future(on_lease("held-a"), timeout=RPC_TIMEOUT)
        wait_until(suspected, BOUND, f"{r.name} to suspect {first.name}")
        r.stub.Register(on_lease("held-b"), timeout=RPC_TIMEOUT)
        # Read now, asserted after the thaw, so that a failure leaves etcd
        # whole for the cleanup.
        held_out = not held.done()
        first.thaw()
        self.etcd.wait_healthy()
        self.assertTrue(held_out, "the Register after the held one waited for it to end")
        try:
            held.result()
        except grpc.RpcError as e:
            # etcd's timeout: the transaction may still be applied.
            self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE, e.details())

    def test_a_register_with_a_new_lease_goes_on_past_a_frozen_member(self):
        """The first Register after the first endpoint (a follower) froze, on
        a lease of its own: its grant (and then its transaction) goes on to
        another member after 1 s, and it is answered OK at its first try.
        (The grant waited out etcd's 5 s and the Register failed
        UNAVAILABLE.)"""
        r, first = self.follower_first("fresh")
        first.freeze()
        self.assertEqual(self.register_once(r, "fresh-lease"), grpc.StatusCode.OK)
        first.thaw()
        self.etcd.wait_healthy()

    def test_an_endpoint_list_short_of_the_cluster_is_warned_of(self):
        """A replica given one of the three members is warned at its first
        look at etcd, naming the two it does not name (the workers whose
        leases it keeps lose them when its one member fails, though etcd
        keeps its quorum); the replicas given all three are not."""
        warning = "names 1 of them"
        single = Replica(self.tmp, self.etcd.members[0].endpoint, "single", self.gen_dir)
        self.replicas.append(single)  # stopped with the others
        single.start()
        wait_until(lambda: single.coord.log_contains(warning), BOUND,
                   "the single-endpoint replica to warn of the members it does not name")
        with open(single.coord.log_path, errors="replace") as f:
            line = next(x for x in f if warning in x)
        self.assertIn("the cluster has 3 members", line)
        unnamed = line.split("(not ", 1)[1].split(")", 1)[0].split(", ")
        self.assertEqual(sorted(unnamed), sorted(m.endpoint for m in self.etcd.members[1:]))
        for r in self.replicas[:2]:
            # They serve: their first look at etcd, which warns, is done.
            self.assertTrue(r.serving())
            self.assertFalse(r.coord.log_contains("the cluster has 3 members"),
                             f"{r.name} names every member, yet was warned")

    def test_quorum_loss(self):
        """Two of three members frozen: writes fail UNAVAILABLE and health
        says NOT_SERVING; once they run again, service resumes without a
        coordinator restart."""
        load = self.start_load()
        lost = self.etcd.members[1:]
        t0 = time.monotonic()
        for m in lost:
            m.freeze()
        for r in self.replicas:
            wait_until(r.not_serving, HEALTH_BOUND, f"{r.name} to say NOT_SERVING")
        t_health = time.monotonic() - t0
        for r in self.replicas:
            # What a liveness probe asks: the process serves; a restart
            # would not bring etcd's quorum back.
            self.assertTrue(r.live(), f"{r.name}: liveness should stay SERVING")
        for i, r in enumerate(self.replicas):
            # Saying why, while health says NOT_SERVING: it said only
            # "service unavailable".
            code, details = self.register_answer(r, f"noquorum-{i}")
            self.assertEqual(code, grpc.StatusCode.UNAVAILABLE)
            self.assertIn("etcd cannot commit", details)
        t_thaw = time.monotonic()
        for m in lost:
            m.thaw()
        for r in self.replicas:
            wait_until(r.serving, BOUND, f"{r.name} to serve again after quorum came back")
        rec = self.recover_time(load, t_thaw)
        self.note(load, "quorum loss", t0, t_thaw)
        self.figures.append(f"{self._testMethodName}: quorum loss: NOT_SERVING on both after {t_health * 1000:.0f} ms; "
                            f"writes again {rec * 1000:.0f} ms after quorum came back")
        print("FIGURE " + self.figures[-1], flush=True)
        self.etcd.wait_healthy()
        self.finish(load)

    def test_member_and_replica_kills(self):
        """SIGKILL a follower, then the leader (each restarted), then one
        replica: the clients fail over to the other; nothing acknowledged is
        lost."""
        load = self.start_load()
        members = self.etcd.members
        leader = self.etcd.leader()
        follower = next(m for m in members if m is not leader)
        t0 = time.monotonic()
        follower.kill()
        rec = self.recover_time(load, t0)
        time.sleep(2)  # the load runs on with two members (not a synchronization)
        self.note(load, "follower SIGKILL", t0, time.monotonic(), rec)
        self.etcd.restart(follower)
        self.etcd.wait_healthy()

        leader = self.etcd.leader()
        t0 = time.monotonic()
        leader.kill()
        rec = self.recover_time(load, t0)
        time.sleep(2)
        self.note(load, "leader SIGKILL", t0, time.monotonic(), rec)
        self.etcd.restart(leader)
        self.etcd.wait_healthy()

        t0 = time.monotonic()
        self.replicas[1].kill()
        wait_until(lambda: load.acked_after(t0, 0), BOUND, "r0 to acknowledge after r1 died")
        time.sleep(2)
        rec = load.recovered_at(t0, 0) - t0
        self.note(load, "replica SIGKILL", t0, time.monotonic(), rec)
        self.finish(load)

    def list_all(self, replica):
        out, token = {}, ""
        while True:
            r = replica.stub.List(self.cpb.ListRequest(page_size=1000, page_token=token),
                                  timeout=RPC_TIMEOUT)
            for op in r.operations:
                out.setdefault(op.request_id, []).append(op.state)
            token = r.next_page_token
            if not token:
                return out

    def verify(self, load):
        acked = dict(load.acked)
        in_etcd = self.etcd.ops()
        lost = [rid for rid in acked if rid not in in_etcd]
        # A record's key is its request_id (one key each, so a range cannot
        # show one ID twice): each record in etcd must carry the ID of its
        # key, and be one that some Register was sent for.
        with load.lock:
            attempted = load.attempted | self.sent
        stray = [rid for rid in in_etcd if rid not in attempted]
        mismatched = [rid for rid, ops in in_etcd.items() if ops[0].request_id != rid]
        wrong = [rid for rid in acked if rid in in_etcd and
                 in_etcd[rid][0].state not in acked[rid]]

        def views_agree():
            for r in self.replicas:
                seen = self.list_all(r)
                for rid, want in acked.items():
                    if len(seen.get(rid, [])) != 1 or seen[rid][0] not in want:
                        return False
            return True

        ok_views = True
        try:
            wait_until(views_agree, BOUND, "both replicas to list every acknowledged record")
        except TimeoutError:
            ok_views = False
        n_calls = len(load.calls)
        worst = max((c[1] for c in load.calls), default=0) * 1000
        # Every ID is fresh: ALREADY_EXISTS means a write was sent twice.
        replayed = [c for c in load.calls
                    if c[3] == "register" and c[5] == grpc.StatusCode.ALREADY_EXISTS]
        summary = (f"{self._testMethodName}: acknowledged {len(acked)}, lost {len(lost)}, "
                   f"never sent {len(stray)}, under another key {len(mismatched)}, "
                   f"replayed {len(replayed)}, "
                   f"wrong state {len(wrong)}, calls {n_calls}, lookup misses "
                   f"{load.lookup_misses}, max latency overall {worst:.0f} ms")
        print("FIGURE " + summary, flush=True)
        self.assertEqual(lost, [], "acknowledged registrations missing from etcd")
        self.assertEqual(replayed, [], "a fresh register answered ALREADY_EXISTS")
        self.assertEqual(stray, [], "records in etcd for IDs no Register was sent for")
        self.assertEqual(mismatched, [], "records whose request_id is not their key's")
        for rid in wrong:
            print(f"wrong state: {rid}: in etcd {in_etcd[rid][0].state}, expected {acked[rid]}, "
                  f"claim failures {[c for c in load.claim_failures if c[0] == rid]}")
        self.assertEqual(wrong, [], "acknowledged records in the wrong state in etcd")
        self.assertTrue(ok_views, "a replica does not list every acknowledged record once")


if __name__ == "__main__":
    unittest.main(verbosity=2)
