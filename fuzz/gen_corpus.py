#!/usr/bin/python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/).

Run once by hand when a format changes (`/usr/bin/python3 fuzz/gen_corpus.py`);
the output is committed. Seeds are small valid inputs plus edge cases at the
limits coordinator/validate.h and worker/wire.c state, so that each fuzzer
starts from inputs that reach deep into the checks. The script only adds or
replaces its own seed-* files: crash-* regression inputs are never touched.

Needs Debian's python3-grpc-tools (protoc for the Python messages).
"""
import base64
import json
import os
import struct
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "corpus")


def load_messages():
    from grpc_tools import protoc
    import grpc_tools
    out = tempfile.mkdtemp(prefix="ferry-fuzz-pb-")
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{os.path.join(SOURCE_DIR, 'proto')}", f"-I{include}",
                      f"--python_out={out}", "ferry/v1/types.proto",
                      "ferry/v1/coordinator.proto"])
    if rc != 0:
        sys.exit(f"gen_corpus: protoc failed with {rc}")
    for pkg in ["ferry", "ferry/v1"]:
        open(os.path.join(out, pkg, "__init__.py"), "a").close()
    sys.path.insert(0, out)
    from ferry.v1 import coordinator_pb2, types_pb2
    return coordinator_pb2, types_pb2


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


TOKEN = "t" * 32
KEY = bytes(range(16))


def metadata(t, kind=None, n=1, device=None, rkey=b"\x01\x02rkey", addr=b"ucx-worker-address"):
    kind = kind if kind is not None else t.OPERATION_KIND_WRITE
    device = device if device is not None else t.DEVICE_KIND_HOST
    md = t.RdmaMetadata(version=1, kind=kind, worker_address=addr, notification_key=KEY,
                        worker_name="worker-0", hostname="host-a",
                        peer_error_handling=t.PEER_ERROR_HANDLING_ON)
    for i in range(n):
        md.descriptors.add(address=0x7f0000001000 + i * 4096, size=4096,
                           device=t.Device(kind=device, id=0), rkey=rkey)
    return md


def mixed_devices(t):
    md = metadata(t, n=2)
    md.descriptors[1].device.kind = t.DEVICE_KIND_CUDA
    return md


def coord_requests(c, t):
    """fuzz_coord_request: byte 0 is the method's index in the service."""
    methods = [m.name for m in c.DESCRIPTOR.services_by_name["Coordinator"].methods]
    seeds = {
        "Register": {
            "valid": c.RegisterRequest(request_id="req-1", metadata=metadata(t),
                                       access_token=TOKEN, ttl_seconds=30, owner="w0"),
            "read-4desc": c.RegisterRequest(request_id="a.b:c_d-9", metadata=metadata(
                t, kind=t.OPERATION_KIND_READ, n=4, device=t.DEVICE_KIND_CUDA)),
            "limits": c.RegisterRequest(request_id="r" * 128, metadata=metadata(
                t, rkey=b"k" * 4096), access_token="~" * 256, ttl_seconds=3600,
                owner="o" * 256, lease_id=(1 << 63) - 1),
            "over-limits": c.RegisterRequest(request_id="r" * 129, access_token="x" * 15,
                                             ttl_seconds=3601, owner="o" * 257, lease_id=-1),
            "mixed-devices": c.RegisterRequest(request_id="req-2", metadata=mixed_devices(t)),
            "no-metadata": c.RegisterRequest(request_id="req-3"),
        },
        "Lookup": {
            "valid": c.LookupRequest(request_id="req-1", access_token=TOKEN, wait_ms=500),
            "bad-id": c.LookupRequest(request_id="req/1", access_token=TOKEN, wait_ms=-1),
        },
        "Claim": {
            "valid": c.ClaimRequest(request_id="req-1", access_token=TOKEN, claimant="w1",
                                    ttl_seconds=10, wait_ms=100, lease_id=7,
                                    peer_error_handling=t.PEER_ERROR_HANDLING_ON),
            "no-token": c.ClaimRequest(request_id="req-1"),
        },
        "Complete": {
            "valid": c.CompleteRequest(request_id="req-1", access_token=TOKEN,
                                       claim_lease_id=7),
            "errored": c.CompleteRequest(request_id="req-1", access_token=TOKEN,
                                         claim_lease_id=7, error_code=-9,
                                         error_message="peer gone"),
        },
        "Cancel": {
            "valid": c.CancelRequest(request_id="req-1", access_token=TOKEN, reason="done"),
        },
        "Release": {
            "valid": c.ReleaseRequest(request_id="req-1", access_token=TOKEN),
        },
        "KeepAlive": {
            "valid": c.KeepAliveRequest(lease_id=7),
            "zero": c.KeepAliveRequest(),
        },
        "Get": {
            "valid": c.GetRequest(request_id="req-1"),
        },
        "List": {
            "valid": c.ListRequest(request_id_prefix="req-", state=t.OPERATION_STATE_CLAIMED,
                                   kind=t.OPERATION_KIND_WRITE, page_size=1000,
                                   page_token="7@req-5"),
            "too-big": c.ListRequest(page_size=1001),
            "forged-token": c.ListRequest(page_token="-7@req-5"),
            "all": c.ListRequest(),
        },
        "Revoke": {
            "valid": c.RevokeRequest(lease_id=7, lease_token="t" * 64),
            "zero": c.RevokeRequest(),
        },
        "Watch": {
            "by-id": c.WatchRequest(request_id="req-1"),
            "all": c.WatchRequest(request_id_prefix="*"),
            "both": c.WatchRequest(request_id="a", request_id_prefix="b"),
        },
    }
    missing = set(methods) - set(seeds)
    if missing:
        sys.exit(f"gen_corpus: no seeds for {sorted(missing)}")
    for name, cases in seeds.items():
        for case, msg in cases.items():
            write("fuzz_coord_request", f"{name.lower()}-{case}",
                  bytes([methods.index(name)]) + msg.SerializeToString())
    write("fuzz_coord_request", "empty", b"")
    # Register's metadata is stored as sent: its field first, with a field
    # the schema does not know (127), is kept as it is; twice is refused.
    reg = bytes([methods.index("Register")])
    rest = c.RegisterRequest(request_id="req-1", access_token=TOKEN).SerializeToString()
    md = metadata(t).SerializeToString() + b"\xf8\x07\x01"
    field = b"\x12" + varint(len(md)) + md
    write("fuzz_coord_request", "register-metadata-first", reg + field + rest)
    write("fuzz_coord_request", "register-metadata-twice", reg + rest + field + field)


