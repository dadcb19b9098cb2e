#!/usr/bin/env python3
"""bench/report.py: turns the benchmark results (JSON lines written by
bench/control.sh, bench/data.sh and bench/latency.sh) into tables.

    python3 bench/report.py bench/results/*.jsonl            # Markdown (README)
    python3 bench/report.py --plain bench/results/x.jsonl    # plain text
    python3 bench/report.py --trim bench/results/x.jsonl     # the README's rows

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
            key = (r["mode"], r["clients"], r["coordinators"], r.get("channels", "thread"),
                   r.get("label", ""))
            ctl.setdefault(key, []).append(r)
    clients = sorted({k[1] for k in ctl})
    replicas = sorted({k[2] for k in ctl if k[2] > 0})
    labels = sorted({k[4] for k in ctl if k[0] == "register" and k[4]})

    def get(mode, n, coords, channels="thread", label=""):
        """A run, or the median of each figure over the rounds that repeated
        it (bench/control.sh alternates Register with its references)."""
        runs = ctl.get((mode, n, coords, channels, label))
        if not runs:
            return None
        return dict(runs[0], runs=runs, **{f: median([r[f] for r in runs])
                                          for f in ("ops_per_s", "p50_us", "p99_us",
                                                    "server_cpu_us_per_call")
                                          if all(f in r for r in runs)})

    def val(r, f):
        return None if r is None else r.get(f)

    # The servers' CPU per call (ferry_bench_control --server-pid), in
    # results that have it.
    with_cpu = any("server_cpu_us_per_call" in r for runs in ctl.values() for r in runs)

    def rratio(a, b):
        """a/b in calls per second; over rounds the median of each round's
        ratio (the i-th run of a against the i-th of b, measured seconds
        apart), which the machine's drift moves less than a ratio of medians."""
        if a is None or b is None:
            return "-"
        if len(a["runs"]) == len(b["runs"]) > 1:
            return f"{median([x['ops_per_s'] / y['ops_per_s'] for x, y in zip(a['runs'], b['runs'])]):.2f}"
        return ratio(a["ops_per_s"], b["ops_per_s"])

    look = Table("Control path: Lookup vs reading the same record from etcd (JSON gateway, "
                 "and native gRPC KV.Range from C)",
                 ["clients", "replicas", "Lookup/s", "p50 us", "p99 us",
                  "gateway get/s", "p50 us", "p99 us", "Lookup/gateway",
                  "gRPC Range/s", "p50 us", "p99 us", "Lookup/Range",
                  "Lookup/s (1 channel)", "p99 us (1 channel)"])
    reg = Table("Control path: Register vs direct etcd writes (the coordinator's etcd "
                "client: txn through the JSON gateway, the issue's reference, and through "
                "gRPC, the coordinator's default way). rounds > 1: Register and its "
                "references ran alternately that many times; figures are medians over "
                "the rounds, ratios the median of each round's ratio",
                ["clients", "replicas", "coordinator", "Register/s", "p50 us", "p99 us",
                 "etcd txn/s", "p50 us", "lease+txn/s", "p50 us", "Register/txn",
                 "Register/(lease+txn)", "gRPC txn/s", "p50 us", "Register/gRPC txn",
                 "rounds"])
    echo = Table("Control path: each RPC against a bare echo through the same rpc/ layer "
                 "(empty handler, 16 threads, one server), on the same kind of channel; "
                 "ratios are RPC/echo",
                 ["RPC", "clients", "replicas", "calls/s", "p50 us", "p99 us",
                  "echo/s", "p50 us", "p99 us", "calls/s ratio", "p50 ratio", "p99 ratio"] +
                 (["server CPU us/call", "echo server's", "CPU ratio"] if with_cpu else []))
    for coords in replicas:
        for n in clients:
            lk, eg, gg, sh = get("lookup", n, coords), get("etcd-get", n, 0), \
                get("etcd-grpc-get", n, 0), get("lookup", n, coords, "shared")
            if lk is not None:
                look.add(str(n), str(coords), val(lk, "ops_per_s"), val(lk, "p50_us"),
                         val(lk, "p99_us"), val(eg, "ops_per_s"), val(eg, "p50_us"),
                         val(eg, "p99_us"), ratio(val(lk, "ops_per_s"), val(eg, "ops_per_s")),
                         val(gg, "ops_per_s"), val(gg, "p50_us"), val(gg, "p99_us"),
                         ratio(val(lk, "ops_per_s"), val(gg, "ops_per_s")),
                         val(sh, "ops_per_s"), val(sh, "p99_us"))
            tx, lt = get("etcd-txn", n, 0), get("etcd-lease-txn", n, 0)
            gt = get("etcd-txn", n, 0, label="grpc")
            for label in [""] + labels:
                rg = get("register", n, coords, label=label)
                if rg is not None:
                    reg.add(str(n), str(coords), label or "default", val(rg, "ops_per_s"),
                            val(rg, "p50_us"), val(rg, "p99_us"), val(tx, "ops_per_s"),
                            val(tx, "p50_us"), val(lt, "ops_per_s"), val(lt, "p50_us"),
                            rratio(rg, tx), rratio(rg, lt), val(gt, "ops_per_s"),
                            val(gt, "p50_us"), rratio(rg, gt), str(len(rg["runs"])))
    for name, mode, channels, label in (("Lookup", "lookup", "thread", ""),
                                        ("Lookup (1 channel)", "lookup", "shared", ""),
                                        ("Register", "register", "thread", "")) + \
            tuple((f"Register ({lb})", "register", "thread", lb) for lb in labels):
        for coords in replicas:
            for n in clients:
                # The echo on the same kind of channel (one per client, or one).
                r, e = get(mode, n, coords, channels, label), get("echo", n, 0, channels)
                if r is not None and e is not None:
                    echo.add(name, str(n), str(coords), val(r, "ops_per_s"), val(r, "p50_us"),
                             val(r, "p99_us"), val(e, "ops_per_s"), val(e, "p50_us"),
                             val(e, "p99_us"), ratio(val(r, "ops_per_s"), val(e, "ops_per_s")),
                             ratio(val(r, "p50_us"), val(e, "p50_us")),
                             ratio(val(r, "p99_us"), val(e, "p99_us")),
                             *([val(r, "server_cpu_us_per_call"),
                                val(e, "server_cpu_us_per_call"),
                                ratio(val(r, "server_cpu_us_per_call"),
                                      val(e, "server_cpu_us_per_call"))] if with_cpu else []))
    return [echo, look, reg]


