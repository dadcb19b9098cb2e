"""The package against C: Python receivers and C ferry-worker senders, C
receivers and Python senders (and the read mirror), through a real
ferry-coordinator over a real etcd. Every byte is checked: by the Python
side against the pattern, by ferry-worker itself (its exit code says).
Sizes 1 B to 64 MiB, 1 and 16 descriptors, numpy and torch. Then the
coordinator's refusals: wrong token, unknown ID, a taken ID, cancel from
either side."""
import asyncio
import base64
import concurrent.futures
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest
import torch

import ferry

import ferry_harness
from conftest import TOKEN, WORKER, pattern, split

CASES = [(1, 1), (4096, 16), ((1 << 20) + 7, 1), ((1 << 20) + 7, 16), (64 << 20, 1),
         (64 << 20, 16)]
_ids = iter(range(1_000_000))


def rid(prefix):
    return f"{prefix}-{os.getpid()}-{next(_ids)}"


def worker(cluster, cmd, request_id, size, descriptors, token=TOKEN, timeout=60):
    args = [WORKER, cmd, "--coordinator", cluster.target, "--request-id", request_id, "--size",
            str(size), "--descriptors", str(descriptors), "--timeout", str(timeout), "--quiet"]
    if token is not None:
        args += ["--token", token]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_passive(cluster, cmd, request_id, size, descriptors, **kw):
    p = worker(cluster, cmd, request_id, size, descriptors, **kw)
    line = p.stdout.readline()  # the worker says it registered
    if "registered" not in line:
        out, err = p.communicate(timeout=30)
        raise AssertionError(f"{cmd} did not register: {line}{out}{err}")
    return p


def finish(p, timeout=120):
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def buffer(kind, size):
    if kind == "numpy":
        return np.zeros(size, np.uint8)
    return torch.zeros(size, dtype=torch.uint8)


def as_numpy(buf):
    return buf if isinstance(buf, np.ndarray) else buf.numpy()


def descriptors(buf, n):
    return [ferry.Descriptor(part) for part in split(buf, n)]


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("size,n", CASES)
def test_python_receives_from_c_sender(connector, coordinator, cluster, kind, size, n):
    buf = buffer(kind, size)
    request_id = rid("py-recv")
    with connector.create_writable(descriptors(buf, n)) as op:
        assert op.publish(coordinator, request_id, TOKEN) == TOKEN
        sender = worker(cluster, "send", request_id, size, n)
        op.wait(120)
        rc, out, err = finish(sender)
        assert rc == 0, err
    assert np.array_equal(as_numpy(buf), pattern(size))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("size,n", CASES)
def test_c_receiver_from_python_sender(connector, coordinator, cluster, kind, size, n):
    buf = buffer(kind, size)
    as_numpy(buf)[:] = pattern(size)
    request_id = rid("c-recv")
    receiver = start_passive(cluster, "recv", request_id, size, n)
    with connector.begin_write_by_id(coordinator, request_id, TOKEN, descriptors(buf, n),
                                     wait=30) as op:
        op.wait(120)
    rc, out, err = finish(receiver)
    assert rc == 0, err  # ferry-worker checked every byte
    assert f"{size} bytes" in out


@pytest.mark.parametrize("size,n", [(1, 1), ((1 << 20) + 7, 16), (64 << 20, 1)])
def test_python_reads_from_c_server(connector, coordinator, cluster, size, n):
    buf = np.zeros(size, np.uint8)
    request_id = rid("c-serve")
    server = start_passive(cluster, "serve", request_id, size, n)
    with connector.begin_read_by_id(coordinator, request_id, TOKEN, descriptors(buf, n),
                                    wait=30) as op:
        op.wait(120)
    assert finish(server)[0] == 0
    assert np.array_equal(buf, pattern(size))


@pytest.mark.parametrize("size,n", [(1, 1), ((1 << 20) + 7, 16)])
def test_c_reads_from_python_server(connector, coordinator, cluster, size, n):
    t = torch.from_numpy(pattern(size).copy())
    request_id = rid("py-serve")
    with connector.create_readable(descriptors(t, n)) as op:
        token = op.publish(coordinator, request_id)  # libferry draws the token
        assert token and op.access_token == token
        reader = worker(cluster, "read", request_id, size, n, token=token)
        op.wait(120)
        rc, out, err = finish(reader)
        assert rc == 0, err  # ferry-worker checked every byte