def varint(n):
    out = b""
    while n >= 0x80:
        out += bytes([n & 0x7f | 0x80])
        n >>= 7
    return out + bytes([n])


def metadata_seeds(t):
    write("fuzz_metadata", "write", metadata(t).SerializeToString())
    write("fuzz_metadata", "read-cuda-3", metadata(t, kind=t.OPERATION_KIND_READ, n=3,
                                                   device=t.DEVICE_KIND_CUDA).SerializeToString())
    md = metadata(t, n=2)
    md.descriptors[1].size = (1 << 64) - 1
    write("fuzz_metadata", "max-size", md.SerializeToString())
    md = metadata(t)
    md.version = 2
    write("fuzz_metadata", "newer-version", md.SerializeToString())
    md = metadata(t)
    md.notification_key = KEY[:15]
    write("fuzz_metadata", "short-key", md.SerializeToString())
    write("fuzz_metadata", "empty", b"")
    md = metadata(t, n=2, device=t.DEVICE_KIND_CUDA, rkey=b"")
    md.staging.address = 0x7f0000100000
    md.staging.slot_size = 4 << 20
    md.staging.slots = 4
    md.staging.rkey = b"\x01\x02slots"
    write("fuzz_metadata", "staged-cuda-2", md.SerializeToString())
    md.kind = t.OPERATION_KIND_READ
    write("fuzz_metadata", "staged-read-cuda-2", md.SerializeToString())


