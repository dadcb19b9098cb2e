#!/usr/bin/python3
"""test_rpc_python: Python's grpcio (Debian's, /usr/bin/python3) against
ferry-rpc-testserver: grpc.health.v1.Health/Check, plus the errors the rpc
layer answers itself. Messages are encoded by hand (no generated stubs).

Usage: test_rpc_python.py PATH/TO/ferry-rpc-testserver
Exit 0: pass; 77: grpcio is not installed (skipped); anything else: fail.
"""
import subprocess
import sys

try:
    import grpc
except ImportError:
    print("skip: /usr/bin/python3 has no grpc module")
    sys.exit(77)

CHECK = "/grpc.health.v1.Health/Check"
SERVING, NOT_SERVING = 1, 2


def encode_check_request(service):
    """HealthCheckRequest{service}: field 1, length-delimited."""
    data = service.encode()
    if not data:
        return b""
    assert len(data) < 128
    return b"\x0a" + bytes([len(data)]) + data


def decode_check_response(data):
    """HealthCheckResponse{status}: field 1, varint; absent means 0."""
    if not data:
        return 0
    assert data[0] == 0x08, data
    return data[1]


def check(channel, service):
    call = channel.unary_unary(CHECK, request_serializer=encode_check_request,
                               response_deserializer=decode_check_response)
    return call(service, timeout=10)


def expect_error(fn, code, text=None):
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() == code, (e.code(), e.details())
        if text is not None:
            assert text in e.details(), e.details()
        return
    raise AssertionError("expected %s" % code)


def command(server, line):
    server.stdin.write(line + "\n")
    server.stdin.flush()
    assert server.stdout.readline().strip() == "ok"


def run(server, port):
    with grpc.insecure_channel("127.0.0.1:%d" % port) as channel:
        assert check(channel, "") == SERVING
        assert check(channel, "ferry.v1.Coordinator") == SERVING
        expect_error(lambda: check(channel, "no.such.Service"), grpc.StatusCode.NOT_FOUND)
        command(server, "not-serving ferry.v1.Coordinator")
        assert check(channel, "ferry.v1.Coordinator") == NOT_SERVING
        assert check(channel, "") == SERVING

        raw = lambda path, data: channel.unary_unary(path)(data, timeout=10)
        expect_error(lambda: raw("/ferry.v1.Coordinator/Get", b"\xff\xff\xff"),
                     grpc.StatusCode.INVALID_ARGUMENT,
                     "malformed request for /ferry.v1.Coordinator/Get")
        # A call that ends without any request message (a client-streaming
        # call from an empty iterator): refused, named, not "malformed".
        empty = lambda path: channel.stream_unary(path)(iter(()), timeout=10)
        expect_error(lambda: empty("/ferry.v1.Coordinator/Get"), grpc.StatusCode.INVALID_ARGUMENT,
                     "no request message for /ferry.v1.Coordinator/Get")
        expect_error(lambda: raw("/ferry.v1.Coordinator/Nope", b""),
                     grpc.StatusCode.UNIMPLEMENTED)
        # GetRequest{request_id: "py"} comes back in GetResponse.operation.
        reply = raw("/ferry.v1.Coordinator/Get", b"\x0a\x02py")
        assert b"py" in reply and b"echo" in reply, reply


def main():
    server = subprocess.Popen([sys.argv[1]], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        port = int(server.stdout.readline())
        run(server, port)
        server.stdin.close()
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    print("test_rpc_python: ok")


if __name__ == "__main__":
    main()