def test_wrong_token_then_the_right_one(connector, coordinator):
    dst = bytearray(4096)
    request_id = rid("tok")
    with connector.create_writable(ferry.Descriptor(dst)) as op:
        op.publish(coordinator, request_id, TOKEN)
        with pytest.raises(ferry.PermissionDenied):
            connector.begin_write_by_id(coordinator, request_id, "wrong-token-0123456789",
                                        ferry.Descriptor(b"w" * 4096))
        assert op.status == ferry.OperationStatus.INITIALIZED
        with connector.begin_write_by_id(coordinator, request_id, TOKEN,
                                         ferry.Descriptor(b"r" * 4096)) as a:
            a.wait(30)
        op.wait(30)
    assert bytes(dst) == b"r" * 4096


def test_unknown_id(connector, coordinator):
    with pytest.raises(ferry.NotFound):
        connector.begin_write_by_id(coordinator, rid("nobody"), TOKEN,
                                    ferry.Descriptor(b"x" * 64))
    with pytest.raises(ferry.TimedOut):
        connector.begin_write_by_id(coordinator, rid("nobody"), TOKEN,
                                    ferry.Descriptor(b"x" * 64), wait=0.3)


def publish_and_write(connector, coordinator, request_id):
    """request_id published and written by ID: a wait given up on it left
    nothing behind."""
    dst = bytearray(64)
    with connector.create_writable(ferry.Descriptor(dst)) as op:
        op.publish(coordinator, request_id, TOKEN)
        with connector.begin_write_by_id(coordinator, request_id, TOKEN,
                                         ferry.Descriptor(b"y" * 64), wait=5) as a:
            a.wait(30)
        op.wait(30)
    assert bytes(dst) == b"y" * 64


def test_a_long_wait_by_id_sees_signals(connector, coordinator):
    """begin_write_by_id's wait runs in slices and sees signals between
    them: a handler's exception (here SIGALRM's, as Ctrl-C's
    KeyboardInterrupt) ends a 30 s wait for an ID nobody publishes, long
    before the wait would have run out; it used to wait all of it. The ID
    can then be published and claimed as usual: the interrupted wait left
    nothing behind."""
    class Interrupted(Exception):
        pass

    def handler(signum, frame):
        raise Interrupted()

    request_id = rid("sig")
    wait = 30
    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        start = time.monotonic()
        with pytest.raises(Interrupted):
            connector.begin_write_by_id(coordinator, request_id, TOKEN,
                                        ferry.Descriptor(b"x" * 64), wait=wait)
        assert time.monotonic() - start < wait  # ended by the signal, not the wait
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    publish_and_write(connector, coordinator, request_id)


def standin(handlers):
    """A grpcio server standing in for the coordinator (no real one cancels
    on cue), with bytes handlers for the named methods; (server, target)."""
    import grpc

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "ferry.v1.Coordinator", {name: grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=bytes, response_serializer=bytes)
            for name, fn in handlers.items()}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def test_a_wait_by_id_goes_on_after_a_cancelled_lookup(sender):
    """A wait's Lookup that the server cancels is tried again within the
    wait, as an UNAVAILABLE one is (a Lookup is a read): gRPC's server
    cancels a call that reaches a replica after its shutdown began, so a
    writer's wait by ID ended Cancelled during a rollout, now and then
    (test_a_wait_by_id_outlives_a_coordinator_restart under ASan). A
    grpcio server stands in for the coordinator here, since no real one
    cancels on cue: the first Lookup CANCELLED, the next NOT_FOUND."""
    import grpc

    lookups = []

    def lookup(request, context):
        lookups.append(request)
        if len(lookups) == 1:
            context.abort(grpc.StatusCode.CANCELLED, "server shutting down")
        context.abort(grpc.StatusCode.NOT_FOUND, "no such request ID")

    server, target = standin({"Lookup": lookup})
    try:
        with ferry.Coordinator(target) as coord:
            with pytest.raises(ferry.NotFound):
                sender.begin_write_by_id(coord, rid("cancelled"), TOKEN,
                                         ferry.Descriptor(b"c" * 64), wait=10)
    finally:
        server.stop(None)
    assert len(lookups) == 2


def test_a_publish_goes_on_after_a_cancelled_register(connector):
    """A Register that the server cancels (gRPC's server cancels a call that
    reaches a replica after its shutdown began: audit-s27-soak F1, 2 of
    7,084 publishes during rolling restarts) is sent again within the
    client's timeout, as an UNAVAILABLE one is (a repeat with the same
    token is the first one's, for the coordinator), and is not reported
    as Cancelled, which says the caller cancelled. Here the second try is
    refused ALREADY_EXISTS; before, the first try's CANCELLED was the
    answer."""
    import grpc

    registers = []

    def register(request, context):
        registers.append(request)
        if len(registers) == 1:
            context.abort(grpc.StatusCode.CANCELLED, "server shutting down")
        context.abort(grpc.StatusCode.ALREADY_EXISTS, "request_id is taken")

    server, target = standin({"Register": register})
    try:
        with ferry.Coordinator(target) as coord, \
                connector.create_writable(ferry.Descriptor(bytearray(64))) as op:
            with pytest.raises(ferry.AlreadyExists):
                op.publish(coord, rid("cancelled-register"), TOKEN)
    finally:
        server.stop(None)
    assert len(registers) == 2
    assert registers[0] == registers[1]  # the same request: a repeat