WIRE_MAGIC = 0x34595246  # "FRY4"
CLAIM_NONCE = bytes(range(100, 116))
RANGE = struct.pack("<QQ", 0x7f0000100000, 1 << 20)


def wire(type_, op_kind=0, key=KEY, op_id=0, status=0, address=b"", address_len=None,
         nonce=bytes(16), claim_nonce=bytes(16), ranges=None):
    """A message as worker/wire.c lays it out; a CLAIM's tail is its ranges
    (one by default), then the address."""
    if ranges is None:
        ranges = [RANGE] if type_ == 1 else []
    tail = b"".join(ranges) + address
    n = len(tail) if address_len is None else address_len
    return struct.pack("<IBBH16sQiI16s16s", WIRE_MAGIC, type_, op_kind, len(ranges), key, op_id,
                       status, n, nonce, claim_nonce) + tail


def wire_seeds():
    # op_kind's 0x40: the claimant says its peer_error_handling; 0x80: on.
    write("fuzz_wire", "claim", wire(1, op_kind=2 | 0xc0, op_id=42, address=b"ucx-address" * 4,
                                     claim_nonce=CLAIM_NONCE))
    write("fuzz_wire", "claim-peer-errors-off", wire(1, op_kind=2 | 0x40, op_id=42,
                                                     address=b"ucx-address" * 4,
                                                     claim_nonce=CLAIM_NONCE))
    write("fuzz_wire", "claim-no-claim-nonce", wire(1, op_kind=2, op_id=42,
                                                    address=b"ucx-address" * 4))
    write("fuzz_wire", "admit-ok", wire(2, op_id=42, nonce=bytes(range(16)),
                                        claim_nonce=CLAIM_NONCE))
    write("fuzz_wire", "admit-refused", wire(2, op_id=42, status=-7, claim_nonce=CLAIM_NONCE))
    write("fuzz_wire", "notice-ok", wire(3, nonce=bytes(range(16))))
    write("fuzz_wire", "notice-error", wire(3, status=-12))
    write("fuzz_wire", "claim-no-address", wire(1, op_kind=3, claim_nonce=CLAIM_NONCE))
    write("fuzz_wire", "claim-staged", wire(1, op_kind=3, op_id=7, address=b"ucx-address",
                                            claim_nonce=CLAIM_NONCE, ranges=[RANGE] * 3))
    write("fuzz_wire", "claim-no-ranges", wire(1, op_kind=2, op_id=7, address=b"ucx-address",
                                               claim_nonce=CLAIM_NONCE, ranges=[]))
    write("fuzz_wire", "claim-most-ranges", wire(1, op_kind=2, op_id=7, address=b"a",
                                                 claim_nonce=CLAIM_NONCE, ranges=[RANGE] * 1025))
    write("fuzz_wire", "fry3", struct.pack("<I", 0x33595246) + wire(3)[4:])
    write("fuzz_wire", "length-mismatch", wire(3, address=b"x", address_len=2))
    chunk = struct.pack("<IIQQ", 3, 1, 4 << 20, 65543)
    write("fuzz_wire", "chunk", wire(4, nonce=bytes(range(16)), address=chunk))
    write("fuzz_wire", "credit", wire(5, op_id=42, address=struct.pack("<IIQQ", 3, 0, 0, 0),
                                      claim_nonce=CLAIM_NONCE))
    write("fuzz_wire", "credit-stop", wire(5, op_id=42, status=-9,
                                           address=struct.pack("<IIQQ", 0, 0, 0, 0),
                                           claim_nonce=CLAIM_NONCE))
    write("fuzz_wire", "chunk-short-record", wire(4, address=chunk[:23]))
    write("fuzz_wire", "bad-type", wire(9))
    write("fuzz_wire", "short", wire(3)[:71])
    write("fuzz_wire", "fry2", struct.pack("<I", 0x32595246) + wire(3)[4:56])


