#!/usr/bin/python3
"""deploy/check.py: the checks behind deploy/check.sh (run that, not this).

Renders every overlay under deploy/k8s/overlays and every example under
deploy/k8s/examples with `kubectl kustomize` and checks the rendered objects
(an example together with the overlay it goes with, EXAMPLES), and checks
deploy/Containerfile, without a cluster:
  schema      every rendered object against the Kubernetes API schemas, by
              deploy/validate.mjs (npm kubernetes-models, pinned in
              package-lock.json): types, required fields, enums, and no field
              the API does not define. No Kubernetes field names are copied
              here.
  wiring      every container has an image with a tag; Services, PDBs and
              selectors match pods; named ports and probe ports exist; Secret
              references resolve; $(VAR) in arguments is defined in env, and
              in an env value by an env entry before it (Kubernetes expands
              only those); every container runs as non-root with a
              read-only root filesystem and has resources.
  coordinator Deployment with 2+ replicas; port 7400 named grpc; readiness
              asks grpc.health.v1 for service "" on 7400 (a native gRPC probe,
              or with TLS `ferryctl health` over TLS with the coordinator's
              own files), liveness asks health for service "liveness"; every health
              service a probe asks for is one the coordinator serves; a
              Service port 7400 named grpc; FERRY_LISTEN on 7400 on all
              addresses; FERRY_METRICS_LISTEN on the port its prometheus.io
              annotations name; FERRY_ETCD lists exactly the overlay's etcd
              members, each at <pod>.<headless Service>.<namespace>.svc
              ($(VAR) of the pod's namespace, or the namespace) on etcd's
              client port, https exactly when TLS is on: not one Service
              VIP, through which the coordinator's failover between members
              has nothing to fail over to. terminationGracePeriodSeconds
              above the preStop pause + FERRY_GRACE_MS + the exit's tail;
              the memory limit at least 100 MiB + 3 x FERRY_REQUEST_MEMORY_MIB
              + 32 + 2 x FERRY_WATCH_MEMORY_MIB + memory-backed volumes +
              twice the view at etcd's backend quota (a reload builds the
              new view beside the old) + 16 MiB for the history,
              and FERRY_REQUEST_MEMORY_MIB above FERRY_MAX_WAITS x 16 KiB;
              each setting from its flag in args (which wins), else a
              literal in env, else its default: valueFrom or envFrom fail
              (not a literal; check.py cannot verify them).
  FERRY_*     every FERRY_* variable and --flag a container or probe uses
              appears in the usage text of the program it runs
              (coordinator/config.c, ferry-worker's under worker/,
              tools/ferryctl/ferryctl.c), and that program is in the image.
  etcd        replicas as the overlay says (odd); --initial-cluster lists
              exactly etcd-0..N-1 at their headless-Service DNS names on the
              peer port; the headless Service exists (clusterIP None,
              publishNotReadyAddresses); podManagementPolicy Parallel; data on
              a volumeClaimTemplate, and a memory limit, of at least twice
              the backend quota (--quota-backend-bytes, else etcd's 2 GiB);
              periodic compaction keeping 1m to 10m of history (an hour's
              fills the quota: deploy/README, "Scale"); --listen-metrics-urls plaintext, on the
              containerPort the pods' prometheus.io/* scrape annotations
              name.
  workers     in each example, with its overlay's objects: FERRY_TOKEN
              comes from a Secret; FERRY_COORDINATOR names the coordinator
              Service port; a recv and a send agree on request ID and size;
              TLS as its overlay has it; the overlay's coordinator image.
  examples    the directories under deploy/k8s/examples are exactly those
              EXAMPLES names; each renders into the overlay's namespace, gets
              the wiring checks above (its references resolved against the
              overlay's objects too), and replaces none of the overlay's
              objects.
  overlays    an overlay ships no Job and no Secret with values (data or
              stringData): re-applying it (an upgrade) would write the
              Secret's value back over the operator's, and fail on a Job's
              immutable pod template or rerun a finished one; such objects
              belong in deploy/k8s/examples.
              dev: one etcd member, no TLS, its pods' memory requests (a
              rollout's surge pod included) at most 1 GiB together, to fit
              a small node. prod: three members; TLS on
              (etcd clients and peers with client certificates, the
              coordinator with client certificates, its examples' workers
              with theirs;
              the etcdctl commands deploy/README.md gives name an https
              endpoint of a member and the CA, certificate and key etcd
              mounts);
              PodDisruptionBudgets keeping etcd's quorum and a coordinator;
              NetworkPolicies letting only workers (those of its examples)
              reach the coordinators' port, only coordinators etcd's client
              port, only etcd members its peer port, only workers of their
              namespace the workers (every port: UCX picks them), and
              letting in (from anywhere: Prometheus) the port each pod's
              prometheus.io/port names.
  kustomize   the base's resources lists exactly the manifests in
              deploy/k8s/base; every overlay and example renders, into one
              namespace.
  alerts      prometheus/ferry-rules.yaml passes `promtool check rules`, and
              `promtool test rules` on prometheus/ferry-rules-test.yaml: each
              alert fires on the series that should fire it, and only there.
  image       every COPY/ADD source exists in the repository; FROM is Debian
              12; the build stage runs scripts/install-deps.sh and a Release
              cmake build with tests and benchmarks off; build-tree paths match
              CMake targets; a numeric non-root USER equal to the pods'
              runAsUser; ENTRYPOINT and the commands the manifests run are
              installed; runtime packages exist (apt-cache) and, with --build,
              cover every library the built binaries link directly.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import yaml

ERRORS = []
NOTES = []


def fail(where, msg):
    ERRORS.append("%s: %s" % (where, msg))


def note(msg):
    NOTES.append(msg)


CLUSTER_SCOPED = {"Namespace"}
WORKLOADS = {"Deployment", "StatefulSet", "Job", "Pod"}
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")

# What each overlay under deploy/k8s/overlays must be.
# requests_mib: what the overlay's pods may request in memory together (a
# rollout's surge pod included), or None: dev's fit a 2 GiB minikube beside
# the worker example (2 x 128Mi) and the cluster's own pods.
OVERLAYS = {
    "dev": {"etcd_members": 1, "tls": False, "guarded": False, "requests_mib": 1024},
    "prod": {"etcd_members": 3, "tls": True, "guarded": True, "requests_mib": None},
}
# The examples under deploy/k8s/examples, each applied on its own after the
# overlay it goes with (and checked together with that overlay's objects).
EXAMPLES = {"worker": "dev", "worker-tls": "prod"}
TLS_ENV = ("FERRY_TLS_CA", "FERRY_TLS_CERT", "FERRY_TLS_KEY")
ETCD_TLS_ENV = ("FERRY_ETCD_CA", "FERRY_ETCD_CERT", "FERRY_ETCD_KEY")


# ---- usage texts ----------------------------------------------------------

def c_usage(path):
    """The concatenated string literals of `static const char usage[] = ...;`."""
    with open(path, encoding="utf-8") as f:
        src = f.read()
    m = re.search(r"static\s+const\s+char\s+usage\[\]\s*=(.*?);\s*\n", src, re.S)
    if not m:
        return None
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(1))
    return "".join(parts).replace("\\n", "\n")


def find_usage_source(repo, program):
    if program == "ferry-coordinator":
        candidates = [os.path.join(repo, "coordinator", "config.c")]
    elif program == "ferryctl":
        candidates = [os.path.join(repo, "tools", "ferryctl", "ferryctl.c")]
    else:
        candidates = []
        for root, _dirs, files in os.walk(os.path.join(repo, "worker")):
            candidates += [os.path.join(root, f) for f in sorted(files) if f.endswith(".c")]
    for path in candidates:
        if not os.path.isfile(path):
            continue
        text = c_usage(path)
        if text and ("usage: %s" % program) in text:
            return path, text
    return None, None


class Program:
    def __init__(self, name, path, text):
        self.name = name
        self.path = path
        self.text = text or ""
        self.env = set(re.findall(r"\bFERRY_[A-Z0-9_]+\b", self.text))
        self.flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", self.text))
        m = re.search(r"usage: \S+ ([a-z|]+) ", self.text)
        self.subcommands = set(m.group(1).split("|")) if m else set()


# ---- loading --------------------------------------------------------------

class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (PyYAML keeps
    the last silently; the API server's strict decoding does not)."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _value in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, "duplicate key %r" % (key,), key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_yaml_file(path, label):
    try:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.load_all(f, Loader=StrictLoader) if d is not None]
    except yaml.YAMLError as e:
        fail(label, "does not parse: %s" % e)
        return []
    out = []
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            fail("%s doc %d" % (label, i + 1), "is not a mapping")
            continue
        out.append(d)
    return out


def oname(obj):
    return "%s/%s" % (obj.get("kind", "?"), (obj.get("metadata") or {}).get("name", "?"))


def pod_spec(obj):
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return spec, (obj.get("metadata") or {}).get("labels") or {}
    tmpl = spec.get("template") or {}
    return tmpl.get("spec") or {}, (tmpl.get("metadata") or {}).get("labels") or {}


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def env_map(container):
    return {e.get("name"): e for e in container.get("env") or [] if isinstance(e, dict)}


def parse_url(url):
    m = re.match(r"^(https?)://([^/:]+):(\d+)/?$", url)
    return (m.group(1), m.group(2), int(m.group(3))) if m else None


def arg_values(args):
    """--flag=value and --flag value pairs of an argument list."""
    out = {}
    i = 0
    while i < len(args):
        a = str(args[i])
        if a.startswith("--"):
            if "=" in a:
                k, v = a.split("=", 1)
                out[k] = v
            elif i + 1 < len(args) and not str(args[i + 1]).startswith("--"):
                out[a] = str(args[i + 1])
                i += 1
            else:
                out[a] = None
        i += 1
    return out


# ---- the Containerfile ----------------------------------------------------

class Image:
    def __init__(self):
        self.entrypoint = None
        self.user = None
        self.installed = set()   # absolute paths of programs in the final image
        self.runtime_packages = []


def containerfile_instructions(path):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    out = []
    cur = ""
    for line in lines:
        s = line.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if cur and s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        word, _, rest = cur.partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    if cur:
        word, _, rest = cur.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def cmake_needs(repo):
    """What the image's CMake configure and build read from the source tree
    (tests, benchmarks and fuzzers off): the folders the top CMakeLists.txt
    adds outside any if() block, and every ${PROJECT_SOURCE_DIR}/PATH that
    a CMakeLists.txt under them names (a script, a header folder)."""
    needs = {"CMakeLists.txt"}
    depth = 0
    with open(os.path.join(repo, "CMakeLists.txt"), encoding="utf-8") as f:
        for line in f:
            code = line.split("#", 1)[0].strip()
            if re.match(r"if\s*\(", code, re.I):
                depth += 1
            elif re.match(r"endif\s*\(", code, re.I):
                depth -= 1
            m = re.match(r"add_subdirectory\s*\(\s*([\w./-]+)", code, re.I)
            if m and depth == 0:
                needs.add(m.group(1).rstrip("/"))
    for top in sorted(n for n in needs if n != "CMakeLists.txt"):
        for root, _dirs, files in os.walk(os.path.join(repo, top)):
            for name in files:
                if name != "CMakeLists.txt":
                    continue
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    for m in re.finditer(r"\$\{PROJECT_SOURCE_DIR\}/([\w./-]+)", f.read()):
                        needs.add(m.group(1).split("*")[0].rstrip("/"))
    return needs


def check_build_context(repo, where, stages):
    """The build stage must copy into its source folder everything the
    configure and build read: a folder added to the CMake project later
    (python/, a script libferry's link runs) broke the image's build while
    every COPY source still existed."""
    src_dir = None
    copied = []
    for word, rest in stages[0][1]:
        if word == "WORKDIR":
            src_dir = rest.strip().rstrip("/")
    build_runs = " ; ".join(r for w, r in stages[0][1] if w == "RUN")
    m = re.search(r"cmake\s+-S\s+(\S+)", build_runs)
    if m:
        src_dir = m.group(1).rstrip("/")
    if not src_dir:
        return
    for word, rest in stages[0][1]:
        if word not in ("COPY", "ADD"):
            continue
        toks = [t for t in shlex.split(rest) if not t.startswith("--")]
        if len(toks) != 2 or any(t.startswith("--from") for t in shlex.split(rest)):
            continue
        src, dst = toks[0].rstrip("/"), toks[1]
        if dst.endswith("/"):
            dst += os.path.basename(src)
        dst = os.path.normpath(dst)
        if dst == src_dir + "/" + src or (src == "." and dst == src_dir):
            copied.append(src)
    for need in sorted(cmake_needs(repo)):
        if not any(c == "." or need == c or need.startswith(c + "/") for c in copied):
            fail(where, "the build stage does not copy %s into %s, which the CMake build reads"
                 % (need, src_dir))


def check_containerfile(repo, deploy):
    image = Image()
    path = None
    for name in ("Containerfile", "Dockerfile"):
        if os.path.isfile(os.path.join(deploy, name)):
            path = os.path.join(deploy, name)
            break
    if path is None:
        fail("deploy", "no Containerfile or Dockerfile")
        return image
    where = os.path.relpath(path, repo)
    ins = containerfile_instructions(path)
    stages = []           # (name, [(instr, rest)])
    for word, rest in ins:
        if word == "FROM":
            toks = rest.split()
            base = toks[0]
            stage = toks[2] if len(toks) >= 3 and toks[1].upper() == "AS" else None
            if not re.match(r"^(docker\.io/(library/)?)?debian:(12|bookworm)([-.][\w.-]*)?$", base):
                fail(where, "FROM %s is not Debian 12 (bookworm)" % base)
            stages.append((stage, []))
            continue
        if not stages:
            fail(where, "%s before the first FROM" % word)
            continue
        stages[-1][1].append((word, rest))
    if len(stages) < 2:
        fail(where, "is not multi-stage (%d FROM)" % len(stages))
        return image

    # Sources copied from the build context must exist in the repository.
    for _stage, body in stages:
        for word, rest in body:
            if word not in ("COPY", "ADD"):
                continue
            toks = shlex.split(rest)
            if any(t.startswith("--from") for t in toks):
                continue
            paths = [t for t in toks if not t.startswith("--")]
            if len(paths) < 2:
                fail(where, "%s %s: needs a source and a destination" % (word, rest))
                continue
            for src in paths[:-1]:
                full = os.path.normpath(os.path.join(repo, src))
                if not full.startswith(repo) or not os.path.exists(full):
                    fail(where, "%s source %s does not exist in the repository" % (word, src))
                elif src.split("/")[0].startswith("build"):
                    fail(where, "%s copies the local build tree %s" % (word, src))

    check_build_context(repo, where, stages)

    build_runs = " ; ".join(r for _s, b in stages[:-1] for w, r in b if w == "RUN")
    if "scripts/install-deps.sh" not in build_runs:
        fail(where, "the build stage does not run scripts/install-deps.sh")
    m = re.search(r"cmake\s+-S\s+\S+\s+-B\s+(\S+)", build_runs)
    if not m:
        fail(where, "the build stage has no `cmake -S <src> -B <build>`")
        build_dir = None
    else:
        build_dir = m.group(1).rstrip("/")
    for flag in ("-DCMAKE_BUILD_TYPE=Release", "-DFERRY_BUILD_TESTS=OFF",
                 "-DFERRY_BUILD_BENCH=OFF"):
        if flag not in build_runs:
            fail(where, "the cmake configure lacks %s" % flag)
    if build_dir:
        # /build/<dir>/... must be a folder of the project with CMake targets.
        for rel in sorted(set(re.findall(re.escape(build_dir) + r"/([\w./*-]+)", build_runs))):
            top = rel.split("/")[0]
            if not os.path.isfile(os.path.join(repo, top, "CMakeLists.txt")):
                fail(where, "build-tree path %s/%s: no %s/CMakeLists.txt" % (build_dir, rel, top))
        targets = {
            "coordinator/ferry-coordinator": ("coordinator", r"add_executable\(\s*ferry-coordinator\b"),
            "worker/libferry.so": ("worker", r"add_library\(\s*ferry\s+SHARED\b"),
            "tools/ferryctl": ("tools", r"add_executable\(\s*ferryctl\b"),
        }
        for rel, (top, pattern) in targets.items():
            if (build_dir + "/" + rel) in build_runs:
                with open(os.path.join(repo, top, "CMakeLists.txt"), encoding="utf-8") as f:
                    if not re.search(pattern, f.read()):
                        fail(where, "copies %s/%s but %s/CMakeLists.txt has no such target"
                             % (build_dir, rel, top))
        if not any(re.search(r"add_executable\(\s*ferry-worker\b", open(os.path.join(r, f),
                   encoding="utf-8").read())
                   for r, _d, fs in os.walk(os.path.join(repo, "worker"))
                   for f in fs if f == "CMakeLists.txt"):
            note("worker/ has no ferry-worker target yet: build the image with "
                 "--build-arg FERRY_WITH_WORKER=0 until it does")

    # Final stage: what it installs, runs as, and starts.
    final = stages[-1][1]
    bin_names = set(re.findall(r"/out/bin/(ferry[a-z-]*)", build_runs))
    for word, rest in final:
        if word == "COPY" and "--from" in rest:
            toks = [t for t in shlex.split(rest) if not t.startswith("--")]
            if len(toks) == 2 and toks[0].rstrip("/") == "/out/bin":
                image.installed |= {toks[1].rstrip("/") + "/" + n for n in bin_names}
        elif word == "USER":
            image.user = rest.split(":")[0]
        elif word == "ENTRYPOINT":
            try:
                ep = yaml.safe_load(rest)
            except yaml.YAMLError:
                ep = None
            if not isinstance(ep, list) or not ep:
                fail(where, "ENTRYPOINT is not in exec form: %s" % rest)
            else:
                image.entrypoint = ep
        elif word == "RUN" and "apt-get install" in rest:
            words = rest.split("apt-get install", 1)[1].split("&&")[0].split()
            image.runtime_packages += [w for w in words if not w.startswith("-")]
    if image.user is None or not image.user.isdigit() or image.user == "0":
        fail(where, "the final stage needs a numeric non-root USER (has %r)" % image.user)
    if not image.entrypoint or os.path.basename(image.entrypoint[0]) != "ferry-coordinator":
        fail(where, "ENTRYPOINT is not ferry-coordinator")
    elif image.entrypoint[0] not in image.installed:
        fail(where, "ENTRYPOINT %s is not installed by the build (installs %s)"
             % (image.entrypoint[0], sorted(image.installed)))
    if not image.runtime_packages:
        fail(where, "the final stage installs no runtime packages")
    if any(p.endswith("-dev") for p in image.runtime_packages):
        fail(where, "the runtime stage installs -dev packages: %s" % image.runtime_packages)
    return image


# In every debian:12 image, slim included (apt and dpkg depend on them).
BASE_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}


def check_runtime_packages(image, build, where):
    pkgs = set(image.runtime_packages)
    if shutil.which("apt-cache"):
        # One call for all (each apt-cache start reads the whole cache).
        r = subprocess.run(["apt-cache", "show", "--no-all-versions"] + sorted(pkgs),
                           capture_output=True, text=True)
        known = set(re.findall(r"^Package: (\S+)$", r.stdout, re.M))
        if not known and "no packages found" not in (r.stderr or "").lower():
            note("apt-cache knows no packages (no lists?); runtime package names not checked")
        else:
            for p in sorted(pkgs - known):
                fail(where, "runtime package %s is not a Debian package (apt-cache show)" % p)
    else:
        note("no apt-cache here; runtime package names not checked")

    if not build:
        note("no build tree given; runtime libraries not checked against the binaries")
        return
    cache = os.path.join(build, "CMakeCache.txt")
    if os.path.isfile(cache) and re.search(r"^FERRY_SANITIZE:BOOL=ON", open(cache).read(), re.M):
        note("%s is a sanitizer build; runtime libraries not checked" % build)
        return
    if not shutil.which("readelf") or not shutil.which("dpkg"):
        note("no readelf/dpkg; runtime libraries not checked")
        return
    binaries = [os.path.join(build, "coordinator", "ferry-coordinator"),
                os.path.join(build, "worker", "libferry.so")]
    for root, _d, files in os.walk(os.path.join(build, "worker")):
        if "ferry-worker" in files:
            binaries.append(os.path.join(root, "ferry-worker"))
    needed = {}   # binary -> sonames it links directly
    for b in binaries:
        if os.path.isfile(b):
            out = subprocess.run(["readelf", "-d", b], capture_output=True, text=True).stdout
            needed[b] = [n for n in re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
                         if not n.startswith("libferry.so")]
    sonames = sorted({n for ns in needed.values() for n in ns})
    owners = {n: set() for n in sonames}
    if sonames:
        # One dpkg -S for all: each start reads every package's file list.
        r = subprocess.run(["dpkg", "-S"] + ["*/" + n for n in sonames],
                           capture_output=True, text=True)
        for line in r.stdout.splitlines():
            pkg_part, _, path = line.partition(": ")
            base = os.path.basename(path)
            if base in owners:
                owners[base] |= {p.strip().split(":")[0] for p in pkg_part.split(",")}
    for b, ns in needed.items():
        for soname in ns:
            own = owners[soname]
            if not own:
                fail(where, "%s needs %s, which no installed package owns" % (b, soname))
            elif not own & (pkgs | BASE_PACKAGES):
                fail(where, "%s needs %s (package %s), which the runtime stage does not install"
                     % (os.path.relpath(b, build), soname, "/".join(sorted(own))))
    checked = len(needed)
    if checked == 0:
        note("no built binaries under %s; runtime libraries not checked" % build)


# ---- the manifests --------------------------------------------------------

class Ctx:
    """One rendered overlay, or an example with its overlay: the objects
    (objs, what references resolve against), the ones to report on (own: the
    example's, or all of an overlay's) and what the overlay must be
    (OVERLAYS)."""

    def __init__(self, repo, objs, label, kust, image, programs, expect, own=None):
        self.repo = repo
        self.objs = objs
        self.own = objs if own is None else own
        self.label = label
        self.kust = kust or {}
        self.image = image
        self.programs = programs
        self.expect = expect
        self.rendered = True

    def of_kind(self, kind):
        return [o for o in self.objs if o.get("kind") == kind]

    def named(self, kind, name):
        for o in self.of_kind(kind):
            if (o.get("metadata") or {}).get("name") == name:
                return o
        return None

    def w(self, obj):
        return "%s %s" % (self.label, oname(obj))


def effective_image(ctx, image):
    if ctx.rendered:
        return image
    for e in ctx.kust.get("images") or []:
        if e.get("name") == image.split(":")[0].split("@")[0]:
            name = e.get("newName", e.get("name"))
            if e.get("digest"):
                return "%s@%s" % (name, e["digest"])
            tag = e.get("newTag", image.split(":")[1] if ":" in image else None)
            return "%s:%s" % (name, tag) if tag is not None else name
    return image


def ferry_image_name(ctx):
    for e in ctx.kust.get("images") or []:
        if e.get("name") == "ferry":
            return e.get("newName", "ferry"), str(e.get("newTag", ""))
    return "ferry", ""


def is_ferry_image(ctx, image):
    base = image.split("@")[0].rsplit(":", 1)[0] if ":" in image.split("/")[-1] else image
    name, _tag = ferry_image_name(ctx)
    return base in ("ferry", name)


def program_of(ctx, c):
    """The program a container runs: its command, else the ferry image's ENTRYPOINT."""
    cmd = c.get("command")
    if cmd:
        return str(cmd[0])
    if is_ferry_image(ctx, str(c.get("image", ""))) and ctx.image.entrypoint:
        return ctx.image.entrypoint[0]
    return None


def check_generic(ctx):
    for o in ctx.own:
        where = "%s %s" % (ctx.label, oname(o))
        api, kind = o.get("apiVersion"), o.get("kind")
        if not api or not kind:
            fail(where, "needs apiVersion and kind")
            continue
        md = o.get("metadata")
        if not isinstance(md, dict) or not md.get("name"):
            fail(where, "needs metadata.name")
            continue
        ns = md.get("namespace")
        want = ctx.kust.get("namespace")
        if kind in CLUSTER_SCOPED:
            continue
        if ctx.rendered and ns != want:
            fail(where, "rendered namespace %r, not the kustomization's %r" % (ns, want))
        if not ctx.rendered and ns is not None and ns != want:
            fail(where, "sets namespace %r; leave it to the kustomization (%r)" % (ns, want))

    secrets = {o["metadata"]["name"]: o for o in ctx.of_kind("Secret")}
    workloads = [o for o in ctx.objs if o.get("kind") in WORKLOADS]
    for o in workloads:
        if not any(o is x for x in ctx.own):
            continue
        where = ctx.w(o)
        spec, labels = pod_spec(o)
        if o["kind"] in ("Deployment", "StatefulSet"):
            sel = ((o.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            if not selects(sel, labels):
                fail(where, "selector.matchLabels %s does not match the pod labels %s"
                     % (sel, labels))
        if not isinstance(spec, dict):
            continue
        psc = spec.get("securityContext") or {}
        volumes = {v.get("name") for v in spec.get("volumes") or []}
        vcts = {(t.get("metadata") or {}).get("name")
                for t in (o.get("spec") or {}).get("volumeClaimTemplates") or []}
        containers = spec.get("containers") or []
        if not containers:
            fail(where, "has no containers")
        for c in containers + (spec.get("initContainers") or []):
            cw = "%s container %s" % (where, c.get("name", "?"))
            if not isinstance(c, dict):
                continue
            if not c.get("name"):
                fail(cw, "needs a name")
            image = c.get("image")
            if not image:
                fail(cw, "needs an image")
            else:
                eff = effective_image(ctx, str(image))
                last = eff.split("/")[-1]
                if "@" not in eff and (":" not in last or last.endswith(":latest")):
                    fail(cw, "image %s (as rendered: %s) has no tag or uses :latest"
                         % (image, eff))
            ports = c.get("ports") or []
            port_names = {}
            port_numbers = set()
            for p in ports:
                if not isinstance(p.get("containerPort"), int):
                    fail(cw, "port %s needs an integer containerPort" % p)
                port_numbers.add(p.get("containerPort"))
                if p.get("name"):
                    port_names[p["name"]] = p.get("containerPort")
            for pk in ("livenessProbe", "readinessProbe", "startupProbe"):
                pr = c.get(pk)
                if pr is None:
                    continue
                if not isinstance(pr, dict):
                    continue
                handlers = [h for h in ("exec", "httpGet", "tcpSocket", "grpc") if h in pr]
                if len(handlers) != 1:
                    fail(cw, "%s needs exactly one handler, has %s" % (pk, handlers))
                    continue
                h = pr[handlers[0]]
                if handlers[0] == "grpc":
                    if not isinstance(h.get("port"), int):
                        fail(cw, "%s.grpc.port must be a number (named ports are not "
                                 "allowed for gRPC probes)" % pk)
                    elif h["port"] not in port_numbers:
                        fail(cw, "%s.grpc.port %s is not a containerPort" % (pk, h["port"]))
                elif handlers[0] in ("httpGet", "tcpSocket"):
                    port = (h or {}).get("port")
                    if isinstance(port, str) and port not in port_names:
                        fail(cw, "%s port %r is not a named containerPort" % (pk, port))
                    elif isinstance(port, int) and port not in port_numbers:
                        fail(cw, "%s port %s is not a containerPort" % (pk, port))
            env = c.get("env") or []
            for e in env:
                ref = ((e.get("valueFrom") or {}).get("secretKeyRef")) or None
                if ref:
                    s = secrets.get(ref.get("name"))
                    keys = set(((s or {}).get("data") or {})) | set(((s or {}).get("stringData") or {}))
                    if s is None:
                        fail(cw, "env %s: Secret %s is not in the manifests"
                             % (e.get("name"), ref.get("name")))
                    elif ref.get("key") not in keys:
                        fail(cw, "env %s: Secret %s has no key %r"
                             % (e.get("name"), ref.get("name"), ref.get("key")))
            defined = {e.get("name") for e in env}
            for a in [str(x) for x in (c.get("command") or []) + (c.get("args") or [])]:
                for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", a):
                    if var not in defined:
                        fail(cw, "argument %r uses $(%s), which env does not define" % (a, var))
            # In an env value Kubernetes expands $(VAR) only from the entries
            # before it; any other stays the literal text.
            earlier = set()
            for e in env:
                for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(e.get("value", ""))):
                    if var not in earlier:
                        fail(cw, "env %s uses $(%s), which no env entry before it defines "
                                 "(Kubernetes would leave it unexpanded)" % (e.get("name"), var))
                earlier.add(e.get("name"))
            for vm in c.get("volumeMounts") or []:
                if vm.get("name") not in volumes | vcts:
                    fail(cw, "volumeMount %s has no volume" % vm.get("name"))
            res = c.get("resources")
            if not res or not res.get("requests") or not res.get("limits"):
                fail(cw, "needs resources.requests and resources.limits")
            csc = c.get("securityContext") or {}
            non_root = csc.get("runAsNonRoot", psc.get("runAsNonRoot"))
            if non_root is not True:
                fail(cw, "does not set runAsNonRoot: true")
            if csc.get("readOnlyRootFilesystem") is not True:
                fail(cw, "does not set readOnlyRootFilesystem: true")
            if csc.get("allowPrivilegeEscalation") is not False:
                fail(cw, "does not set allowPrivilegeEscalation: false")
            check_program(ctx, cw, c, psc, csc)

    for s in [s for s in ctx.own if s.get("kind") == "Service"]:
        where = ctx.w(s)
        spec = s.get("spec") or {}
        sel = spec.get("selector") or {}
        pods = [pod_spec(o) for o in workloads if selects(sel, pod_spec(o)[1])]
        if not pods:
            fail(where, "selector %s matches no pod template" % sel)
            continue
        for p in spec.get("ports") or []:
            tp = p.get("targetPort", p.get("port"))
            for ps, _labels in pods:
                cports = [cp for c in ps.get("containers") or [] for cp in c.get("ports") or []]
                if isinstance(tp, str):
                    ok = any(cp.get("name") == tp for cp in cports)
                else:
                    ok = any(cp.get("containerPort") == tp for cp in cports)
                if not ok:
                    fail(where, "targetPort %r is not a port of the pods it selects" % tp)
                    break
    for pdb in [p for p in ctx.own if p.get("kind") == "PodDisruptionBudget"]:
        sel = ((pdb.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        if not any(selects(sel, pod_spec(o)[1]) for o in workloads):
            fail(ctx.w(pdb), "selector %s matches no pod template" % sel)


def check_program(ctx, cw, c, psc, csc):
    """FERRY_* variables and flags against the program's usage text; the
    program must be installed in the image."""
    prog = program_of(ctx, c)
    name = os.path.basename(prog) if prog else None
    uses_ferry = any(str(e.get("name", "")).startswith("FERRY_") for e in c.get("env") or [])
    if name not in ctx.programs:
        if uses_ferry:
            fail(cw, "sets FERRY_* variables but runs %r, not a Ferry program" % prog)
        return
    if prog not in ctx.image.installed:
        fail(cw, "runs %s, which the Containerfile does not install (it installs %s)"
             % (prog, sorted(ctx.image.installed)))
    if not is_ferry_image(ctx, str(c.get("image", ""))):
        fail(cw, "runs %s from image %s, not the ferry image" % (name, c.get("image")))
    p = ctx.programs[name]
    if p.path is None:
        fail(cw, "runs %s, but no usage text of it was found in the tree" % name)
        return
    for e in c.get("env") or []:
        n = str(e.get("name", ""))
        if n.startswith("FERRY_") and n not in p.env:
            fail(cw, "env %s is not in %s's usage text (%s)" % (n, name, p.path))
    check_arguments(cw, p, [str(a) for a in c.get("args") or []])
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    if ctx.image.user and uid is not None and str(uid) != ctx.image.user:
        fail(cw, "runAsUser %s differs from the image's USER %s" % (uid, ctx.image.user))
    # Probes that run a Ferry program (ferryctl health): the program is in the
    # image and takes those arguments.
    for pk in PROBES:
        cmd = [str(x) for x in (((c.get(pk) or {}).get("exec") or {}).get("command") or [])]
        if not cmd or os.path.basename(cmd[0]) not in ctx.programs:
            continue
        pw = "%s %s" % (cw, pk)
        if cmd[0] not in ctx.image.installed:
            fail(pw, "runs %s, which the Containerfile does not install (it installs %s)"
                 % (cmd[0], sorted(ctx.image.installed)))
        check_arguments(pw, ctx.programs[os.path.basename(cmd[0])], cmd[1:])
        # The kubelet kills an exec probe after timeoutSeconds (default 1):
        # one that runs with its own --timeout needs more than that.
        if "--timeout" in cmd[:-1]:
            own = float(cmd[cmd.index("--timeout") + 1])
            limit = (c.get(pk) or {}).get("timeoutSeconds", 1)
            if limit <= own:
                fail(pw, "timeoutSeconds %s must exceed the probe's own --timeout %s (and its "
                     "start), or the kubelet kills it first" % (limit, cmd[cmd.index("--timeout") + 1]))


def check_arguments(where, p, args):
    """A program's subcommand (for those that have them) and flags."""
    if p.path is None:
        fail(where, "runs %s, but no usage text of it was found in the tree" % p.name)
        return
    if p.subcommands and (not args or args[0] not in p.subcommands):
        fail(where, "%s needs a subcommand (%s) first" % (p.name, "|".join(sorted(p.subcommands))))
    for a in args:
        if a.startswith("--") and a.split("=")[0] not in p.flags:
            fail(where, "flag %s is not in %s's usage text (%s)" % (a.split("=")[0], p.name, p.path))


def containers_running(ctx, program):
    out = []
    for o in ctx.objs:
        if o.get("kind") not in WORKLOADS:
            continue
        spec, labels = pod_spec(o)
        for c in spec.get("containers") or []:
            prog = program_of(ctx, c)
            if prog and os.path.basename(prog) == program:
                out.append((o, spec, labels, c))
    return out


def service_port(ctx, host, port):
    """The Service named by host (short name or <svc>.<ns>...), if port is its port."""
    svc = ctx.named("Service", host.split(".")[0])
    if svc is None:
        return None, "no Service %s" % host.split(".")[0]
    ports = [p.get("port") for p in (svc.get("spec") or {}).get("ports") or []]
    if port not in ports:
        return None, "Service %s has no port %s (has %s)" % (oname(svc), port, ports)
    return svc, None


def health_services(repo):
    """Service names the coordinator sets in grpc.health.v1.Health."""
    names = set()
    d = os.path.join(repo, "coordinator")
    for f in sorted(os.listdir(d)):
        if f.endswith(".c"):
            with open(os.path.join(d, f), encoding="utf-8") as fh:
                names |= set(re.findall(r'rpc_server_set_serving\([^,]+,\s*"([^"]*)"', fh.read()))
    return names or {""}


def check_coordinator(ctx):
    found = containers_running(ctx, "ferry-coordinator")
    if not found:
        fail(ctx.label, "no workload runs ferry-coordinator")
        return
    for o, spec, labels, c in found:
        where = "%s container %s" % (ctx.w(o), c.get("name"))
        if o["kind"] != "Deployment":
            fail(where, "the coordinator should be a Deployment, is a %s" % o["kind"])
        if (o.get("spec") or {}).get("replicas", 1) < 2:
            fail(where, "needs 2 or more replicas")
        ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
        if ports.get("grpc") != 7400:
            fail(where, "needs containerPort 7400 named grpc (has %s)" % ports)
        served = health_services(ctx.repo)
        for pk in PROBES:
            asked = probe_health_service(c.get(pk) or {})
            if asked is not None and asked not in served:
                fail(where, "%s asks health for service %r; the coordinator serves %s"
                     % (pk, asked, sorted(served)))
        check_coordinator_tls(ctx, where, spec, c)
        check_coordinator_metrics(ctx, where, o, c)
        # Liveness must not follow etcd's health: restarting every replica
        # during an etcd outage cures nothing. The health service "liveness"
        # asks only whether the process serves gRPC (a TCP check passes on
        # one that stopped accepting, which a restart does cure).
        live = c.get("livenessProbe") or {}
        if probe_health_service(live) != "liveness":
            fail(where, "livenessProbe must ask grpc.health.v1 for service \"liveness\" on 7400, "
                 "which does not follow etcd (has %s)" % live)
        env = env_map(c)
        listen = (env.get("FERRY_LISTEN") or {}).get("value")
        if not listen or not re.match(r"^(0\.0\.0\.0|\[::\]):7400$", str(listen)):
            fail(where, "FERRY_LISTEN must be 0.0.0.0:7400 or [::]:7400 (is %r)" % listen)
        check_coordinator_etcd(ctx, where, c)
        check_coordinator_grace(where, spec, c, env)
        check_coordinator_memory(ctx, where, spec, c, env)
        svcs = [s for s in ctx.of_kind("Service")
                if selects((s.get("spec") or {}).get("selector") or {}, labels)]
        if not any(p.get("port") == 7400 and p.get("name") == "grpc"
                   for s in svcs for p in (s.get("spec") or {}).get("ports") or []):
            fail(where, "no Service selects it with a port 7400 named grpc")
        if ctx.expect["guarded"] and not any(
                selects(((p.get("spec") or {}).get("selector") or {}).get("matchLabels") or {},
                        labels) for p in ctx.of_kind("PodDisruptionBudget")):
            fail(where, "no PodDisruptionBudget selects it")


# What the coordinator's exit takes beyond FERRY_GRACE_MS when etcd
# answers at once or not at all (README, --grace-ms): the etcd requests
# still running when the drain ends (5 s, etcd's request timeout), then the
# step the maintenance thread began meanwhile (a health check's two reads
# of 3 s; a page of a view reload or the write probe, 5 s). Not an upper
# bound: a call still running may make several etcd requests in a row,
# bounded only by its own deadline, which check.py cannot know. It writes
# nothing at exit.
COORDINATOR_EXIT_MS = 11000


def check_coordinator_grace(where, spec, c, env):
    """terminationGracePeriodSeconds covers the preStop pause, the drain
    (FERRY_GRACE_MS, 5000 when unset) and the exit's tail (its etcd
    requests in flight): a shorter one SIGKILLs the replica mid-drain, its
    calls cut."""
    grace = coordinator_int(where, c, env, "FERRY_GRACE_MS", 5000,
                            "terminationGracePeriodSeconds")
    if grace is None:
        return
    pause_ms = 0
    cmd = ((((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {})
           .get("command") or [])
    if len(cmd) == 2 and os.path.basename(str(cmd[0])) == "sleep":
        if not re.match(r"^[0-9]+$", str(cmd[1])):
            fail(where, "preStop sleeps %r, not a number of seconds" % cmd[1])
            return
        pause_ms = int(cmd[1]) * 1000
    need_ms = pause_ms + int(grace) + COORDINATOR_EXIT_MS
    have_s = spec.get("terminationGracePeriodSeconds", 30)
    if int(have_s) * 1000 <= need_ms:
        fail(where, "terminationGracePeriodSeconds %s is not above the preStop pause (%d ms) "
             "+ FERRY_GRACE_MS (%s) + %d ms for the exit's etcd requests: the replica is killed "
             "mid-drain" % (have_s, pause_ms, grace, COORDINATOR_EXIT_MS))


# The coordinator's memory at the worst case of its bounds (README,
# --request-memory-mib; deploy/README, "Scale"), in MiB: a baseline
# (threads, gRPC, the heap's slack; measured about 100 MiB: 321 MB with a
# full 224 MiB gRPC quota), the requests calls hold (up to
# FERRY_REQUEST_MEMORY_MIB) and, a pool apart, gRPC's quota for requests
# still arriving or not yet decoded (the same + 32), twice
# FERRY_WATCH_MEMORY_MIB, the memory-backed volumes; then the view and the
# history, which no flag of the coordinator bounds (every record, in every
# replica): the view's only bound is etcd's backend quota (the live records
# are under it), so the limit holds all of it, read from the overlay's etcd
# (--quota-backend-bytes, else etcd's 2 GiB), and the history (the last
# 8192 changes, about 8 MiB at 1 KiB each) beside it.
COORDINATOR_BASELINE_MIB = 100
COORDINATOR_QUOTA_SLACK_MIB = 32
COORDINATOR_HISTORY_MIB = 16
ETCD_DEFAULT_QUOTA = 2 * 2**30
# What a parked Lookup or Claim holds at most (service.c's
# SERVICE_REQUEST_MAX), in KiB.
PARKED_REQUEST_KIB = 16


# The coordinator's settings check.py verifies, by variable: their flag.
COORDINATOR_FLAGS = {
    "FERRY_GRACE_MS": "--grace-ms",
    "FERRY_REQUEST_MEMORY_MIB": "--request-memory-mib",
    "FERRY_WATCH_MEMORY_MIB": "--watch-memory-mib",
    "FERRY_MAX_WAITS": "--max-waits",
}


def coordinator_int(where, c, env, name, default, against):
    """A number the coordinator takes from its flag in the container's
    command or args (--flag value or --flag=value; the flag wins, as in the
    coordinator), else from the variable's literal value in env, else its
    default. None, failing naming it, when it is not a number written out:
    from valueFrom, or possibly from envFrom (a ConfigMap or Secret this
    check does not read), or not digits; a default taken silently there
    passed or failed `against` on a value the coordinator does not use."""
    flag = COORDINATOR_FLAGS[name]
    args = arg_values([str(a) for a in (c.get("command") or [])[1:] + (c.get("args") or [])])
    if flag in args:
        v, src = args[flag], "%s in args" % flag
    elif name in env and "value" not in env[name]:
        fail(where, "%s comes from valueFrom, not a literal; check.py cannot verify %s against "
             "it: write it out in env, or as %s in args" % (name, against, flag))
        return None
    elif name in env:
        v, src = env[name].get("value"), name
    elif c.get("envFrom"):
        fail(where, "%s may come from envFrom, not a literal; check.py cannot verify %s against "
             "it: write it out in env (which wins over envFrom), or as %s in args"
             % (name, against, flag))
        return None
    else:
        v, src = str(default), name
    if not re.match(r"^[0-9]+$", str(v)):
        fail(where, "%s %r is not a number written out; check.py cannot verify %s against it"
             % (src, v, against))
        return None
    return int(v)


def memory_volumes_mib(spec, c):
    """MiB of the memory-backed emptyDirs the container mounts (they count
    against its memory limit); None when one has no sizeLimit."""
    mounted = {vm.get("name") for vm in c.get("volumeMounts") or []}
    total = 0
    for v in spec.get("volumes") or []:
        ed = v.get("emptyDir")
        if v.get("name") in mounted and ed is not None and ed.get("medium") == "Memory":
            size = quantity_bytes(ed.get("sizeLimit"))
            if size is None:
                return None
            total += -(-size // 2**20)  # whole MiB, rounded up
    return total


def etcd_quota_bytes(ctx):
    """The backend quota of the overlay's one etcd StatefulSet (etcd's
    default when --quota-backend-bytes is unset); None when there is not
    exactly one (check_etcd says why) or the quota does not parse."""
    stss = etcd_statefulsets(ctx)
    if len(stss) != 1:
        return None
    ec = (pod_spec(stss[0])[0].get("containers") or [{}])[0]
    eargs = arg_values([str(a) for a in (ec.get("command") or [])[1:] + (ec.get("args") or [])])
    quota = eargs.get("--quota-backend-bytes")
    if quota is None:
        return ETCD_DEFAULT_QUOTA
    return int(quota) if re.match(r"^[0-9]+$", str(quota)) else None


def check_coordinator_memory(ctx, where, spec, c, env):
    """The container's memory limit holds the worst case of the bounds it
    sets (their defaults when unset), the view at etcd's backend quota (its
    only bound) and the history, or the kernel kills the replica before a
    bound can answer RESOURCE_EXHAUSTED, every replica at once as the
    records grow; and FERRY_REQUEST_MEMORY_MIB is above FERRY_MAX_WAITS x
    16 KiB, or parked waits alone refuse the Register they wait for."""
    request = coordinator_int(where, c, env, "FERRY_REQUEST_MEMORY_MIB", 1024, "the memory limit")
    watch = coordinator_int(where, c, env, "FERRY_WATCH_MEMORY_MIB", 256, "the memory limit")
    waits = coordinator_int(where, c, env, "FERRY_MAX_WAITS", 10000, "the memory limit")
    if None in (request, watch, waits):
        return
    if request * 1024 <= waits * PARKED_REQUEST_KIB:
        fail(where, "FERRY_REQUEST_MEMORY_MIB %d is not above FERRY_MAX_WAITS (%d) x %d KiB: "
             "parked waits alone would refuse the Register they wait for; set them together"
             % (request, waits, PARKED_REQUEST_KIB))
    limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
    limit_bytes = quantity_bytes(limit) if limit is not None else None
    volumes = memory_volumes_mib(spec, c)
    if limit_bytes is None:
        fail(where, "memory limit %r does not parse: the coordinator needs one sized for its "
             "bounds" % limit)
        return
    if volumes is None:
        fail(where, "a memory-backed emptyDir without a sizeLimit: it counts against the memory "
             "limit without a bound")
        return
    quota = etcd_quota_bytes(ctx)
    if quota is None:
        return   # check_etcd says why
    # Twice the view: a reload (a watch that fell behind a compaction, every
    # replica at once) reads the new view's pages and builds it while the
    # old one serves (review-s33c M2).
    view = 2 * -(-quota // 2**20)
    # The requests held, gRPC's quota beside them, and the reads' replies,
    # a bound of their own as large (review-s33c H1).
    bounds = (COORDINATOR_BASELINE_MIB + 3 * request + COORDINATOR_QUOTA_SLACK_MIB + 2 * watch
              + volumes)
    if limit_bytes / 2**20 < bounds + view + COORDINATOR_HISTORY_MIB:
        fail(where, "memory limit %s is under %d MiB + %d MiB for the view (twice etcd's backend "
             "quota, its only bound: a reload builds it beside the old) + %d for the history: "
             "%d baseline + 3 x FERRY_REQUEST_MEMORY_MIB "
             "(%d) + %d + 2 x FERRY_WATCH_MEMORY_MIB (%d) + %d of memory-backed volumes; the "
             "kernel kills every replica at once before its bounds answer"
             % (limit, bounds, view, COORDINATOR_HISTORY_MIB, COORDINATOR_BASELINE_MIB, request,
                COORDINATOR_QUOTA_SLACK_MIB, watch, volumes))


def etcd_statefulsets(ctx):
    return [o for o in ctx.of_kind("StatefulSet")
            if any("etcd" in os.path.basename(str((c.get("command") or [c.get("image", "")])[0]))
                   for c in pod_spec(o)[0].get("containers") or [])]


def check_coordinator_etcd(ctx, where, c):
    """FERRY_ETCD lists exactly the overlay's etcd members, each at its own
    name under the headless Service (<pod>.<service>.<namespace>.svc, the
    namespace a $(VAR) of the pod's namespace or written out) on etcd's client
    port, https exactly when TLS is on. The coordinator fails over between
    the endpoints it is given (a frozen member is suspected, the watch moves
    to the next, a write goes to another member); through one Service VIP it
    has nothing to fail over to, its channel pinned by kube-proxy to
    whichever member the connection reached."""
    env = env_map(c)
    etcd = (env.get("FERRY_ETCD") or {}).get("value")
    if not etcd:
        fail(where, "FERRY_ETCD is not set (the coordinator would start a private etcd)")
        return
    scheme = "https" if ctx.expect["tls"] else "http"
    stss = etcd_statefulsets(ctx)
    if len(stss) != 1:
        return   # check_etcd says why
    sts = stss[0]
    name = sts["metadata"]["name"]
    svc_name = str((sts.get("spec") or {}).get("serviceName"))
    namespace = sts["metadata"].get("namespace")
    ec = (pod_spec(sts)[0].get("containers") or [{}])[0]
    eargs = arg_values([str(a) for a in (ec.get("command") or [])[1:] + (ec.get("args") or [])])
    client = parse_url(str(eargs.get("--listen-client-urls", "")))
    client_port = client[2] if client else None
    ns_vars = {k for k, e in env.items()
               if ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
               == "metadata.namespace"}
    form = "%s://%s-N.%s.$(POD_NAMESPACE).svc:%s" % (scheme, name, svc_name, client_port)
    host_re = r"^(?P<pod>[a-z0-9-]+)\.%s\.(?P<ns>\$\([A-Za-z_][A-Za-z0-9_]*\)|[a-z0-9-]+)" \
        r"\.svc(\.cluster\.local)?$" % re.escape(svc_name)
    seen = []
    vip = False
    for url in str(etcd).split(","):
        u = parse_url(url)
        if not u:
            fail(where, "FERRY_ETCD URL %r is not http(s)://host:port" % url)
            continue
        if u[0] != scheme:
            fail(where, "FERRY_ETCD %s: %s, but this overlay has TLS %s"
                 % (url, u[0], "on" if ctx.expect["tls"] else "off"))
        m = re.match(host_re, u[1])
        if not m:
            svc = ctx.named("Service", u[1].split(".")[0])
            if svc is not None and (svc.get("spec") or {}).get("clusterIP") != "None":
                vip = True
                fail(where, "FERRY_ETCD %s names %s, one endpoint: the coordinator's failover "
                     "between etcd members has nothing to fail over to; list every member, "
                     "%s" % (url, oname(svc), form))
            else:
                fail(where, "FERRY_ETCD %s is not an etcd member at its own name under the "
                     "headless Service %s (%s)" % (url, svc_name, form))
            continue
        ns = m.group("ns")
        if ns.startswith("$("):
            if ns[2:-1] not in ns_vars:
                fail(where, "FERRY_ETCD %s: %s is not the pod's namespace (an env entry from "
                     "fieldRef metadata.namespace)" % (url, ns))
        elif ns != namespace:
            fail(where, "FERRY_ETCD %s: namespace %s, but etcd runs in %s" % (url, ns, namespace))
        if u[2] != client_port:
            fail(where, "FERRY_ETCD %s: port %s is not etcd's client port %s (--listen-client-urls)"
                 % (url, u[2], client_port))
        seen.append(m.group("pod"))
    want = ["%s-%d" % (name, i) for i in range(ctx.expect["etcd_members"])]
    for pod in sorted(set(seen)):
        if pod not in want:
            fail(where, "FERRY_ETCD names %s, which is not a member (this overlay runs %s)"
                 % (pod, ", ".join(want)))
        elif seen.count(pod) > 1:
            fail(where, "FERRY_ETCD names member %s %d times" % (pod, seen.count(pod)))
    missing = [pod for pod in want if pod not in seen]
    if missing and not vip:
        fail(where, "FERRY_ETCD misses member(s) %s: it must list every member (%s), or the "
             "coordinator cannot fail over to them" % (", ".join(missing), ", ".join(want)))


def pod_annotations(o):
    """The pod template's annotations (a Pod's own)."""
    md = (o.get("metadata") if o.get("kind") == "Pod"
          else ((o.get("spec") or {}).get("template") or {}).get("metadata")) or {}
    return md.get("annotations") or {}


def check_coordinator_metrics(ctx, where, o, c):
    """FERRY_METRICS_LISTEN (or --metrics-listen in args, which wins) on all
    addresses, on a containerPort named metrics, which the pod's
    prometheus.io/port annotation names; or `off` (README: how an overlay
    turns off its base's metrics), and then no scrape annotation."""
    args = arg_values([str(a) for a in (c.get("command") or [])[1:] + (c.get("args") or [])])
    if "--metrics-listen" in args:
        listen, src = str(args["--metrics-listen"]), "--metrics-listen in args"
    else:
        listen = str((env_map(c).get("FERRY_METRICS_LISTEN") or {}).get("value", ""))
        src = "FERRY_METRICS_LISTEN"
    ann = pod_annotations(o)
    if listen == "off":
        if ann.get("prometheus.io/scrape") == "true":
            fail(where, "%s is off, but the pod template keeps prometheus.io/scrape \"true\": "
                 "Prometheus would scrape a port nothing serves" % src)
        return
    m = re.match(r"^(0\.0\.0\.0|\[::\]):(\d+)$", listen)
    if not m:
        fail(where, "%s must be 0.0.0.0:PORT, [::]:PORT or off (is %r)" % (src, listen))
        return
    port = int(m.group(2))
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
    if ports.get("metrics") != port:
        fail(where, "%s port %d is not the containerPort named metrics (%s)"
             % (src, port, ports))
    if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/port") != str(port) \
            or ann.get("prometheus.io/path") != "/metrics":
        fail(where, "the pod template needs prometheus.io/scrape \"true\", prometheus.io/port "
             "\"%d\" and prometheus.io/path /metrics (has %s)" % (port, ann))


def probe_health_service(probe):
    """The grpc.health.v1 service a probe asks for: a native grpc probe's, or
    `ferryctl health --service S`'s (its default: ferry.v1.Coordinator);
    None for other probes."""
    g = probe.get("grpc")
    if isinstance(g, dict):
        return g.get("service", "")
    cmd = [str(x) for x in ((probe.get("exec") or {}).get("command") or [])]
    if len(cmd) >= 2 and os.path.basename(cmd[0]) == "ferryctl" and cmd[1] == "health":
        return arg_values(cmd[2:]).get("--service", "ferry.v1.Coordinator")
    return None


def secret_dirs(spec, c):
    """Mount paths of the container's Secret volumes."""
    secret_vols = {v.get("name") for v in spec.get("volumes") or [] if v.get("secret")}
    return {vm.get("mountPath", "").rstrip("/") for vm in c.get("volumeMounts") or []
            if vm.get("name") in secret_vols}


def check_tls_files(where, spec, c, names, want):
    """names (FERRY_* variables) all set to files in mounted Secrets when want,
    none set otherwise."""
    env = env_map(c)
    dirs = secret_dirs(spec, c)
    for n in names:
        v = (env.get(n) or {}).get("value")
        if not want:
            if n in env:
                fail(where, "sets %s, but this overlay has TLS off" % n)
        elif not v:
            fail(where, "TLS is on but %s is not set" % n)
        elif os.path.dirname(str(v)) not in dirs:
            fail(where, "%s %s is not in a mounted Secret (%s)" % (n, v, sorted(dirs)))


def check_coordinator_tls(ctx, where, spec, c):
    """Readiness: grpc.health.v1 service "" on 7400; natively in plaintext,
    with `ferryctl health` presenting the coordinator's own files with TLS
    (the native gRPC probe cannot speak TLS)."""
    tls = ctx.expect["tls"]
    check_tls_files(where, spec, c, TLS_ENV, tls)
    check_tls_files(where, spec, c, ETCD_TLS_ENV, tls)
    probe = c.get("readinessProbe") or {}
    if not tls:
        g = probe.get("grpc")
        if not isinstance(g, dict) or g.get("port") != 7400 or g.get("service", "") != "":
            fail(where, "readinessProbe must be a native grpc probe on port 7400, service \"\" "
                 "(has %s)" % probe)
        return
    cmd = [str(x) for x in ((probe.get("exec") or {}).get("command") or [])]
    av = arg_values(cmd[2:])
    env = env_map(c)
    want = {"--coordinator": {"127.0.0.1:7400", "localhost:7400"}, "--service": {""}}
    for flag, var in (("--tls-ca", "FERRY_TLS_CA"), ("--tls-cert", "FERRY_TLS_CERT"),
                      ("--tls-key", "FERRY_TLS_KEY")):
        want[flag] = {(env.get(var) or {}).get("value")}
    if cmd[:2] != ["/usr/local/bin/ferryctl", "health"] or \
            any(av.get(f) not in ok for f, ok in want.items()):
        fail(where, "with TLS, readinessProbe must exec `ferryctl health` on 127.0.0.1:7400, "
             "--service \"\", with the coordinator's own --tls-ca/--tls-cert/--tls-key "
             "(has %s)" % probe)


def check_etcd(ctx):
    stss = etcd_statefulsets(ctx)
    if not stss:
        fail(ctx.label, "no etcd StatefulSet")
        return
    for o in stss:
        where = ctx.w(o)
        spec = o.get("spec") or {}
        name = o["metadata"]["name"]
        n = spec.get("replicas", 1)
        if n != ctx.expect["etcd_members"] or n % 2 == 0:
            fail(where, "replicas must be %d in this overlay (is %r)"
                 % (ctx.expect["etcd_members"], n))
        if spec.get("podManagementPolicy") != "Parallel":
            fail(where, "podManagementPolicy must be Parallel (a lone member never gets ready)")
        svc_name = spec.get("serviceName")
        hl = ctx.named("Service", svc_name) if svc_name else None
        if hl is None:
            fail(where, "serviceName %r names no Service" % svc_name)
        else:
            hs = hl.get("spec") or {}
            if hs.get("clusterIP") != "None":
                fail(ctx.w(hl), "must be headless (clusterIP: None)")
            if hs.get("publishNotReadyAddresses") is not True:
                fail(ctx.w(hl), "needs publishNotReadyAddresses: true (peers resolve before quorum)")
        pspec, _labels = pod_spec(o)
        c = (pspec.get("containers") or [{}])[0]
        args = arg_values([str(a) for a in (c.get("command") or [])[1:] + (c.get("args") or [])])
        env = env_map(c)
        pod_name_var = None
        for k, e in env.items():
            if ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") == "metadata.name":
                pod_name_var = k
        if args.get("--name") != "$(%s)" % pod_name_var:
            fail(where, "--name must be the pod name from the downward API (is %r)"
                 % args.get("--name"))
        peer = parse_url(str(args.get("--listen-peer-urls", "")).replace("0.0.0.0", "any"))
        peer_port = peer[2] if peer else None
        cports = {p.get("containerPort") for p in c.get("ports") or []}
        if peer_port not in cports:
            fail(where, "--listen-peer-urls port %r is not a containerPort" % peer_port)
        host_re = r"^(?P<host>[a-z0-9-]+)\.%s(\.\$\([A-Z_]+\)|\.[a-z0-9-]+)?(\.svc(\.cluster\.local)?)?$" \
            % re.escape(str(svc_name))
        ic = args.get("--initial-cluster")
        if not ic:
            fail(where, "no --initial-cluster")
        else:
            entries = [e.split("=", 1) for e in ic.split(",")]
            if len(entries) != n:
                fail(where, "--initial-cluster has %d members, replicas is %r" % (len(entries), n))
            want = ["%s-%d" % (name, i) for i in range(n if isinstance(n, int) else 0)]
            if [e[0] for e in entries] != want:
                fail(where, "--initial-cluster members %s, want %s" % ([e[0] for e in entries], want))
            for e in entries:
                u = parse_url(e[1]) if len(e) == 2 else None
                m = re.match(host_re, u[1]) if u else None
                if not u or not m or m.group("host") != e[0] or u[2] != peer_port:
                    fail(where, "--initial-cluster entry %s is not %s=http://%s.%s...:%s"
                         % ("=".join(e), e[0], e[0], svc_name, peer_port))
        adv_arg = str(args.get("--initial-advertise-peer-urls", ""))
        adv = parse_url(adv_arg.replace("$(%s)" % pod_name_var, "pod-name"))
        if not re.match(r"^https?://\$\(%s\)\." % re.escape(str(pod_name_var)), adv_arg) or not adv or \
                not re.match(host_re, adv[1]) or adv[2] != peer_port:
            fail(where, "--initial-advertise-peer-urls must be $(%s).%s...:%s (is %r)"
                 % (pod_name_var, svc_name, peer_port, args.get("--initial-advertise-peer-urls")))
        vcts = [(t.get("metadata") or {}).get("name") for t in spec.get("volumeClaimTemplates") or []]
        data_dir = str(args.get("--data-dir", ""))
        mounts = [vm for vm in c.get("volumeMounts") or [] if vm.get("name") in vcts]
        if not vcts or not any(data_dir == vm.get("mountPath") or
                               data_dir.startswith(vm.get("mountPath", "").rstrip("/") + "/")
                               for vm in mounts):
            fail(where, "--data-dir %r is not on a volumeClaimTemplate mount" % data_dir)
        check_etcd_quota(where, spec, c, args)
        check_etcd_compaction(where, args)
        check_etcd_tls(ctx, where, pspec, c, args)
        check_etcd_metrics(where, o, c, args)
        if ctx.expect["tls"]:
            check_readme_etcdctl(ctx, where, o, c, args)
        if not ctx.expect["guarded"]:
            continue
        quorum = n // 2 + 1 if isinstance(n, int) else None
        pdbs = [p for p in ctx.of_kind("PodDisruptionBudget")
                if selects(((p.get("spec") or {}).get("selector") or {}).get("matchLabels") or {},
                           pod_spec(o)[1])]
        if not pdbs:
            fail(where, "no PodDisruptionBudget keeps its quorum")
        for p in pdbs:
            ps = p.get("spec") or {}
            if ps.get("minAvailable") != quorum and ps.get("maxUnavailable") != (n - quorum):
                fail(ctx.w(p), "must keep quorum: minAvailable %s or maxUnavailable %s"
                     % (quorum, n - quorum))


def quantity_bytes(q):
    """A Kubernetes storage quantity ("4Gi", "500M", "1073741824") in bytes;
    None when it does not parse."""
    m = re.match(r"^([0-9]+)(Ki|Mi|Gi|Ti|k|M|G|T)?$", str(q))
    if not m:
        return None
    units = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    return int(m.group(1)) * units[m.group(2)]


def check_etcd_quota(where, spec, c, args):
    """The member's volume holds at least twice its backend quota (etcd's
    default, 2 GiB, when --quota-backend-bytes is unset): the database, the
    WAL and a snapshot beside them must not fill the disk before the
    quota's clean NOSPACE alarm (a failed WAL write stops the member). So
    does its memory limit: near the quota it holds the mmapped database's
    pages, the key index and the raft entries since the last snapshot, and
    a member killed before NOSPACE takes its peers' quorum with it (they
    grow together)."""
    quota = int(args.get("--quota-backend-bytes") or 2 * 2**30)
    limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
    limit_bytes = quantity_bytes(limit) if limit is not None else None
    if limit_bytes is None:
        fail(where, "memory limit %r does not parse" % limit)
    elif limit_bytes < 2 * quota:
        fail(where, "memory limit %s is under twice the backend quota (%d bytes): a member may "
             "be killed before etcd's NOSPACE alarm" % (limit, quota))
    for t in spec.get("volumeClaimTemplates") or []:
        req = (((t.get("spec") or {}).get("resources") or {}).get("requests") or {})
        size = quantity_bytes(req.get("storage"))
        if size is None:
            fail(where, "volumeClaimTemplate %r: storage %r does not parse"
                 % ((t.get("metadata") or {}).get("name"), req.get("storage")))
        elif size < 2 * quota:
            fail(where, "volumeClaimTemplate %r: %s is under twice the backend quota (%d bytes): "
                 "the disk fills before etcd's NOSPACE alarm" %
                 ((t.get("metadata") or {}).get("name"), req.get("storage"), quota))


def check_etcd_tls(ctx, where, spec, c, args):
    """Every URL https with TLS on (http off), except the metrics URL the
    probes use; with TLS, client and peer certificates required, and the
    files in a mounted Secret."""
    tls = ctx.expect["tls"]
    scheme = "https" if tls else "http"
    for flag in ("--listen-client-urls", "--advertise-client-urls", "--listen-peer-urls",
                 "--initial-advertise-peer-urls"):
        v = str(args.get(flag, ""))
        if not v.startswith(scheme + "://"):
            fail(where, "%s %r is not %s://, but this overlay has TLS %s"
                 % (flag, v, scheme, "on" if tls else "off"))
    for e in str(args.get("--initial-cluster", "")).split(","):
        if "=" in e and not e.split("=", 1)[1].startswith(scheme + "://"):
            fail(where, "--initial-cluster entry %s is not %s://" % (e, scheme))
    files = ("--trusted-ca-file", "--cert-file", "--key-file", "--peer-trusted-ca-file",
             "--peer-cert-file", "--peer-key-file")
    if not tls:
        for f in files + ("--client-cert-auth", "--peer-client-cert-auth"):
            if f in args:
                fail(where, "sets %s, but this overlay has TLS off" % f)
        return
    for f in ("--client-cert-auth", "--peer-client-cert-auth"):
        if args.get(f) not in ("true", None) or f not in args:
            fail(where, "TLS is on but %s=true is not set" % f)
    dirs = secret_dirs(spec, c)
    for f in files:
        v = args.get(f)
        if not v or os.path.dirname(str(v)) not in dirs:
            fail(where, "%s %r is not a file in a mounted Secret (%s)" % (f, v, sorted(dirs)))


def go_duration_s(text):
    """etcd's --auto-compaction-retention in seconds: a Go duration ("5m",
    "1h30m", "90s") or a bare number of hours ("1"); None when it does not
    parse."""
    text = str(text)
    if re.match(r"^[0-9]+$", text):
        return int(text) * 3600
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)(h|ms|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    unit = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * unit[u] for n, u in parts)


COMPACTION_RETENTION_MIN_S = 60
COMPACTION_RETENTION_MAX_S = 600


def check_etcd_compaction(where, args):
    """History is compacted, periodically, keeping 1 to 10 minutes: a
    Ferry cycle writes its record three times, and etcd keeps one to two
    retentions of those revisions, so the history, not the records, fills
    the quota (an hour's filled 1 GiB at 73 cycles a second;
    deploy/README, "Scale"); under a minute, a replica whose watch was
    away for an etcd election reloads its whole view."""
    mode = args.get("--auto-compaction-mode", "periodic")
    retention = args.get("--auto-compaction-retention")
    if mode != "periodic":
        fail(where, "--auto-compaction-mode must be periodic (is %r)" % mode)
        return
    seconds = go_duration_s(retention) if retention is not None else None
    if not seconds or not COMPACTION_RETENTION_MIN_S <= seconds <= COMPACTION_RETENTION_MAX_S:
        fail(where, "--auto-compaction-retention must be a duration from 1m to 10m (is %r): etcd "
             "keeps one to two retentions of history, every Register, Claim and Complete writes "
             "its record again, and an hour's filled a 1 GiB quota at 73 operations a second; "
             "under a minute, a replica whose watch was away for an etcd election reloads its "
             "view (deploy/README, \"Scale\")" % retention)


def check_etcd_metrics(where, o, c, args):
    """etcd serves /metrics on --listen-metrics-urls, plaintext (Prometheus,
    like the probes, presents no client certificate); the pod's
    prometheus.io/* annotations name that port, a containerPort."""
    url = str(args.get("--listen-metrics-urls", ""))
    u = parse_url(url)
    if not u or u[0] != "http":
        fail(where, "--listen-metrics-urls must be one http:// URL (plaintext: Prometheus and "
             "the probes present no client certificate; is %r)" % url)
        return
    ann = pod_annotations(o)
    if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/path") != "/metrics" \
            or "prometheus.io/port" not in ann:
        fail(where, "the pod template needs prometheus.io/scrape \"true\", prometheus.io/port "
             "\"%d\" and prometheus.io/path /metrics (has %s)" % (u[2], ann))
        return
    port = str(ann["prometheus.io/port"])
    cports = sorted(p.get("containerPort") for p in c.get("ports") or [])
    if not port.isdigit() or int(port) not in cports:
        fail(where, "prometheus.io/port %r is not a containerPort of etcd (%s)" % (port, cports))
    if port != str(u[2]):
        fail(where, "prometheus.io/port %r is not the --listen-metrics-urls port %d, where etcd "
             "serves /metrics" % (port, u[2]))


def readme_commands(repo, program):
    """The commands that run `program` in deploy/README.md, from `program`
    on: in fenced code blocks (continuation lines joined) and in inline
    code spans. A span that only names a subcommand (`etcdctl member add`)
    is no command."""
    path = os.path.join(repo, "deploy", "README.md")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        text = f.read()
    fence = re.compile(r"^[ \t]*```[a-z]*\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)
    lines = [line for block in fence.findall(text)
             for line in block.replace("\\\n", " ").splitlines()]
    lines += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", fence.sub("", text))]
    out = []
    for line in lines:
        if program not in line:
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as e:
            fail("deploy/README.md", "`%s`: %s" % (line.strip(), e))
            continue
        if program not in words:
            continue
        cmd = words[words.index(program):]
        if len(cmd) > 3 or any(w.startswith("-") for w in cmd[1:]):
            out.append(cmd)
    return out


def check_readme_etcdctl(ctx, where, o, c, args):
    """With TLS on, etcd answers only https with a client certificate, and
    its certificate names members, not localhost: each etcdctl command the
    README gives must name a member's endpoint as --advertise-client-urls
    does and the CA, certificate and key the etcd container mounts."""
    ns = str((o.get("metadata") or {}).get("namespace", ""))
    member = re.escape(str(args.get("--advertise-client-urls", "")))
    for k, e in env_map(c).items():
        path = ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        value = {"metadata.name": r"%s-\d+" % re.escape(o["metadata"]["name"]),
                 "metadata.namespace": re.escape(ns)}.get(path)
        if value is not None:
            member = member.replace(re.escape("$(%s)" % k), value)
    want = {"--cacert": args.get("--trusted-ca-file"), "--cert": args.get("--cert-file"),
            "--key": args.get("--key-file")}
    for cmd in readme_commands(ctx.repo, "etcdctl"):
        a = arg_values(cmd[1:])
        shown = " ".join(cmd)
        endpoints = str(a.get("--endpoints") or "").split(",")
        if not all(re.match("^%s$" % member, e) for e in endpoints):
            fail("deploy/README.md", "`%s`: --endpoints must be a member's https URL, as %s's "
                 "--advertise-client-urls %s (its certificate names no localhost)"
                 % (shown, where, args.get("--advertise-client-urls")))
        for flag, path in sorted(want.items()):
            if a.get(flag) != path:
                fail("deploy/README.md", "`%s`: %s must be %s, the file %s mounts"
                     % (shown, flag, path, where))
        if "--peer-urls" in a and not str(a["--peer-urls"]).startswith("https://"):
            fail("deploy/README.md", "`%s`: --peer-urls must be https:// (%s)" % (shown, where))


def port_text(port):
    """A port as check_policies names it; None: every port."""
    return "every port" if port is None else "port %d" % port


def rule_opens(rule, port):
    """Whether an ingress rule lets in port (None: any port at all). A rule
    without ports, or an entry without a port, opens every port; an entry
    with endPort a range; a named port is taken to open it (it names a
    containerPort this check does not resolve)."""
    entries = rule.get("ports") or []
    if not entries or port is None:
        return True
    for q in entries:
        p = q.get("port")
        if p is None or isinstance(p, str):
            return True
        if p == port or (q.get("endPort") is not None and p <= port <= int(q["endPort"])):
            return True
    return False


def rule_opens_every_port(rule):
    return not rule.get("ports") or any(q.get("port") is None for q in rule["ports"])


def check_policies(ctx):
    """Only workers reach the coordinators' port, only coordinators etcd's
    client port, only etcd members its peer port, and only workers of their
    own namespace the workers, on any port (UCX picks its ports, and a peer
    that reaches a worker can read and write its memory: README.md, "The
    data plane trusts its peers"). Each target's pods must be
    selected by a NetworkPolicy with Ingress; every peer of every rule that
    opens the port (for the workers: any port) must select only the allowed
    pods (among the manifests' pod templates), and some rule must let them
    in (for the workers: on every port)."""
    pods = [(o, pod_spec(o)[1]) for o in ctx.objs if o.get("kind") in WORKLOADS]

    def labels_of(program):
        return [l for _o, _s, l, _c in containers_running(ctx, program)]

    etcd_labels = [pod_spec(o)[1] for o in ctx.of_kind("StatefulSet")
                   if o["metadata"]["name"] == "etcd"]
    rules = [("the coordinators", labels_of("ferry-coordinator"), 7400,
              labels_of("ferry-worker"), "workers"),
             ("etcd", etcd_labels, 2379, labels_of("ferry-coordinator"), "coordinators"),
             ("etcd", etcd_labels, 2380, etcd_labels, "etcd members"),
             ("the workers", labels_of("ferry-worker"), None, labels_of("ferry-worker"),
              "workers")]
    for target, target_labels, port, allowed, who in rules:
        if not target_labels:
            continue
        policies = [p for p in ctx.of_kind("NetworkPolicy")
                    if any(selects(((p.get("spec") or {}).get("podSelector") or {})
                                   .get("matchLabels") or {}, l) for l in target_labels)
                    and "Ingress" in ((p.get("spec") or {}).get("policyTypes") or [])]
        if not policies:
            fail(ctx.label, "no NetworkPolicy restricts who reaches %s" % target)
            continue
        admitted = False
        for p in policies:
            for rule in (p.get("spec") or {}).get("ingress") or []:
                if not rule_opens(rule, port):
                    continue
                peers = rule.get("from") or []
                if not peers:
                    fail(ctx.w(p), "lets anyone reach %s of %s" % (port_text(port), target))
                for peer in peers:
                    sel = (peer.get("podSelector") or {}).get("matchLabels") or {}
                    ns = peer.get("namespaceSelector")
                    # Workers may be in any namespace for the coordinators'
                    # port; for the workers' own, only in namespaces a
                    # selector names (not {}: any tenant can label a pod);
                    # the others' peers are pods of this one.
                    ok = set(peer) == {"podSelector"} or (
                        set(peer) == {"podSelector", "namespaceSelector"} and
                        (port == 7400 or (port is None and ns and
                                          (ns.get("matchLabels") or ns.get("matchExpressions")))))
                    if not ok or not sel:
                        fail(ctx.w(p), "%s of %s: peer %s is not a pod selector of %s"
                             % (port_text(port), target, peer, who))
                        continue
                    strangers = [oname(o) for o, l in pods
                                 if selects(sel, l) and l not in allowed]
                    if strangers:
                        fail(ctx.w(p), "%s of %s: %s also lets in %s"
                             % (port_text(port), target, sel, strangers))
                    admitted |= any(selects(sel, l) for l in allowed) and \
                        (port is not None or rule_opens_every_port(rule))
        if not admitted:
            fail(ctx.label, "no NetworkPolicy lets %s reach %s of %s"
                 % (who, port_text(port), target))
    # The port a pod's prometheus.io/port names must be let in (from anywhere:
    # where Prometheus runs is the operator's), or every scrape fails.
    for o, l in pods:
        ann = pod_annotations(o)
        port = str(ann.get("prometheus.io/port", ""))
        if ann.get("prometheus.io/scrape") != "true" or not port.isdigit():
            continue
        policies = [p for p in ctx.of_kind("NetworkPolicy")
                    if selects(((p.get("spec") or {}).get("podSelector") or {})
                               .get("matchLabels") or {}, l)
                    and "Ingress" in ((p.get("spec") or {}).get("policyTypes") or [])]
        if policies and not any(
                not rule.get("ports") or int(port) in [q.get("port") for q in rule["ports"]]
                for p in policies for rule in (p.get("spec") or {}).get("ingress") or []):
            fail(ctx.w(o), "no NetworkPolicy lets Prometheus reach port %s, which its "
                 "prometheus.io/port names: every scrape would fail" % port)


def check_workers(ctx):
    """An example's workers, against its overlay's coordinators."""
    found = containers_running(ctx, "ferry-worker")
    if not found:
        fail(ctx.label, "no worker example runs ferry-worker")
        return
    coordinator_images = sorted({str(c.get("image")) for _o, _s, _l, c
                                 in containers_running(ctx, "ferry-coordinator")})
    sides = {}
    for o, _spec, _labels, c in found:
        where = "%s container %s" % (ctx.w(o), c.get("name"))
        env = env_map(c)
        tok = env.get("FERRY_TOKEN")
        if not tok or not ((tok.get("valueFrom") or {}).get("secretKeyRef")):
            fail(where, "FERRY_TOKEN must come from a Secret (secretKeyRef)")
        coord = str((env.get("FERRY_COORDINATOR") or {}).get("value", ""))
        m = re.match(r"^([a-z0-9.-]+):(\d+)$", coord)
        if not m:
            fail(where, "FERRY_COORDINATOR must be <service>:7400 (is %r)" % coord)
        else:
            svc, why = service_port(ctx, m.group(1), int(m.group(2)))
            if svc is None:
                fail(where, "FERRY_COORDINATOR %s: %s" % (coord, why))
            elif int(m.group(2)) != 7400:
                fail(where, "FERRY_COORDINATOR %s: not port 7400" % coord)
            elif not any(selects((svc.get("spec") or {}).get("selector") or {}, l)
                         for _o, _s, l, _c in containers_running(ctx, "ferry-coordinator")):
                fail(where, "FERRY_COORDINATOR %s: %s does not select the coordinators"
                     % (coord, oname(svc)))
        check_tls_files(where, spec_of(o), c, TLS_ENV, ctx.expect["tls"])
        if coordinator_images and str(c.get("image")) not in coordinator_images:
            fail(where, "image %s is not the one the coordinators run (%s): give the example's "
                 "kustomization.yaml the base's images: entry" % (c.get("image"),
                                                                 ", ".join(coordinator_images)))
        if not (env.get("UCX_TLS") or {}).get("value"):
            note("%s: UCX_TLS not set; pods need RDMA devices" % where)
        args = [str(a) for a in c.get("args") or []]
        if args:
            av = arg_values(args[1:])
            sides.setdefault(args[0], []).append((where, av.get("--request-id"), av.get("--size")))
    for r in sides.get("recv", []):
        if not any(s[1:] == r[1:] for s in sides.get("send", [])):
            fail(r[0], "no send example with the same --request-id and --size %s" % (r[1:],))
    if "recv" not in sides or "send" not in sides:
        fail(ctx.label, "the worker example needs both a recv and a send (has %s)" % sorted(sides))


def check_overlay_contents(label, objs):
    """An overlay is re-applied as it stands (an upgrade changes images: and
    applies it): a Secret with values it shipped would overwrite the value
    the operator set (stringData and data replace the live ones), and a Job
    cannot be changed (its pod template is immutable), so the apply fails
    while the Job exists and reruns it once its TTL removed it."""
    for o in objs:
        where = "%s %s" % (label, oname(o))
        if o.get("kind") == "Secret" and (o.get("data") or o.get("stringData")):
            fail(where, "an overlay must not ship Secret values (re-applying it overwrites the "
                 "operator's); put it in deploy/k8s/examples")
        elif o.get("kind") == "Job":
            fail(where, "an overlay must not ship Jobs (Jobs are immutable: while one exists an "
                 "upgrade's apply fails, once it is gone every apply reruns it); put it in "
                 "deploy/k8s/examples")


def check_example_overlap(ctx, overlay_label, overlay_objs):
    """An example adds to its overlay: applying it must not replace (or
    later fight over) an object the overlay manages."""
    def key(o):
        md = o.get("metadata") or {}
        return (o.get("kind"), md.get("namespace"), md.get("name"))
    theirs = {key(o) for o in overlay_objs}
    for o in ctx.own:
        if key(o) in theirs:
            fail(ctx.w(o), "%s has it too: applying the example would replace the overlay's"
                 % overlay_label)


def check_kustomization(base, kust):
    where = "deploy/k8s/base/kustomization.yaml"
    if not kust:
        fail(where, "missing or empty")
        return
    if kust.get("kind") != "Kustomization" or \
            not str(kust.get("apiVersion", "")).startswith("kustomize.config.k8s.io/"):
        fail(where, "needs apiVersion kustomize.config.k8s.io/v1beta1 and kind Kustomization")
    if not kust.get("namespace"):
        fail(where, "sets no namespace")
    listed = [str(r) for r in kust.get("resources") or []]
    files = sorted(f for f in os.listdir(base)
                   if f.endswith((".yaml", ".yml")) and f not in
                   ("kustomization.yaml", "kustomization.yml"))
    for f in files:
        if f not in listed:
            fail(where, "resources does not list %s" % f)
    for r in listed:
        if not os.path.exists(os.path.join(base, r)):
            fail(where, "resources lists %s, which does not exist" % r)
    if len(set(listed)) != len(listed):
        fail(where, "resources lists a file twice")


SKIP_CODE = 77  # CTest's SKIP_RETURN_CODE for deploy_check


def kubectl_unusable(kubectl):
    """Why `kubectl` cannot render the overlays (missing, or older than 1.22,
    which lacks kustomize's `labels:`), or None when it can."""
    if shutil.which(kubectl) is None:
        return "no %s on PATH" % kubectl
    r = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True,
                       text=True)
    try:
        minor = int(re.sub(r"\D.*", "", json.loads(r.stdout)["clientVersion"]["minor"]))
    except (ValueError, KeyError, TypeError):
        return "%s version --client did not say its version" % kubectl
    return None if minor >= 22 else "%s is 1.%d" % (kubectl, minor)


def render(kubectl, path, label):
    """The objects `kubectl kustomize path` renders to, or [] (failed)."""
    r = subprocess.run([kubectl, "kustomize", path], capture_output=True, text=True)
    if r.returncode != 0:
        fail(label, "kubectl kustomize failed: %s" % r.stderr.strip())
        return []
    docs = []
    try:
        docs = [d for d in yaml.load_all(r.stdout, Loader=StrictLoader) if d is not None]
    except yaml.YAMLError as e:
        fail(label, "the rendered YAML does not parse: %s" % e)
    return [d for d in docs if isinstance(d, dict)]


def validate_schemas(repo, rendered):
    """Every rendered object against the Kubernetes API schemas
    (deploy/validate.mjs, npm kubernetes-models)."""
    node = shutil.which("node")
    if node is None:
        fail("deploy/validate.mjs", "no node on PATH (scripts/install-deps.sh installs it)")
        return
    if not os.path.isdir(os.path.join(repo, "node_modules", "kubernetes-models")):
        fail("deploy/validate.mjs", "no node_modules/kubernetes-models: run scripts/install-deps.sh")
        return
    r = subprocess.run([node, os.path.join(repo, "deploy", "validate.mjs")],
                       input=json.dumps(rendered), capture_output=True, text=True,
                       env=dict(os.environ, FERRY_SOURCE_DIR=repo))
    for line in r.stdout.splitlines():
        fail("schema", line)
    if r.returncode != 0 and not r.stdout.strip():
        fail("deploy/validate.mjs", "failed: %s" % r.stderr.strip())
    elif r.returncode == 0:
        note(r.stderr.strip())


# ---- alert rules ----------------------------------------------------------

def check_alert_rules(deploy):
    """The rules pass `promtool check rules` and their unit tests `promtool
    test rules` (Debian's prometheus, from scripts/install-deps.sh)."""
    where = "deploy/prometheus"
    promtool = shutil.which("promtool")
    if promtool is None:
        fail(where, "no promtool on PATH (scripts/install-deps.sh installs prometheus)")
        return
    for args in (["check", "rules", "ferry-rules.yaml"],
                 ["test", "rules", "ferry-rules-test.yaml"]):
        r = subprocess.run([promtool, *args], cwd=os.path.join(deploy, "prometheus"),
                           capture_output=True, text=True)
        if r.returncode != 0:
            fail(where, "promtool %s failed:\n%s" % (" ".join(args), (r.stdout + r.stderr).strip()))


def spec_of(o):
    return pod_spec(o)[0]


def check_memory_requests(ctx):
    """The memory the overlay's pods request together, each Deployment's
    maxSurge pod (1 when unset) included, fits the overlay's budget: a pod
    that does not fit stays Pending."""
    budget = ctx.expect.get("requests_mib")
    if budget is None:
        return
    total = 0
    for o in ctx.objs:
        if o.get("kind") not in WORKLOADS:
            continue
        spec = o.get("spec") or {}
        pods = spec.get("replicas", 1) if o["kind"] in ("Deployment", "StatefulSet") else 1
        if o["kind"] == "Deployment":
            surge = (((spec.get("strategy") or {}).get("rollingUpdate") or {})
                     .get("maxSurge", 1))
            pods += surge if isinstance(surge, int) else 1
        for c in pod_spec(o)[0].get("containers") or []:
            req = ((c.get("resources") or {}).get("requests") or {}).get("memory")
            size = quantity_bytes(req) if req is not None else 0
            total += pods * -(-(size or 0) // 2**20)
    if total > budget:
        fail(ctx.label, "its pods request %d MiB of memory together (a rollout's surge pod "
             "included), over the %d MiB it must fit in (a small node; patch the requests down, "
             "the limits may stay)" % (total, budget))


def run_object_checks(ctx):
    """An overlay's own checks (its workers are in its examples)."""
    check_overlay_contents(ctx.label, ctx.objs)
    check_generic(ctx)
    check_coordinator(ctx)
    check_etcd(ctx)
    check_memory_requests(ctx)
    if not ctx.expect["guarded"] and (ctx.of_kind("NetworkPolicy") or
                                      ctx.of_kind("PodDisruptionBudget")):
        note("%s has NetworkPolicies or PodDisruptionBudgets it does not need" % ctx.label)


def run_example_checks(ctx, overlay_label, overlay_objs):
    """An example's objects, with its overlay's to resolve against: wiring
    (reported for the example's objects only) and the workers."""
    check_example_overlap(ctx, overlay_label, overlay_objs)
    check_generic(ctx)
    check_workers(ctx)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True)
    ap.add_argument("--build")
    a = ap.parse_args()
    repo = os.path.abspath(a.repo)
    deploy = os.path.join(repo, "deploy")
    k8s = os.path.join(deploy, "k8s")

    programs = {}
    for prog in ("ferry-coordinator", "ferry-worker", "ferryctl"):
        path, text = find_usage_source(repo, prog)
        programs[prog] = Program(prog, os.path.relpath(path, repo) if path else None, text)
    if programs["ferry-coordinator"].path is None:
        fail("coordinator/config.c", "no usage text found")

    image = check_containerfile(repo, deploy)
    check_runtime_packages(image, a.build, "deploy/Containerfile")
    check_alert_rules(deploy)

    base = os.path.join(k8s, "base")
    kusts = load_yaml_file(os.path.join(base, "kustomization.yaml"),
                           "deploy/k8s/base/kustomization.yaml") \
        if os.path.isfile(os.path.join(base, "kustomization.yaml")) else []
    kust = kusts[0] if kusts else None
    check_kustomization(base, kust)

    kubectl = os.environ.get("KUBECTL") or "kubectl"
    overlays_dir = os.path.join(k8s, "overlays")
    found = sorted(os.listdir(overlays_dir)) if os.path.isdir(overlays_dir) else []
    for name in sorted(set(found) ^ set(OVERLAYS)):
        fail("deploy/k8s/overlays", "overlay %s is %s" % (
            name, "not one check.py knows (OVERLAYS)" if name in found else "missing"))
    examples_dir = os.path.join(k8s, "examples")
    examples = sorted(d for d in os.listdir(examples_dir)
                      if os.path.isdir(os.path.join(examples_dir, d))) \
        if os.path.isdir(examples_dir) else []
    for name in sorted(set(examples) ^ set(EXAMPLES)):
        fail("deploy/k8s/examples", "example %s is %s" % (
            name, "not one check.py knows (EXAMPLES)" if name in examples else "missing"))
    rendered = {}
    shown = {}    # label in rendered -> how the ok line names it
    why = kubectl_unusable(kubectl)
    if why is not None:
        # Not a defect of the manifests: the machine lacks the renderer.
        # Everything else has been checked; say so and exit SKIP_CODE.
        for e in ERRORS:
            print("deploy/check: FAIL %s" % e, file=sys.stderr)
        if ERRORS:
            return 1
        print("deploy/check: SKIP rendering and schema validation: %s. kubectl >= 1.22 renders "
              "these kustomizations (Debian 12's kubernetes-client is 1.20; install kubectl "
              "from pkgs.k8s.io)" % why)
        return SKIP_CODE
    else:
        for name in sorted(set(found) & set(OVERLAYS)):
            label = "overlays/" + name
            rendered[label] = render(kubectl, os.path.join(overlays_dir, name), label)
            shown[label] = label
            run_object_checks(Ctx(repo, rendered[label], label, kust, image, programs,
                                  OVERLAYS[name]))
        # Each example with the overlay it goes with; the workers the
        # guarded overlays' NetworkPolicies admit are in their examples.
        with_examples = {}
        for name in sorted(set(examples) & set(EXAMPLES)):
            label = "examples/" + name
            overlay = "overlays/" + EXAMPLES[name]
            if overlay not in rendered:
                continue
            rendered[label] = render(kubectl, os.path.join(examples_dir, name), label)
            shown[label] = "%s (with %s)" % (label, overlay)
            run_example_checks(Ctx(repo, rendered[overlay] + rendered[label], shown[label], kust,
                                   image, programs, OVERLAYS[EXAMPLES[name]], own=rendered[label]),
                               overlay, rendered[overlay])
            with_examples.setdefault(overlay, list(rendered[overlay]))
            with_examples[overlay] += rendered[label]
        for name in sorted(set(found) & set(OVERLAYS)):
            label = "overlays/" + name
            if OVERLAYS[name]["guarded"]:
                check_policies(Ctx(repo, with_examples.get(label, rendered[label]), label, kust,
                                   image, programs, OVERLAYS[name]))
        validate_schemas(repo, rendered)

    for n in NOTES:
        print("deploy/check: note: %s" % n)
    if ERRORS:
        for e in ERRORS:
            print("deploy/check: FAIL %s" % e, file=sys.stderr)
        print("deploy/check: %d problem(s)" % len(ERRORS), file=sys.stderr)
        return 1
    print("deploy/check: ok (%s, rendered with kubectl kustomize and validated against the "
          "Kubernetes API schemas)" % ", ".join("%s: %d objects" % (shown[k], len(v))
                                                for k, v in rendered.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