def test_a_claim_the_server_cancels_is_given_up_not_reported_cancelled(sender):
    """A Claim that the server cancels may have been granted (a replica
    shutting down ends the calls its grace did not see through): the writer
    fails Unavailable, not Cancelled (which says its caller cancelled), and
    the claim is given up as one whose answer never came (on its lease;
    this stand-in grants none)."""
    import grpc

    claims = []

    def claim(request, context):
        claims.append(request)
        context.abort(grpc.StatusCode.CANCELLED, "server shutting down")

    server, target = standin({"Claim": claim})
    try:
        with ferry.Coordinator(target) as coord:
            with pytest.raises(ferry.Unavailable, match="cancelled the call"):
                sender.begin_write_by_id(coord, rid("cancelled-claim"), TOKEN,
                                         ferry.Descriptor(b"c" * 64))
    finally:
        server.stop(None)
    assert len(claims) == 1  # a Claim is never sent twice


def write_in_thread(sender, target, request_id, payload, wait):
    """A writer by ID on a thread of its own (its own coordinator client):
    (thread, outcome), outcome {"done": True} or {"error": exception}."""
    outcome = {}

    def write():
        try:
            with ferry.Coordinator(target) as coord:
                with sender.begin_write_by_id(coord, request_id, TOKEN,
                                              ferry.Descriptor(payload), wait=wait) as a:
                    a.wait(30)
            outcome["done"] = True
        except BaseException as e:  # the thread's outcome, asserted by the caller
            outcome["error"] = e

    t = threading.Thread(target=write)
    t.start()
    return t, outcome


def test_a_wait_by_id_outlives_a_coordinator_restart(connector, sender, tmp_path):
    """A coordinator rollout: the replica a writer's wait is parked at
    shuts down (SIGTERM) and answers the wait UNAVAILABLE ("retry on
    another replica"); a new one comes up on the same port, and the receiver
    registers there. The writer's wait goes on through the same client,
    whose channel reconnects, and the write completes. Before, the writer
    gave up at once with Unavailable, 28 s of its 30 s wait left."""
    etcd = ferry_harness.Etcd(str(tmp_path))
    etcd.start()
    replicas = []
    try:
        old = ferry_harness.Coordinator(str(tmp_path), etcd.endpoint, name="old")
        replicas.append(old)
        old.start()
        request_id = rid("rollout")
        t, outcome = write_in_thread(sender, old.target, request_id, b"r" * 64, wait=30)
        ferry_harness.wait_until(lambda: old.log_contains(f"op {request_id}: lookup from"), 20,
                                 "the writer's wait to park")
        assert old.stop() == 0
        new = ferry_harness.Coordinator(str(tmp_path), etcd.endpoint, name="new")
        new.args[new.args.index("--listen") + 1] = old.target
        replicas.append(new)
        new.start()
        assert "error" not in outcome, outcome
        dst = bytearray(64)
        with ferry.Coordinator(new.target) as coord:
            with connector.create_writable(ferry.Descriptor(dst)) as op:
                op.publish(coord, request_id, TOKEN)
                op.wait(30)
        t.join(60)
        assert outcome == {"done": True}, outcome
        assert bytes(dst) == b"r" * 64
    finally:
        for c in replicas:
            c.stop()
        etcd.stop()