def median(vals):
    vals = sorted(vals)
    return vals[len(vals) // 2] if vals else None


DATA_SIZES_TRIM = {1 << 20, 16 << 20, 256 << 20, 1 << 30}


def data_tables(rows, trim=False):
    data = {}
    for r in rows:
        if r.get("bench") == "data":
            # --window W > 1 (W operations in flight) is a row of its own
            impl = r["impl"] + (f"@w{r['window']}" if r.get("window", 1) > 1 else "")
            key = (r["op"], r["size"], r["descs"], r.get("pairs", 1), impl)
            data.setdefault(key, []).append(r["gbps"])
    t = Table("Data path, GB/s (median of the alternating rounds). raw UCX = ucp_put_nbx/"
              "ucp_get_nbx + flush between two processes into the program's own memory "
              "(ucp_mem_map of it), as Ferry: like-for-like. ucx_perftest and raw UCX "
              "(UCX mem) put into UCX-allocated memory, which UCX 1.13's shared-memory "
              "transports write directly, while a put into user memory is emulated over "
              "active messages (two copies): NOT like-for-like",
              ["op", "size", "descriptors", "pairs", "Ferry", "raw UCX", "Ferry/raw",
               "ucx_perftest", "Ferry/perftest", "raw UCX (UCX mem)", "rounds",
               "Ferry best", "raw best", "best/best"])
    keys = sorted({k[:4] for k in data if k[4] == "ferry"},
                  key=lambda k: (k[3], k[0] != "write", k[1], k[2]))
    for op, size, descs, pairs in keys:
        if trim and pairs == 1 and (size not in DATA_SIZES_TRIM or descs != 1):
            continue
        f_runs = data.get((op, size, descs, pairs, "ferry"), [])

        def ref(impl):  # the references move the same total size as one message
            return data.get((op, size, 1, pairs, impl), [])
        raw, perf, ucxmem = ref("ucx-raw-user"), ref("ucx_perftest"), ref("ucx-raw-ucxmem")
        f = median(f_runs)
        t.add(op, size_name(size), str(descs), str(pairs), f, median(raw),
              ratio(f, median(raw)), median(perf), ratio(f, median(perf)), median(ucxmem),
              str(len(f_runs)), max(f_runs, default=None), max(raw, default=None),
              ratio(max(f_runs, default=None), max(raw, default=None)))
    reg = registered_table(data)
    mc = Table("memcpy, one core (the ceiling for shared memory)", ["size", "GB/s"])
    for r in rows:
        if r.get("bench") == "memcpy":
            mc.add(size_name(r["size"]), r["gbps"])
    return [t, reg, mc] + create_tables(rows)


def target(a, b, size):
    """Issue #14's targets hold from 1 MiB: a >= 0.95 of the reference b."""
    if a is None or not b or size < (1 << 20):
        return "-"
    return "met" if a / b >= 0.95 else "missed"


def registered_table(data):
    """Issue #14: Ferry on memory registered once (ferry_mem_register) against
    the raw UCX put into user memory, and on Ferry-allocated memory
    (ferry_mem_alloc) against ucx_perftest, both from the same run."""
    t = Table("Registered memory (issue #14), GB/s, medians, 1 descriptor, 1 pair. "
              "Ferry region: the program's memory registered once (ferry_mem_register), "
              "vs raw UCX into user memory; Ferry alloc: ferry_mem_alloc (UCX-allocated, "
              "as ucx_perftest's), vs ucx_perftest and vs the raw put into UCX memory. "
              "Targets (>= 0.95) from 1 MiB. Ferry alloc, W in flight: --window W, a stream "
              "of operations (as ucx_perftest streams puts), W slots of the size",
              ["op", "size", "Ferry region", "Ferry (per-op reg.)", "raw UCX (user)",
               "region/raw", "target", "Ferry alloc", "ucx_perftest", "alloc/perftest",
               "target", "raw UCX (UCX mem)", "alloc/raw UCX mem", "rounds",
               "Ferry alloc, W in flight", "W", "streamed/perftest"])
    keys = sorted({(k[0], k[1]) for k in data
                   if k[4] in ("ferry-region", "ferry-alloc") and k[2] == 1 and k[3] == 1},
                  key=lambda k: (k[0] != "write", k[1]))
    for op, size in keys:
        def m(impl):
            return median(data.get((op, size, 1, 1, impl), []))
        region, alloc = m("ferry-region"), m("ferry-alloc")
        raw, perf, ucxmem = m("ucx-raw-user"), m("ucx_perftest"), m("ucx-raw-ucxmem")
        windows = sorted(int(k[4].split("@w")[1]) for k in data
                         if k[:4] == (op, size, 1, 1) and k[4].startswith("ferry-alloc@w"))
        w = windows[-1] if windows else None
        streamed = m(f"ferry-alloc@w{w}") if w else None
        t.add(op, size_name(size), region, m("ferry"), raw, ratio(region, raw),
              target(region, raw, size), alloc, perf, ratio(alloc, perf),
              target(alloc, perf, size), ucxmem, ratio(alloc, ucxmem),
              str(len(data.get((op, size, 1, 1, "ferry-alloc"), []))),
              streamed, str(w) if w else "-", ratio(streamed, perf))
    return t


def create_tables(rows):
    """Operation creation on a registered region (ferry_bench_data --create)
    and where a 1 MiB operation's time goes (--trace)."""
    c = Table("Operation creation, microseconds (ferry_writable_create on the whole "
              "buffer; target: under 5 us p50 on a registered 1 GiB region)",
              ["phase", "size", "n", "p50 us", "p99 us", "target"])
    for r in rows:
        if r.get("bench") == "create":
            goal = "-"
            if r["phase"].startswith("create on the region") and r["size"] >= (1 << 30):
                goal = "met" if r["p50_us"] < 5 else "missed"
            c.add(r["phase"], size_name(r["size"]), str(r["n"]), r["p50_us"], r["p99_us"], goal)
    ph = Table("Where one Ferry operation's time goes (ferry_bench_data --trace, active "
               "side, p50 us per phase; only 'data + flush' is in the raw UCX reference)",
               ["memory", "op", "size", "phase", "p50 us", "mean us"])
    for r in rows:
        if r.get("bench") == "phases":
            ph.add(r["mem"], r["op"], size_name(r["size"]), r["phase"], r["p50_us"],
                   r["mean_us"])
    return [c, ph]


def latency_tables(rows):
    """One row per phase, one p50/p99 pair per configuration (progress, spin,
    traced: the "traced: ..." phases are a traced run's alone), and a
    reference for the phases that have one, from the same results:
    etcd's create-if-absent txn alone (1 client), the coordinator's Lookup
    (1 client), the raw UCX 4 KiB put + flush (median)."""
    lat, configs, phases = {}, [], []
    for r in rows:
        if r.get("bench") != "latency":
            continue
        cfg = (r.get("progress", "thread"), r.get("spin_us", "-"), r.get("traced", False))
        if cfg not in configs:
            configs.append(cfg)
        if r["phase"] not in phases:
            phases.append(r["phase"])
        lat[(cfg, r["phase"])] = r
    ctl = {(r["mode"], r["clients"], r["coordinators"], r.get("channels", "thread")): r
           for r in rows if r.get("bench") == "control"}
    txn = (ctl.get(("etcd-txn", 1, 0, "thread")) or {}).get("p50_us")
    lookup = (ctl.get(("lookup", 1, 1, "thread")) or {}).get("p50_us")
    raw = median([r["us_per_op"] for r in rows if r.get("bench") == "data"
                  and r.get("impl") == "ucx-raw-user" and r["op"] == "write"
                  and r["size"] == 4096 and "us_per_op" in r])
    plus = lambda *v: None if any(x is None for x in v) else sum(v)  # noqa: E731
    refs = {
        "register (op_publish)": ("etcd txn", txn),
        "transfer (begin_by_id return..wait)": ("raw UCX put+flush", raw),
    }
    if "claim (write_begin_by_id)" in phases:
        # write_begin_by_id is one Claim, an etcd write that answers the
        # metadata.
        refs.update({
            "claim (write_begin_by_id)": ("etcd txn", txn),
            "cycle (create..receiver wait)": ("2 etcd txns + raw put", plus(txn, txn, raw)),
            "cycle minus register": ("etcd txn + raw put", plus(txn, raw)),
            "cycle minus register and claim": ("raw put", raw),
        })
    else:
        # Results from before: a Lookup, then the Claim.
        refs.update({
            "lookup (write_begin_by_id)": ("Lookup", lookup),
            "cycle (create..receiver wait)": ("etcd txn + Lookup + raw put",
                                              plus(txn, lookup, raw)),
            "cycle minus register": ("Lookup + raw put", plus(lookup, raw)),
            "cycle minus register and lookup": ("raw put", raw),
        })
    header = ["phase"]
    for prog, spin, traced in configs:
        header += [f"{prog}, spin {spin}{', traced' if traced else ''}: p50 us", "p99 us"]
    header += ["reference", "ref us", "p50/ref"]
    n = {r["n"] for r in lat.values()}
    t = Table("Small operation (4 KiB write through the coordinator: ferry_op_publish, "
              f"ferry_write_begin_by_id), microseconds over {'/'.join(map(str, sorted(n)))} "
              "operations; p50/ref for the first configuration", header)
    for phase in phases:
        cells = [phase]
        for cfg in configs:
            r = lat.get((cfg, phase))
            cells += [None if r is None else r["p50_us"], None if r is None else r["p99_us"]]
        name, ref = refs.get(phase, ("-", None))
        first = lat.get((configs[0], phase))
        cells += [name, ref, ratio(None if first is None else first["p50_us"], ref)]
        t.add(*cells)
    return [t]


def latency_cpu_tables(rows):
    """The CPU time each process of the small-operation cycle used per cycle
    (etcd, the coordinator, the receiver, the sender), beside the wall time
    per cycle: their sum over the wall time is how many cores the cycle kept
    busy."""
    cpu, configs, procs = {}, [], []
    for r in rows:
        if r.get("bench") != "latency-cpu":
            continue
        cfg = (r["progress"], r["spin_us"], r.get("traced", False))
        if cfg not in configs:
            configs.append(cfg)
        if r["process"] not in procs:
            procs.append(r["process"])
        cpu[(cfg, r["process"])] = r
    header = ["configuration", "wall us/cycle"] + [f"{p} CPU us" for p in procs]
    header += ["all CPU us", "cores busy"]
    t = Table("Small operation: CPU time per cycle of each process (/proc, clock ticks), "
              "and the cores the cycle kept busy (all CPU / wall)", header)
    for cfg in configs:
        prog, spin, traced = cfg
        got = [cpu.get((cfg, p)) for p in procs]
        wall = next(r["wall_us_per_cycle"] for r in got if r is not None)
        each = [None if r is None else r["cpu_us_per_cycle"] for r in got]
        total = sum(v for v in each if v is not None)
        t.add(f"{prog}, spin {spin}{', traced' if traced else ''}", wall, *each, total,
              fmt(total / wall, 2) if wall else "-")
    return [t]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plain", action="store_true", help="plain text instead of Markdown")
    ap.add_argument("--trim", action="store_true",
                    help="the README's rows: data path at 1 MiB-1 GiB, 1 descriptor, and pairs")
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    rows = load(args.files)
    machines = [r for r in rows if r.get("bench") == "machine"]
    out = []
    if machines:
        m = machines[-1]
        dates = sorted(x.get("date", "") for x in machines)
        when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
        out.append(f"Machine: {m.get('cpu')}, {m.get('cores')} cores, Linux {m.get('kernel')}, "
                   f"UCX {m.get('ucx')}, etcd {m.get('etcd')}; measured {when}\n")
    tables = (control_tables(rows) + data_tables(rows, args.trim) + latency_tables(rows)
              + latency_cpu_tables(rows))
    for table in tables:
        text = table.render(args.plain)
        if text:
            out.append(text)
    sys.stdout.write("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