def b64(s):
    return base64.b64encode(s if isinstance(s, bytes) else s.encode()).decode()


def kv(key, value, rev=5, lease=None):
    d = {"key": b64(key), "create_revision": str(rev), "mod_revision": str(rev),
         "version": "1", "value": b64(value)}
    if lease:
        d["lease"] = str(lease)
    return d


def etcd_seeds():
    header = {"cluster_id": "14841639068965178418", "member_id": "10276657743932975437",
              "revision": "7", "raft_term": "2"}
    j = lambda o: json.dumps(o, separators=(",", ":"))
    write("fuzz_etcd_json", "range",
          j({"header": header, "kvs": [kv("/ferry/ops/a", "\x08\x01", lease=7587),
                                       kv("/ferry/ops/b", b"\xff\x00")],
             "count": "2", "more": True}))
    write("fuzz_etcd_json", "range-empty", j({"header": header}))
    write("fuzz_etcd_json", "txn-failed",
          j({"header": header, "responses": [{"response_range": {
              "header": {"revision": "7"}, "kvs": [kv("/ferry/ops/a", "x")], "count": "1"}}]}))
    write("fuzz_etcd_json", "txn-succeeded",
          j({"header": header, "succeeded": True,
             "responses": [{"response_put": {"header": {"revision": "8"}}},
                           {"response_delete_range": {"header": {"revision": "8"},
                                                      "deleted": "1"}}]}))
    write("fuzz_etcd_json", "lease-grant", j({"header": header, "ID": "7587870000000001",
                                              "TTL": "30"}))
    write("fuzz_etcd_json", "keepalive",
          j({"result": {"header": header, "ID": "7587870000000001", "TTL": "30"}}))
    write("fuzz_etcd_json", "keepalive-gone",
          j({"result": {"header": header, "ID": "7587870000000001"}}))
    write("fuzz_etcd_json", "error",
          j({"error": "etcdserver: requested lease not found", "code": 5,
             "message": "etcdserver: requested lease not found"}))
    write("fuzz_etcd_json", "stream-error",
          j({"error": {"grpc_code": 16, "http_code": 401, "message": "invalid auth token",
                       "http_status": "Unauthorized"}}))
    write("fuzz_etcd_json", "int64-limits",
          j({"header": {"revision": "9223372036854775807"}, "count": "-9223372036854775808",
             "ID": 9007199254740993, "TTL": "1e3"}))
    watch = [
        {"result": {"header": header, "created": True}},
        {"result": {"header": header, "events": [
            {"kv": kv("/ferry/ops/a", "\x08\x01", rev=8)},
            {"type": "DELETE", "kv": {"key": b64("/ferry/ops/b"), "mod_revision": "8"},
             "prev_kv": kv("/ferry/ops/b", "old")}]}},
        {"result": {"header": header, "canceled": True, "compact_revision": "3",
                    "cancel_reason": "mvcc: required revision has been compacted"}},
    ]
    write("fuzz_etcd_json", "watch-stream", "\n".join(j(m) for m in watch) + "\n")
    write("fuzz_etcd_json", "watch-bad-event",
          j({"result": {"events": [{"type": "EXPIRE", "kv": {}}, {"kv": {"key": "a"}}]}}))
    write("fuzz_etcd_json", "base64", b64(b"\x00\x01\xfe\xff/ferry/"))
    write("fuzz_etcd_json", "empty", "")


def main():
    c, t = load_messages()
    coord_requests(c, t)
    metadata_seeds(t)
    wire_seeds()
    etcd_seeds()
    for target in sorted(os.listdir(CORPUS)):
        print(f"gen_corpus: {target}: {len(os.listdir(os.path.join(CORPUS, target)))} files")


if __name__ == "__main__":
    main()