def test_connections_past_their_max_age_move_and_lose_nothing(connector, sender, tmp_path):
    """--max-connection-age-ms: a replica sends each connection a GOAWAY
    once it is that old and closes it after --max-connection-age-grace-ms,
    cutting what still runs on it, so that clients reconnect (through a
    load balancer, to replicas added since). Through several such cuts the
    clients lose nothing: a writer's wait by ID is parked again from each
    new connection (a new client port in the replica's log each time) and
    completes once the receiver publishes; a published operation's watch,
    cut with its connection, is opened again, and an operator's cancel
    after the cuts still reaches the owner. (The two clients share one
    connection: gRPC pools them per target in a process.) The grace (3 s)
    is far longer than any unary call here, so only the parked wait and
    the watch are cut (a Claim cut would fail its writer: libferry never
    sends one twice)."""
    etcd = ferry_harness.Etcd(str(tmp_path))
    etcd.start()
    replica = ferry_harness.Coordinator(
        str(tmp_path), etcd.endpoint,
        extra=("--max-connection-age-ms", "1000", "--max-connection-age-grace-ms", "3000"))
    try:
        replica.start()
        # A grace under libferry's call timeout can cut a Claim: said at start.
        assert replica.log_contains("below libferry's call timeout")
        written, watched = rid("aged-w"), rid("aged-c")

        def peers(pattern):
            with open(replica.log_path, errors="replace") as f:
                return set(re.findall(pattern, f.read()))

        def cut_and_resumed():
            # Three connections each: the writer's wait and the receiver's
            # watch (nothing else watches before the cancel) were each cut
            # twice and came back.
            return (len(peers(rf"op {written}: (?:lookup|claim) from (\S+) waits")) >= 3
                    and len(peers(r"/ferry.v1.Coordinator/Watch: from (\S+)")) >= 3)

        with ferry.Coordinator(replica.target) as coord, \
                connector.create_writable(ferry.Descriptor(bytearray(64))) as op:
            op.publish(coord, watched, TOKEN)
            t, outcome = write_in_thread(sender, replica.target, written, b"a" * 64, wait=60)
            ferry_harness.wait_until(cut_and_resumed, 60,
                                     "the writer's wait and the receiver's watch to come back "
                                     "on three connections each")
            assert "error" not in outcome, outcome
            cancel = subprocess.run(
                [os.path.join(os.path.dirname(WORKER), "..", "tools", "ferryctl"), "cancel",
                 watched, "--coordinator", replica.target, "--token", TOKEN, "--reason",
                 "aged out"], capture_output=True, text=True, timeout=30)
            assert cancel.returncode == 0, cancel.stderr
            with pytest.raises(ferry.Cancelled, match="cancelled at the coordinator: aged out"):
                op.wait(20)
            dst = bytearray(64)
            with connector.create_writable(ferry.Descriptor(dst)) as target:
                target.publish(coord, written, TOKEN)
                target.wait(30)
        t.join(60)
        assert outcome == {"done": True}, outcome
        assert bytes(dst) == b"a" * 64
    finally:
        replica.stop()
        etcd.stop()


def test_size_mismatch_by_id_names_both_sizes(connector, coordinator):
    request_id = rid("size")
    with connector.create_writable(ferry.Descriptor(bytearray(4096))) as op:
        op.publish(coordinator, request_id, TOKEN)
        with pytest.raises(ferry.SizeMismatch) as e:
            connector.begin_write_by_id(coordinator, request_id, TOKEN,
                                        ferry.Descriptor(bytearray(8192)))
        assert "4096" in e.value.message and "8192" in e.value.message


def test_request_id_taken(connector, coordinator):
    request_id = rid("taken")
    with connector.create_writable(ferry.Descriptor(bytearray(64))) as a:
        a.publish(coordinator, request_id, TOKEN)
        with connector.create_writable(ferry.Descriptor(bytearray(64))) as b:
            with pytest.raises(ferry.AlreadyExists):
                b.publish(coordinator, request_id, TOKEN)


def test_failed_publish_leaves_the_operation_unbound(connector, coordinator, cluster):
    """A publish refused (AlreadyExists) binds nothing: the coordinator it
    went to closes at once, and the operation publishes elsewhere."""
    request_id = rid("taken-unbound")
    other = ferry.Coordinator(cluster.target)
    with connector.create_writable(ferry.Descriptor(bytearray(64))) as a:
        a.publish(coordinator, request_id, TOKEN)
        with connector.create_writable(ferry.Descriptor(bytearray(64))) as b:
            with pytest.raises(ferry.AlreadyExists):
                b.publish(other, request_id, TOKEN)
            other.close()  # Busy before the fix: b stayed bound to it
            assert b.publish(coordinator, rid("taken-elsewhere"), TOKEN) == TOKEN


def test_connector_close_refused_during_begin_by_id(connector, coordinator):
    """begin_write_by_id waits (GIL released) for the ID to be published:
    meanwhile close() from another thread raises Busy instead of destroying
    the connector under the call; once it returned, close() succeeds."""
    c = ferry.Connector("close-during-claim")
    request_id = rid("claim-wait")
    result = {}

    def claim():
        try:
            with c.begin_write_by_id(coordinator, request_id, TOKEN,
                                     ferry.Descriptor(b"t" * 4096), wait=20) as a:
                a.wait(30)
            result["ok"] = True
        except BaseException as e:  # reported by the main thread
            result["error"] = e

    t = threading.Thread(target=claim)
    t.start()
    try:
        deadline = time.monotonic() + 5
        while c._live_ops == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(ferry.Busy, match="operation"):
            c.close()
        assert not c.closed
    finally:
        dst = bytearray(4096)
        with connector.create_writable(ferry.Descriptor(dst)) as w:
            w.publish(coordinator, request_id, TOKEN)
            t.join(60)
            w.wait(30)
    assert not t.is_alive() and result == {"ok": True}
    assert bytes(dst) == b"t" * 4096
    c.close()
    assert c.closed


