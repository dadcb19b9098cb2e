#!/usr/bin/env python3
"""bench/report.py: turns the benchmark results (JSON lines written by
bench/control.sh, bench/data.sh and bench/latency.sh) into tables.

    python3 bench/report.py bench/results/*.jsonl            # Markdown (README)
    python3 bench/report.py --plain bench/results/x.jsonl    # plain text

Each input line is one JSON object with a "bench" field: "machine",
"control", "data", "memcpy" or "latency". Later lines win over earlier ones
for the same measurement. Standard library only.
"""
import argparse
import json
import sys


def load(paths):
    rows = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    rows.append(json.loads(line))
    return rows


def fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


def size_name(n):
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


class Table:
    def __init__(self, title, header):
        self.title, self.header, self.rows = title, header, []

    def add(self, *cells):
        self.rows.append([fmt(c) if not isinstance(c, str) else c for c in cells])

    def render(self, plain):
        if not self.rows:
            return ""
        out = []
        if plain:
            widths = [max(len(str(r[i])) for r in [self.header] + self.rows)
                      for i in range(len(self.header))]
            out.append(self.title)
            for r in [self.header] + self.rows:
                out.append("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))
        else:
            out.append(f"**{self.title}**\n")
            out.append("| " + " | ".join(self.header) + " |")
            out.append("|" + "|".join("---:" for _ in self.header) + "|")
            for r in self.rows:
                out.append("| " + " | ".join(str(c) for c in r) + " |")
        return "\n".join(out) + "\n"


def control_tables(rows):
    ctl = {}
    for r in rows:
        if r.get("bench") == "control":
            key = (r["mode"], r["clients"], r["coordinators"], r.get("channels", "thread"))
            ctl[key] = r
    clients = sorted({k[1] for k in ctl})
    replicas = sorted({k[2] for k in ctl if k[2] > 0})

    def get(mode, n, coords, channels="thread"):
        return ctl.get((mode, n, coords, channels))

    def val(r, f):
        return None if r is None else r[f]

    look = Table("Control path: Lookup vs reading the same record from etcd's gateway",
                 ["clients", "replicas", "Lookup/s", "p50 us", "p99 us",
                  "etcd get/s", "p50 us", "p99 us", "Lookup/etcd",
                  "Lookup/s (1 channel)", "p99 us (1 channel)"])
    reg = Table("Control path: Register vs direct etcd writes",
                ["clients", "replicas", "Register/s", "p50 us", "p99 us",
                 "etcd txn/s", "p50 us", "lease+txn/s", "p50 us", "Register/txn",
                 "Register/(lease+txn)"])
    for coords in replicas:
        for n in clients:
            lk, eg, sh = get("lookup", n, coords), get("etcd-get", n, 0), \
                get("lookup", n, coords, "shared")
            if lk is not None:
                look.add(str(n), str(coords), val(lk, "ops_per_s"), val(lk, "p50_us"),
                         val(lk, "p99_us"), val(eg, "ops_per_s"), val(eg, "p50_us"),
                         val(eg, "p99_us"), ratio(val(lk, "ops_per_s"), val(eg, "ops_per_s")),
                         val(sh, "ops_per_s"), val(sh, "p99_us"))
            rg, tx, lt = get("register", n, coords), get("etcd-txn", n, 0), \
                get("etcd-lease-txn", n, 0)
            if rg is not None:
                reg.add(str(n), str(coords), val(rg, "ops_per_s"), val(rg, "p50_us"),
                        val(rg, "p99_us"), val(tx, "ops_per_s"), val(tx, "p50_us"),
                        val(lt, "ops_per_s"), val(lt, "p50_us"),
                        ratio(val(rg, "ops_per_s"), val(tx, "ops_per_s")),
                        ratio(val(rg, "ops_per_s"), val(lt, "ops_per_s")))
    return [look, reg]


def data_tables(rows):
    data = {}
    for r in rows:
        if r.get("bench") == "data":
            key = (r["op"], r["size"], r["descs"], r.get("pairs", 1), r["impl"])
            data.setdefault(key, []).append(r)
    t = Table("Data path: Ferry vs ucx_perftest (same transports, same run, alternating)",
              ["op", "size", "descriptors", "pairs", "Ferry GB/s", "ucx_perftest GB/s",
               "Ferry/ucx", "rounds", "Ferry best", "ucx best", "best/best"])
    keys = sorted({k[:4] for k in data}, key=lambda k: (k[3], k[0] != "write", k[1], k[2]))
    for op, size, descs, pairs in keys:
        def best(impl):  # the median over the alternating rounds
            runs = data.get((op, size, descs, pairs, impl))
            if not runs:
                return None
            vals = sorted(x["gbps"] for x in runs)
            return vals[len(vals) // 2]
        f = best("ferry")
        # The reference moves the same total size as one message.
        runs = data.get((op, size, 1, pairs, "ucx_perftest")) or []
        u = sorted(x["gbps"] for x in runs)[len(runs) // 2] if runs else None
        u_max = max((x["gbps"] for x in runs), default=None)
        f_runs = data.get((op, size, descs, pairs, "ferry")) or []
        f_max = max((x["gbps"] for x in f_runs), default=None)
        t.add(op, size_name(size), str(descs), str(pairs), f, u, ratio(f, u),
              str(len(f_runs)), f_max, u_max, ratio(f_max, u_max))
    mc = Table("memcpy, one core (the ceiling for shared memory)", ["size", "GB/s"])
    for r in rows:
        if r.get("bench") == "memcpy":
            mc.add(size_name(r["size"]), r["gbps"])
    return [t, mc]


def latency_tables(rows):
    t = Table("Small operation (4 KiB write), per phase, microseconds",
              ["progress", "phase", "n", "p50 us", "p99 us", "mean us"])
    for r in rows:
        if r.get("bench") == "latency":
            t.add(r.get("progress", "thread"), r["phase"], str(r["n"]), r["p50_us"],
                  r["p99_us"], r["mean_us"])
    return [t]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plain", action="store_true", help="plain text instead of Markdown")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    rows = load(args.files)
    machines = [r for r in rows if r.get("bench") == "machine"]
    out = []
    if machines:
        m = machines[-1]
        out.append(f"Machine: {m.get('cpu')}, {m.get('cores')} cores, Linux {m.get('kernel')}, "
                   f"UCX {m.get('ucx')}, etcd {m.get('etcd')}; measured {m.get('date')}\n")
    for table in control_tables(rows) + data_tables(rows) + latency_tables(rows):
        text = table.render(args.plain)
        if text:
            out.append(text)
    sys.stdout.write("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
