"""bench/ferry_bench_python.py: the Python package's side of the data-path
and small-operation benchmarks, the same measurements as ferry_bench_data
(the C reference) so that bench/python.sh can print ratios from one run.

  --op write|read --size S [--descs D] [--iters N] [--warmup N]
          [--mem user|region|alloc]
      Two processes (this one and a passive child started with --role
      passive); the passive side registers its buffer (D equal descriptors)
      and sends the metadata over a pipe; this side times
      begin_write/begin_read .. wait() returning, one operation at a time,
      registration outside the timed part: as ferry_bench_data --op.
      --mem picks the memory on both sides, as ferry_bench_data's: user
      (mmap'ed, every operation registers its descriptors itself), region
      (the same memory registered once, Connector.register_memory) or alloc
      (Connector.allocate: UCX-allocated, registered once).
  --latency --coord HOST:PORT [--size S] [--iters N] [--warmup N]
      A write through the coordinator by the product path: the receiver
      (child) times create_writable .. publish .. hand-off of the request ID
      and token over a pipe .. wait() returning (the "cycle" phase of
      ferry_bench_data --latency); the sender does begin_write_by_id, wait,
      close.

One JSON object per measurement on stdout, as ferry_bench_data, with
"impl": "python".
"""
import argparse
import json
import mmap
import os
import statistics
import struct
import subprocess
import sys
import time

import numpy as np

import ferry

TOKEN = "bench-access-token-0123456789abcdef"


def split(buf, n):
    part = len(buf) // n
    return [ferry.Descriptor(buf[i * part:(len(buf) if i == n - 1 else (i + 1) * part)])
            for i in range(n)]


def alloc(size, fill):
    """Page-aligned anonymous memory, touched (no page faults in the timed
    part): what ferry_bench_data's bench_alloc gives the C side."""
    buf = np.frombuffer(mmap.mmap(-1, size), np.uint8)
    buf.fill(fill)
    return buf


def memory(conn, args, fill):
    """(descriptors, region or None) for --mem: the buffer this side moves."""
    if args.mem == "alloc":
        region = conn.allocate(args.size)
        view = np.frombuffer(region, np.uint8)
        view.fill(fill)
        del view  # an export would keep the region from closing
        part = args.size // args.descs
        descs = [region.descriptor(i * part, (args.size - i * part) if i == args.descs - 1
                                   else part) for i in range(args.descs)]
        return descs, region
    buf = alloc(args.size, fill)
    region = conn.register_memory(buf) if args.mem == "region" else None
    return split(buf, args.descs), region


def child(args, role):
    cmd = [sys.executable, os.path.abspath(__file__), "--role", role, "--size", str(args.size),
           "--descs", str(args.descs), "--iters", str(args.iters), "--warmup",
           str(args.warmup), "--mem", args.mem]
    if args.op:
        cmd += ["--op", args.op]
    if args.coord:
        cmd += ["--coord", args.coord, "--latency"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, bufsize=0)


def read_exact(f, n):
    data = b""
    while len(data) < n:
        chunk = f.read(n - len(data))
        if not chunk:
            raise RuntimeError("passive side went away")
        data += chunk
    return data


# ---- bandwidth ---------------------------------------------------------------


def passive_data(args):
    write = args.op == "write"
    conn = ferry.Connector("bench-py-passive")
    descs, region = memory(conn, args, 0x22)
    out = sys.stdout.buffer
    for _ in range(args.iters + args.warmup):
        op = conn.create_writable(descs) if write else conn.create_readable(descs)
        md = bytes(op.metadata())
        out.write(struct.pack("<I", len(md)) + md)
        out.flush()
        op.wait(60)
        op.close()
    if region is not None:
        region.close()
    return 0


def active_data(args):
    write = args.op == "write"
    p = child(args, "passive")
    conn = ferry.Connector("bench-py-active")
    descs, region = memory(conn, args, 0x11)
    timed = 0
    for i in range(args.iters + args.warmup):
        (n,) = struct.unpack("<I", read_exact(p.stdout, 4))
        md = read_exact(p.stdout, n)
        t0 = time.perf_counter_ns()
        op = conn.begin_write(descs, md) if write else conn.begin_read(md, descs)
        op.wait(60)
        if i >= args.warmup:
            timed += time.perf_counter_ns() - t0
        op.close()
    if region is not None:
        region.close()
    if p.wait(60) != 0:
        return 1
    secs = timed / 1e9
    print(json.dumps({"bench": "data", "impl": "python", "mem": args.mem, "op": args.op,
                      "size": args.size,
                      "descs": args.descs, "pairs": 1, "iters": args.iters,
                      "gbps": round(args.size * args.iters / secs / 1e9, 3),
                      "us_per_op": round(secs * 1e6 / args.iters, 1)}), flush=True)
    return 0


# ---- small operations through the coordinator -------------------------------


def passive_latency(args):
    conn = ferry.Connector("bench-py-passive")
    coord = ferry.Coordinator(args.coord)
    desc = ferry.Descriptor(alloc(args.size, 0))
    out = sys.stdout.buffer
    cycles = []
    for i in range(args.iters + args.warmup):
        rid = f"pylat-{os.getpid()}-{i}"
        t0 = time.perf_counter_ns()
        op = conn.create_writable(desc)
        token = op.publish(coord, rid, TOKEN)
        out.write(f"{rid} {token}\n".encode())
        out.flush()
        op.wait(60)
        seen = time.perf_counter_ns()
        op.close()
        if i >= args.warmup:
            cycles.append((seen - t0) / 1e3)
    cycles.sort()
    out.write(("RESULT " + json.dumps(cycles) + "\n").encode())
    out.flush()
    coord.close()
    return 0


def active_latency(args):
    p = child(args, "passive")
    conn = ferry.Connector("bench-py-active")
    coord = ferry.Coordinator(args.coord)
    desc = ferry.Descriptor(alloc(args.size, 0x55))
    for _ in range(args.iters + args.warmup):
        rid, token = p.stdout.readline().decode().split()
        op = conn.begin_write_by_id(coord, rid, token, desc)
        op.wait(60)
        op.close()
    line = p.stdout.readline().decode()
    if p.wait(60) != 0 or not line.startswith("RESULT "):
        return 1
    cycles = json.loads(line[len("RESULT "):])
    print(json.dumps({"bench": "latency", "impl": "python",
                      "phase": "cycle (create..receiver wait)", "size": args.size,
                      "n": len(cycles), "progress": "thread",
                      "mean_us": round(statistics.fmean(cycles), 1),
                      "p50_us": round(cycles[len(cycles) // 2], 1),
                      "p99_us": round(cycles[min(len(cycles) - 1, len(cycles) * 99 // 100)], 1)}),
          flush=True)
    coord.close()
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--op", choices=["write", "read"])
    ap.add_argument("--latency", action="store_true")
    ap.add_argument("--coord")
    ap.add_argument("--size", default="4096")
    ap.add_argument("--descs", type=int, default=1)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--role", choices=["active", "passive"], default="active")
    ap.add_argument("--mem", choices=["user", "region", "alloc"], default="user")
    args = ap.parse_args()
    args.size = ferry.parse_size(args.size)
    if args.latency:
        if not args.coord:
            ap.error("--latency needs --coord")
        return passive_latency(args) if args.role == "passive" else active_latency(args)
    if not args.op:
        ap.error("--op or --latency")
    return passive_data(args) if args.role == "passive" else active_data(args)


if __name__ == "__main__":
    sys.exit(main())