def test_receiver_cancel_refuses_the_writer(connector, coordinator, cluster):
    """The receiver cancels; the C writer is refused (by the coordinator or,
    if it looked the ID up before the cancel reached the coordinator, by the
    receiver's data plane) and no byte lands."""
    request_id = rid("cancel-p")
    dst = bytearray(4096)
    op = connector.create_writable(ferry.Descriptor(dst))
    op.publish(coordinator, request_id, TOKEN)
    op.cancel()
    with pytest.raises(ferry.Cancelled):
        op.wait(5)
    rc, out, err = finish(worker(cluster, "send", request_id, 4096, 1, timeout=5))
    assert rc != 0, err
    assert bytes(dst) == bytes(4096)
    op.close()


def test_writer_cancel_reaches_the_c_receiver(connector, coordinator, cluster):
    """The sender cancels mid-transfer (the receiver is frozen, so the
    transfer cannot end); the C receiver learns it from the coordinator."""
    request_id = rid("cancel-a")
    receiver = start_passive(cluster, "recv", request_id, 4096, 1, timeout=60)
    ferry_harness.freeze(receiver)
    try:
        op = connector.begin_write_by_id(coordinator, request_id, TOKEN,
                                         ferry.Descriptor(b"q" * 4096))
        with pytest.raises(ferry.TimedOut):
            op.wait(0.2)
        op.cancel()
        with pytest.raises(ferry.Cancelled):
            op.wait(10)
        op.close()
    finally:
        receiver.send_signal(signal.SIGCONT)
    rc, out, err = finish(receiver)
    # The receiver learns it from the coordinator (CANCELLED) or, first,
    # from the writer's data plane (ERRORED, PEER_FAILED, "cancelled by its
    # owner"): either way it ends and names the cancel.
    assert rc != 0 and "cancel" in err.lower(), (rc, err)


def test_async_by_id_forms(connector, coordinator):
    import asyncio

    async def main():
        dst = np.zeros(1 << 20, np.uint8)
        request_id = rid("async")
        with connector.create_writable(ferry.Descriptor(dst)) as w:
            token = await w.publish_async(coordinator, request_id)
            with await connector.begin_write_by_id_async(
                    coordinator, request_id, token, ferry.Descriptor(pattern(1 << 20)),
                    wait=5) as a:
                await asyncio.gather(a.wait_for_completion(10), w.wait_for_completion(10))
        assert np.array_equal(dst, pattern(1 << 20))

    asyncio.run(main())


def test_cancelled_async_by_id_frees_its_thread(connector, coordinator):
    """Cancelling a begin_write_by_id_async task ends the wait under way on
    the executor's thread (a 120 s wait for an ID nobody publishes): the
    thread is free again well before the wait would have run out, so
    asyncio.run() returns; it used to hold the thread, and the loop's exit,
    for the whole wait. The ID can then be published and claimed."""
    import asyncio
    import concurrent.futures

    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    request_id = rid("async-cancel")

    async def main():
        asyncio.get_running_loop().set_default_executor(executor)
        before = connector._live_ops
        task = asyncio.ensure_future(connector.begin_write_by_id_async(
            coordinator, request_id, TOKEN, ferry.Descriptor(b"x" * 64), wait=120))
        deadline = time.monotonic() + 10
        while connector._live_ops == before:  # until the call is under way on the executor
            assert time.monotonic() < deadline, "the begin never got under way"
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    done = threading.Thread(target=lambda: asyncio.run(main()))
    done.start()
    done.join(60)  # the wait is 120 s: ended by the cancel, not by the wait
    assert not done.is_alive(), "asyncio.run still waits for the executor's thread"
    publish_and_write(connector, coordinator, request_id)


def test_coordinator_close_waits_for_its_operations(cluster):
    coord = ferry.Coordinator(cluster.target, timeout=5)
    c = ferry.Connector("coord-close")
    op = c.create_writable(ferry.Descriptor(bytearray(64)))
    op.publish(coord, rid("close"), TOKEN)
    with pytest.raises(ferry.Busy):
        coord.close()
    op.close()
    coord.close()
    c.close()


def test_with_block_of_a_coordinator_does_not_hide_an_exception(cluster):
    """As the connector's: an exception raised in the with block while an
    operation is bound propagates, not Busy; the coordinator stays open
    until the operation is closed."""
    c = ferry.Connector("coord-with")
    with pytest.raises(ValueError, match="inner"):
        with ferry.Coordinator(cluster.target, timeout=5) as coord:
            op = c.create_writable(ferry.Descriptor(bytearray(64)))
            op.publish(coord, rid("with"), TOKEN)
            raise ValueError("inner")
    assert not coord.closed
    with pytest.raises(ferry.Busy):
        with coord:
            pass
    op.close()
    coord.close()
    c.close()


