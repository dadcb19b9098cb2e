#!/usr/bin/env python3
"""etcd history per Ferry operation, and what it means for etcd's quota.

Runs N 4 KiB operation cycles (publish, write by ID, both waits, close: a
Register, a Claim, a Complete and the record's delete) through the Python
package, a real ferry-coordinator and a real etcd that never compacts, and
prints etcd's database growth per cycle beside the bytes of one record as
stored (the reference: the ratio is how many times a cycle writes its
record), then how many cycles a second a quota holds at a compaction
retention: etcd's periodic compaction keeps between one and two retentions
of history, so quota / (2 x retention x bytes per cycle).

    /usr/bin/python3 bench/etcd_history.py BUILD_DIR [--ops N] [--descriptors D]
        [--quota-gib G] [--retention-s S ...]
"""
import argparse
import base64
import json
import os
import sys
import time
import urllib.request

SOURCE_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TOKEN = "history-token-0123456789"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build_dir")
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--descriptors", type=int, default=1)
    ap.add_argument("--quota-gib", type=float, default=1.0)
    ap.add_argument("--retention-s", type=int, nargs="+", default=[300, 3600])
    a = ap.parse_args()
    build = os.path.abspath(a.build_dir)
    os.environ.setdefault("FERRY_BUILD_DIR", build)
    sys.path.insert(0, os.path.join(build, "python"))
    sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "python"))
    import ferry
    import ferry_harness

    cluster = ferry_harness.Cluster(ttl=30)

    def post(path, body):
        req = urllib.request.Request(cluster.etcd.endpoint + path, data=json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def status():
        s = post("/v3/maintenance/status", {})
        return int(s["dbSize"]), int(s["header"]["revision"])

    try:
        coord = ferry.Coordinator(cluster.coordinator.target)
        rx, tx = ferry.Connector("history-rx"), ferry.Connector("history-tx")
        part = 4096 // a.descriptors
        src = [ferry.Descriptor(b"y" * part) for _ in range(a.descriptors)]
        record = [0]

        def cycle(request_id, measure=False):
            dst = [bytearray(part) for _ in range(a.descriptors)]
            with rx.create_writable([ferry.Descriptor(d) for d in dst]) as op:
                op.publish(coord, request_id, TOKEN)
                if measure:
                    key = base64.b64encode(b"/ferry/ops/" + request_id.encode()).decode()
                    kvs = post("/v3/kv/range", {"key": key}).get("kvs", [])
                    record[0] = len(base64.b64decode(kvs[0].get("value", ""))) if kvs else 0
                with tx.begin_write_by_id(coord, request_id, TOKEN, src, wait=5) as w:
                    w.wait(30)
                op.wait(30)
            if any(bytes(d) != b"y" * part for d in dst):
                raise SystemExit("the bytes did not arrive")

        cycle("history-warm-0", measure=True)
        for i in range(1, 50):  # etcd's first pages, the endpoints and keys cached
            cycle(f"history-warm-{i}")
        size0, rev0 = status()
        t0 = time.monotonic()
        for i in range(a.ops):
            cycle(f"history-{i}")
        elapsed = time.monotonic() - t0
        size1, rev1 = status()
    finally:
        cluster.close()

    per_op = (size1 - size0) / a.ops
    quota = a.quota_gib * 2**30
    print(f"{a.ops} cycles of 4 KiB in {a.descriptors} descriptor(s), {a.ops / elapsed:.0f}/s "
          f"from one client; {(rev1 - rev0) / a.ops:.2f} etcd revisions per cycle")
    print(f"etcd history per cycle: {per_op:.0f} B; one record as registered: {record[0]} B "
          f"(ratio {per_op / max(record[0], 1):.2f})")
    for r in a.retention_s:
        print(f"  retention {r} s: a {a.quota_gib:g} GiB quota holds about "
              f"{quota / (2 * r * per_op):.0f} cycles/s sustained (history alone)")


if __name__ == "__main__":
    main()