def test_unreachable_coordinator(connector):
    port = ferry_harness.free_port()
    coord = ferry.Coordinator(f"127.0.0.1:{port}", timeout=0.5)
    with connector.create_writable(ferry.Descriptor(bytearray(64))) as op:
        with pytest.raises((ferry.Unavailable, ferry.TimedOut)):
            op.publish(coord, rid("down"), TOKEN)


def test_missing_tls_file_is_named(tmp_path):
    """A TLS file that cannot be opened (a Secret not mounted yet, a typo)
    is named in the exception, with its field and the system's reason.
    Before, the exception said only "cannot open a channel to coordinator
    127.0.0.1:7400", and the cause went to a log that is off by default."""
    missing = str(tmp_path / "nonexistent" / "ca.pem")
    with pytest.raises(ferry.InvalidArgument) as e:
        ferry.Coordinator("127.0.0.1:7400", tls=ferry.TlsConfig(ca_file=missing))
    assert "tls_ca_file" in e.value.message
    assert missing in e.value.message and "No such file or directory" in e.value.message


def test_tls_coordinator(connector, sender):
    """Coordinator(target, tls=...) against a coordinator that requires TLS
    client certificates; without TLS the same coordinator is unreachable."""
    tmp = ferry_harness.tempfile.mkdtemp(prefix="ferry-pkg-tls-")
    certs = ferry_harness.make_certs(tmp)
    etcd = ferry_harness.Etcd(tmp)
    etcd.start()
    coord = ferry_harness.Coordinator(tmp, etcd.endpoint, name="tls", extra=(
        "--tls-cert", os.path.join(certs, "server.pem"), "--tls-key",
        os.path.join(certs, "server.key"), "--tls-ca", os.path.join(certs, "ca.pem")))
    coord.start()
    try:
        tls = ferry.TlsConfig(ca_file=os.path.join(certs, "ca.pem"),
                              cert_file=os.path.join(certs, "client.pem"),
                              key_file=os.path.join(certs, "client.key"),
                              server_name="ferry.test")
        with ferry.Coordinator(coord.target, tls=tls, timeout=5) as rx_coord, \
                ferry.Coordinator(coord.target, tls=tls.__dict__, timeout=5) as tx_coord:
            dst = bytearray(4096)
            request_id = rid("tls")
            with connector.create_writable(ferry.Descriptor(dst)) as op:
                token = op.publish(rx_coord, request_id)
                with sender.begin_write_by_id(tx_coord, request_id, token,
                                              ferry.Descriptor(b"s" * 4096), wait=5) as a:
                    a.wait(30)
                op.wait(30)
            assert bytes(dst) == b"s" * 4096
        plain = ferry.Coordinator(coord.target, timeout=0.5)
        with connector.create_writable(ferry.Descriptor(bytearray(64))) as op:
            with pytest.raises((ferry.Unavailable, ferry.TimedOut)):
                op.publish(plain, rid("tls-plain"), TOKEN)
    finally:
        assert coord.stop() == 0
        etcd.stop()
        ferry_harness.shutil.rmtree(tmp, ignore_errors=True)


def _varint(b, i):
    value = shift = 0
    while True:
        c = b[i]
        i += 1
        value |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return value, i


def _field_once(b, number):
    """The bytes of length-delimited field `number` of the encoded message b,
    which must occur exactly once."""
    i, found = 0, []
    while i < len(b):
        tag, i = _varint(b, i)
        wire = tag & 7
        if wire == 0:
            _, i = _varint(b, i)
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            assert wire == 2, f"wire type {wire}"
            n, i = _varint(b, i)
            if tag >> 3 == number:
                found.append(b[i:i + n])
            i += n
    assert len(found) == 1, f"field {number} occurs {len(found)} times"
    return found[0]


def _etcd_value(cluster, key):
    body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
    req = urllib.request.Request(cluster.etcd.endpoint + "/v3/kv/range", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        kvs = json.load(r).get("kvs", [])
    assert len(kvs) == 1, f"{key}: {len(kvs)} keys"
    return base64.b64decode(kvs[0]["value"])


def test_metadata_is_stored_as_the_receiver_packed_it(connector, coordinator, cluster):
    """Metadata stays bytes: the record in etcd (read directly) carries the
    very bytes libferry packed for the operation, and a C sender that looks
    them up writes every byte."""
    buf = np.zeros(4096, np.uint8)
    request_id = rid("py-bytes")
    with connector.create_writable(descriptors(buf, 2)) as op:
        op.publish(coordinator, request_id, TOKEN)
        stored = _etcd_value(cluster, "/ferry/ops/" + request_id)
        assert _field_once(stored, 4) == bytes(op.metadata())
        sender = worker(cluster, "send", request_id, 4096, 2)
        op.wait(120)
        rc, out, err = finish(sender)
        assert rc == 0, err
    assert np.array_equal(buf, pattern(4096))


def wait_until(condition, what, timeout=10):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


class GatedProxy:
    """A TCP proxy to `target` that holds every connection, unanswered,
    until open(): a coordinator call made through it stays in flight for
    as long as the test needs it to (no timing involved), then goes
    through to the real coordinator."""

    def __init__(self, target):
        host, port = target.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.target = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._gate = threading.Event()
        self._closed = False
        self._sockets = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        self._gate.wait()
        if self._closed:
            return
        upstream = socket.create_connection(self._upstream)
        self._sockets.append(upstream)
        threading.Thread(target=ferry_harness.pump, args=(upstream, client), daemon=True).start()
        ferry_harness.pump(client, upstream)

    def open(self):
        self._gate.set()

    def close(self):
        self._closed = True
        self._gate.set()
        self._listener.close()
        for s in self._sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def assert_unclaimable(sender, coordinator, request_id, dst):
    """A claim of request_id is refused by the coordinator or, if it came
    before the cancel reached the coordinator, its write fails: no byte of
    dst (zeros) changes."""
    try:
        a = sender.begin_write_by_id(coordinator, request_id, TOKEN,
                                     ferry.Descriptor(b"x" * len(dst)))
    except (ferry.NotFound, ferry.FailedPrecondition, ferry.Cancelled):
        pass
    else:
        with a, pytest.raises(ferry.FerryError):
            a.wait(30)
    assert bytes(dst) == bytes(len(dst))


def publish_in_thread(w, coord, request_id):
    """Starts w.publish(coord, request_id, TOKEN) on a thread; returns the
    thread and the dict its token ("token") or exception ("error") lands
    in."""
    result = {}

    def publish():
        try:
            result["token"] = w.publish(coord, request_id, TOKEN)
        except BaseException as e:  # reported by the main thread
            result["error"] = e

    t = threading.Thread(target=publish)
    t.start()
    return t, result


def test_close_during_a_publish_is_finished_by_the_publish(connector, sender, coordinator,
                                                           cluster):
    """close() while another thread's publish is in flight (held at a
    gated proxy) returns at once and the operation reads as closed; it used
    to raise Busy, and the publish then completed, leaving a published
    operation that a writer could write into. The publishing thread
    releases the operation when its call returns (the registration it made
    is cancelled) and raises Cancelled; a claim of the ID lands nothing."""
    proxy = GatedProxy(cluster.target)
    coord = ferry.Coordinator(proxy.target)
    request_id = rid("close-publish")
    dst = bytearray(4096)
    w = connector.create_writable(ferry.Descriptor(dst))
    t, result = publish_in_thread(w, coord, request_id)
    try:
        wait_until(lambda: w._busy == 1, "the publish never got in flight")
        w.close()
        assert w.closed and w.access_token is None
        with pytest.raises(ferry.Misuse, match="closed"):
            w.metadata()
        with pytest.raises(ferry.Misuse, match="closed"):
            w.publish(coord, rid("again"), TOKEN)
        w.close()  # idempotent
    finally:
        proxy.open()
        t.join(30)
    assert not t.is_alive()
    assert isinstance(result.get("error"), ferry.Cancelled), result
    assert "closed while its publish was in flight" in str(result["error"])
    assert w.closed and w._busy == 0
    assert w.status in (ferry.OperationStatus.CANCELLED, ferry.OperationStatus.ERRORED)
    assert_unclaimable(sender, coordinator, request_id, dst)
    coord.close()  # nothing stays bound to it
    proxy.close()


@pytest.mark.parametrize("how", ["wait_for", "cancel"])
def test_publish_async_given_up_in_a_with_block_closes_the_operation(connector, sender,
                                                                      coordinator, cluster, how):
    """asyncio.wait_for timing out (or the task cancelled) while
    publish_async is in flight inside the operation's with block: the
    TimeoutError (CancelledError) leaves the block, where Busy from
    __exit__'s close() used to replace it and leave the operation open, to
    be published and written into. The operation ends closed, and once the
    executor's publish returned, nothing is left to claim."""
    proxy = GatedProxy(cluster.target)
    coord = ferry.Coordinator(proxy.target)
    request_id = rid("async-given-up")
    dst = bytearray(4096)
    ops = []

    async def until_in_flight(w):
        deadline = time.monotonic() + 10
        while w._busy != 1:
            assert time.monotonic() < deadline, "the publish never got in flight"
            await asyncio.sleep(0.001)

    async def main():
        expected = asyncio.TimeoutError if how == "wait_for" else asyncio.CancelledError
        try:
            with pytest.raises(expected):
                with connector.create_writable(ferry.Descriptor(dst)) as w:
                    ops.append(w)
                    task = asyncio.ensure_future(w.publish_async(coord, request_id, TOKEN))
                    await until_in_flight(w)
                    if how == "wait_for":
                        # The publish cannot end while the proxy holds it:
                        # this bound only decides when to give up.
                        await asyncio.wait_for(task, 0.05)
                    else:
                        task.cancel()
                        await task
            assert w.closed
        finally:
            proxy.open()  # asyncio.run waits for the executor's publish

    asyncio.run(main())
    assert ops[0].closed and ops[0]._busy == 0
    assert_unclaimable(sender, coordinator, request_id, dst)
    coord.close()
    proxy.close()


def test_a_second_publish_while_one_is_in_flight_is_refused(connector, cluster):
    """Two publishes of one operation at once used to both succeed (one
    operation under two request IDs, with one token). While one is in
    flight (held at a gated proxy) another is refused at once, Misuse,
    before it reaches the coordinator; the first then completes."""
    proxy = GatedProxy(cluster.target)
    coord = ferry.Coordinator(proxy.target)
    w = connector.create_writable(ferry.Descriptor(bytearray(64)))
    t, result = publish_in_thread(w, coord, rid("first"))
    try:
        wait_until(lambda: w._busy == 1, "the publish never got in flight")
        with pytest.raises(ferry.Misuse, match="a publish is already in flight"):
            w.publish(coord, rid("second"), TOKEN)
        assert w._busy == 1
    finally:
        proxy.open()
        t.join(30)
    assert not t.is_alive() and result == {"token": TOKEN}
    w.close()
    coord.close()
    proxy.close()


@contextlib.contextmanager
def interrupted_when(condition, what):
    """The block must end in KeyboardInterrupt: a thread sends SIGINT (as
    Ctrl-C) to this, the main, thread once condition() holds (the call is
    in flight), then waits up to 30 s for the block to end. A call that
    only its timeout ended fails the test on that deadline (not passes it
    slowly)."""
    main = threading.get_ident()
    ended = threading.Event()
    state = {}

    def run():
        deadline = time.monotonic() + 30
        while not condition():
            if time.monotonic() > deadline:
                return
            time.sleep(0.001)
        state["sent"] = True
        signal.pthread_kill(main, signal.SIGINT)
        state["ended"] = ended.wait(30)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    with pytest.raises(KeyboardInterrupt):
        try:
            yield
        finally:
            ended.set()
    t.join()
    assert state.get("sent"), what
    assert state.get("ended"), "the call went on for 30 s after Ctrl-C"


def test_ctrl_c_ends_calls_a_frozen_coordinator_does_not_answer():
    """Ctrl-C while publish(), begin_write_by_id(wait=...) or
    Coordinator.close() waits on a coordinator that does not answer (its
    process stopped) raises KeyboardInterrupt at once: libferry calls the
    binding's interrupt check every 100 ms, which runs the signal handlers.
    Each used to wait for the client's timeout (120 s here). After each the
    state is sane: the operation is unpublished and closes, the connector
    holds nothing of the claim, the coordinator is closed."""
    cluster = ferry_harness.Cluster()
    c = ferry.Connector("ctrl-c")
    try:
        coord = ferry.Coordinator(cluster.coordinator.target, timeout=120)
        session = c.create_writable(ferry.Descriptor(bytearray(64)))
        session.publish(coord, rid("ctrl-c-session"), TOKEN)
        ferry_harness.freeze(cluster.coordinator.proc)

        w = c.create_writable(ferry.Descriptor(bytearray(64)))
        with interrupted_when(lambda: w._busy == 1, "the publish never got in flight"):
            w.publish(coord, rid("ctrl-c-publish"))
        assert w.access_token is None and w._busy == 0
        w.close()

        with interrupted_when(lambda: c._live_ops == 2, "the claim never got in flight"):
            c.begin_write_by_id(coord, rid("ctrl-c-claim"), TOKEN,
                                ferry.Descriptor(b"x" * 64), wait=120)
        assert c._live_ops == 1  # the session operation only

        session.close()  # its release cannot go: close() waits for it
        with interrupted_when(lambda: coord._closing, "close() never got in flight"):
            coord.close()
        assert coord.closed
    finally:
        cluster.coordinator.proc.send_signal(signal.SIGCONT)
        c.close()
        cluster.close()
