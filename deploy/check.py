#!/usr/bin/python3
"""deploy/check.py: the checks behind deploy/check.sh (run that, not this).

Checks deploy/k8s/*.yaml and deploy/Containerfile without a cluster:
  manifests   every document parses; apiVersion/kind are known; metadata.name is
              a DNS label; containers, probes, ports, env and security contexts
              use only real field names; every container has an image with a tag
              (after the kustomization's images); Services, PDBs and selectors
              match pods; named ports exist; Secret references resolve; every
              container runs as non-root with a read-only root filesystem and
              has resources.
  coordinator Deployment with 2+ replicas; port 7400 named grpc; readiness is
              a native gRPC probe on 7400, service "", liveness a tcpSocket
              probe on 7400 (any gRPC
              probe asks for a service the coordinator serves); a Service
              port 7400 named grpc; FERRY_LISTEN on 7400 on all addresses;
              FERRY_ETCD URLs name a Service that selects etcd, on its port;
              a PDB selects it.
  FERRY_*     every FERRY_* variable and --flag a container uses appears in the
              usage text of the program it runs (coordinator/config.c,
              ferry-worker's usage under worker/).
  etcd        odd replicas >= 3; --initial-cluster lists exactly etcd-0..N-1 at
              their headless-Service DNS names on the peer port; the headless
              Service exists (clusterIP None, publishNotReadyAddresses);
              podManagementPolicy Parallel; data on a volumeClaimTemplate; a PDB
              keeping quorum.
  workers     FERRY_TOKEN comes from a Secret; FERRY_COORDINATOR names the
              coordinator Service port; a recv and a send agree on request ID
              and size.
  kustomize   resources lists exactly the manifests in deploy/k8s; a namespace
              is set; with --rendered (kubectl kustomize output) the rendered
              objects pass the same checks and carry that namespace.
  image       every COPY/ADD source exists in the repository; FROM is Debian
              12; the build stage runs scripts/install-deps.sh and a Release
              cmake build with tests and benchmarks off; build-tree paths match
              CMake targets; a numeric non-root USER equal to the pods'
              runAsUser; ENTRYPOINT and the commands the manifests run are
              installed; runtime packages exist (apt-cache) and, with --build,
              cover every library the built binaries link directly.
"""
import argparse
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


# ---- field tables (Kubernetes 1.24+ core/v1 and friends) -------------------

KNOWN_KINDS = {
    ("v1", "Namespace"), ("v1", "Service"), ("v1", "Secret"), ("v1", "ConfigMap"),
    ("v1", "ServiceAccount"), ("v1", "Pod"), ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"), ("batch/v1", "Job"), ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
}
CLUSTER_SCOPED = {"Namespace"}
WORKLOADS = {"Deployment", "StatefulSet", "Job", "Pod"}

CONTAINER_KEYS = {
    "name", "image", "command", "args", "workingDir", "ports", "envFrom", "env",
    "resources", "resizePolicy", "restartPolicy", "volumeMounts", "volumeDevices",
    "livenessProbe", "readinessProbe", "startupProbe", "lifecycle",
    "terminationMessagePath", "terminationMessagePolicy", "imagePullPolicy",
    "securityContext", "stdin", "stdinOnce", "tty",
}
PROBE_KEYS = {
    "exec", "httpGet", "tcpSocket", "grpc", "initialDelaySeconds", "timeoutSeconds",
    "periodSeconds", "successThreshold", "failureThreshold", "terminationGracePeriodSeconds",
}
PROBE_HANDLERS = {"exec", "httpGet", "tcpSocket", "grpc"}
GRPC_ACTION_KEYS = {"port", "service"}
PORT_KEYS = {"name", "containerPort", "protocol", "hostPort", "hostIP"}
ENV_KEYS = {"name", "value", "valueFrom"}
RESOURCE_KEYS = {"requests", "limits", "claims"}
CONTAINER_SC_KEYS = {
    "capabilities", "privileged", "seLinuxOptions", "windowsOptions", "runAsUser",
    "runAsGroup", "runAsNonRoot", "readOnlyRootFilesystem", "allowPrivilegeEscalation",
    "procMount", "seccompProfile", "appArmorProfile",
}
POD_SC_KEYS = {
    "seLinuxOptions", "windowsOptions", "runAsUser", "runAsGroup", "runAsNonRoot",
    "supplementalGroups", "supplementalGroupsPolicy", "fsGroup", "sysctls",
    "fsGroupChangePolicy", "seccompProfile", "appArmorProfile", "seLinuxChangePolicy",
}
POD_SPEC_KEYS = {
    "volumes", "initContainers", "containers", "ephemeralContainers", "restartPolicy",
    "terminationGracePeriodSeconds", "activeDeadlineSeconds", "dnsPolicy", "nodeSelector",
    "serviceAccountName", "serviceAccount", "automountServiceAccountToken", "nodeName",
    "hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace", "securityContext",
    "imagePullSecrets", "hostname", "subdomain", "affinity", "schedulerName", "tolerations",
    "hostAliases", "priorityClassName", "priority", "dnsConfig", "readinessGates",
    "runtimeClassName", "enableServiceLinks", "preemptionPolicy", "overhead",
    "topologySpreadConstraints", "setHostnameAsFQDN", "os", "hostUsers", "schedulingGates",
    "resourceClaims", "resources",
}
SERVICE_PORT_KEYS = {"name", "protocol", "appProtocol", "port", "targetPort", "nodePort"}

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def strict(where, obj, allowed, what):
    if not isinstance(obj, dict):
        fail(where, "%s is not a mapping" % what)
        return False
    for k in obj:
        if k not in allowed:
            fail(where, "%s has unknown field %r" % (what, k))
    return True


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
    bin_names = set(re.findall(r"/out/bin/(ferry-[a-z-]+)", build_runs))
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
    def __init__(self, repo, objs, label, kust, image, programs, is_rendered):
        self.repo = repo
        self.objs = objs
        self.label = label
        self.kust = kust or {}
        self.image = image
        self.programs = programs
        self.rendered = is_rendered

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
    for o in ctx.objs:
        where = "%s %s" % (ctx.label, oname(o))
        api, kind = o.get("apiVersion"), o.get("kind")
        if not api or not kind:
            fail(where, "needs apiVersion and kind")
            continue
        if (api, kind) not in KNOWN_KINDS:
            fail(where, "unknown apiVersion/kind %s %s" % (api, kind))
        md = o.get("metadata")
        if not isinstance(md, dict) or not md.get("name"):
            fail(where, "needs metadata.name")
            continue
        if not DNS_LABEL.match(md["name"]) or len(md["name"]) > 63:
            fail(where, "metadata.name %r is not a DNS label" % md["name"])
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
        where = ctx.w(o)
        spec, labels = pod_spec(o)
        if o["kind"] in ("Deployment", "StatefulSet"):
            sel = ((o.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            if not selects(sel, labels):
                fail(where, "selector.matchLabels %s does not match the pod labels %s"
                     % (sel, labels))
        if not strict(where, spec, POD_SPEC_KEYS, "pod spec"):
            continue
        psc = spec.get("securityContext") or {}
        strict(where, psc, POD_SC_KEYS, "pod securityContext")
        volumes = {v.get("name") for v in spec.get("volumes") or []}
        vcts = {(t.get("metadata") or {}).get("name")
                for t in (o.get("spec") or {}).get("volumeClaimTemplates") or []}
        containers = spec.get("containers") or []
        if not containers:
            fail(where, "has no containers")
        for c in containers + (spec.get("initContainers") or []):
            cw = "%s container %s" % (where, c.get("name", "?"))
            if not strict(cw, c, CONTAINER_KEYS, "container"):
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
                strict(cw, p, PORT_KEYS, "port")
                if not isinstance(p.get("containerPort"), int):
                    fail(cw, "port %s needs an integer containerPort" % p)
                port_numbers.add(p.get("containerPort"))
                if p.get("name"):
                    port_names[p["name"]] = p.get("containerPort")
            for pk in ("livenessProbe", "readinessProbe", "startupProbe"):
                pr = c.get(pk)
                if pr is None:
                    continue
                if not strict(cw, pr, PROBE_KEYS, pk):
                    continue
                handlers = [h for h in PROBE_HANDLERS if h in pr]
                if len(handlers) != 1:
                    fail(cw, "%s needs exactly one handler, has %s" % (pk, handlers))
                    continue
                h = pr[handlers[0]]
                if handlers[0] == "grpc":
                    strict(cw, h, GRPC_ACTION_KEYS, pk + ".grpc")
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
                strict(cw, e, ENV_KEYS, "env entry")
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
            for vm in c.get("volumeMounts") or []:
                if vm.get("name") not in volumes | vcts:
                    fail(cw, "volumeMount %s has no volume" % vm.get("name"))
            res = c.get("resources")
            if not strict(cw, res or {}, RESOURCE_KEYS, "resources") or not res \
                    or not res.get("requests") or not res.get("limits"):
                fail(cw, "needs resources.requests and resources.limits")
            csc = c.get("securityContext") or {}
            strict(cw, csc, CONTAINER_SC_KEYS, "securityContext")
            non_root = csc.get("runAsNonRoot", psc.get("runAsNonRoot"))
            if non_root is not True:
                fail(cw, "does not set runAsNonRoot: true")
            if csc.get("readOnlyRootFilesystem") is not True:
                fail(cw, "does not set readOnlyRootFilesystem: true")
            if csc.get("allowPrivilegeEscalation") is not False:
                fail(cw, "does not set allowPrivilegeEscalation: false")
            check_program(ctx, cw, c, psc, csc)

    for s in ctx.of_kind("Service"):
        where = ctx.w(s)
        spec = s.get("spec") or {}
        sel = spec.get("selector") or {}
        pods = [pod_spec(o) for o in workloads if selects(sel, pod_spec(o)[1])]
        if not pods:
            fail(where, "selector %s matches no pod template" % sel)
            continue
        for p in spec.get("ports") or []:
            strict(where, p, SERVICE_PORT_KEYS, "service port")
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
    for pdb in ctx.of_kind("PodDisruptionBudget"):
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
    args = [str(a) for a in c.get("args") or []]
    if name == "ferry-worker":
        if not args or args[0] not in p.subcommands:
            fail(cw, "ferry-worker needs a subcommand (%s) first" % "|".join(sorted(p.subcommands)))
    for a in args:
        if a.startswith("--") and a.split("=")[0] not in p.flags:
            fail(cw, "flag %s is not in %s's usage text (%s)" % (a.split("=")[0], name, p.path))
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    if ctx.image.user and uid is not None and str(uid) != ctx.image.user:
        fail(cw, "runAsUser %s differs from the image's USER %s" % (uid, ctx.image.user))


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
    etcd_pods = [pod_spec(o)[1] for o in ctx.of_kind("StatefulSet")]
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
        for pk in ("startupProbe", "readinessProbe", "livenessProbe"):
            g = (c.get(pk) or {}).get("grpc")
            if isinstance(g, dict) and g.get("service", "") not in served:
                fail(where, "%s asks health for service %r; the coordinator serves %s"
                     % (pk, g.get("service"), sorted(served)))
        g = (c.get("readinessProbe") or {}).get("grpc")
        if not isinstance(g, dict) or g.get("port") != 7400 or g.get("service", "") != "":
            fail(where, "readinessProbe must be a native grpc probe on port 7400, service \"\" "
                 "(has %s)" % c.get("readinessProbe"))
        # Liveness must not follow etcd's health: restarting every replica
        # during an etcd outage cures nothing. A TCP check on the port asks
        # only whether the process serves.
        t = (c.get("livenessProbe") or {}).get("tcpSocket")
        if not isinstance(t, dict) or t.get("port") not in (7400, "grpc"):
            fail(where, "livenessProbe must be a tcpSocket probe on port 7400 (has %s)"
                 % c.get("livenessProbe"))
        env = env_map(c)
        listen = (env.get("FERRY_LISTEN") or {}).get("value")
        if not listen or not re.match(r"^(0\.0\.0\.0|\[::\]):7400$", str(listen)):
            fail(where, "FERRY_LISTEN must be 0.0.0.0:7400 or [::]:7400 (is %r)" % listen)
        etcd = (env.get("FERRY_ETCD") or {}).get("value")
        if not etcd:
            fail(where, "FERRY_ETCD is not set (the coordinator would start a private etcd)")
        else:
            for url in str(etcd).split(","):
                u = parse_url(url)
                if not u:
                    fail(where, "FERRY_ETCD URL %r is not http(s)://host:port" % url)
                    continue
                svc, why = service_port(ctx, u[1], u[2])
                if svc is None:
                    fail(where, "FERRY_ETCD %s: %s" % (url, why))
                elif not any(selects((svc.get("spec") or {}).get("selector") or {}, l)
                             for l in etcd_pods):
                    fail(where, "FERRY_ETCD %s: %s does not select the etcd pods" % (url, oname(svc)))
        svcs = [s for s in ctx.of_kind("Service")
                if selects((s.get("spec") or {}).get("selector") or {}, labels)]
        if not any(p.get("port") == 7400 and p.get("name") == "grpc"
                   for s in svcs for p in (s.get("spec") or {}).get("ports") or []):
            fail(where, "no Service selects it with a port 7400 named grpc")
        if not any(selects(((p.get("spec") or {}).get("selector") or {}).get("matchLabels") or {},
                           labels) for p in ctx.of_kind("PodDisruptionBudget")):
            fail(where, "no PodDisruptionBudget selects it")


def check_etcd(ctx):
    stss = [o for o in ctx.of_kind("StatefulSet")
            if any("etcd" in os.path.basename(str((c.get("command") or [c.get("image", "")])[0]))
                   for c in pod_spec(o)[0].get("containers") or [])]
    if not stss:
        fail(ctx.label, "no etcd StatefulSet")
        return
    for o in stss:
        where = ctx.w(o)
        spec = o.get("spec") or {}
        name = o["metadata"]["name"]
        n = spec.get("replicas", 1)
        if not isinstance(n, int) or n < 3 or n % 2 == 0:
            fail(where, "replicas must be odd and at least 3 (is %r)" % n)
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
        if not adv_arg.startswith("http://$(%s)." % pod_name_var) or not adv or \
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


def check_workers(ctx):
    found = containers_running(ctx, "ferry-worker")
    if not found:
        fail(ctx.label, "no worker example runs ferry-worker")
        return
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


def check_kustomization(k8s, kust):
    where = "deploy/k8s/kustomization.yaml"
    if not kust:
        fail(where, "missing or empty")
        return
    if kust.get("kind") != "Kustomization" or \
            not str(kust.get("apiVersion", "")).startswith("kustomize.config.k8s.io/"):
        fail(where, "needs apiVersion kustomize.config.k8s.io/v1beta1 and kind Kustomization")
    if not kust.get("namespace"):
        fail(where, "sets no namespace")
    listed = [str(r) for r in kust.get("resources") or []]
    files = sorted(f for f in os.listdir(k8s)
                   if f.endswith((".yaml", ".yml")) and f not in
                   ("kustomization.yaml", "kustomization.yml"))
    for f in files:
        if f not in listed:
            fail(where, "resources does not list %s" % f)
    for r in listed:
        if not os.path.exists(os.path.join(k8s, r)):
            fail(where, "resources lists %s, which does not exist" % r)
    if len(set(listed)) != len(listed):
        fail(where, "resources lists a file twice")


def run_object_checks(ctx):
    check_generic(ctx)
    check_coordinator(ctx)
    check_etcd(ctx)
    check_workers(ctx)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True)
    ap.add_argument("--build")
    ap.add_argument("--rendered")
    a = ap.parse_args()
    repo = os.path.abspath(a.repo)
    deploy = os.path.join(repo, "deploy")
    k8s = os.path.join(deploy, "k8s")

    programs = {}
    for prog in ("ferry-coordinator", "ferry-worker"):
        path, text = find_usage_source(repo, prog)
        programs[prog] = Program(prog, os.path.relpath(path, repo) if path else None, text)
    if programs["ferry-coordinator"].path is None:
        fail("coordinator/config.c", "no usage text found")

    image = check_containerfile(repo, deploy)
    check_runtime_packages(image, a.build, "deploy/Containerfile")

    kust = None
    objs = []
    for f in sorted(os.listdir(k8s)) if os.path.isdir(k8s) else []:
        if not f.endswith((".yaml", ".yml")):
            continue
        docs = load_yaml_file(os.path.join(k8s, f), "deploy/k8s/" + f)
        if f.startswith("kustomization."):
            kust = docs[0] if docs else None
        else:
            objs += docs
    check_kustomization(k8s, kust)
    run_object_checks(Ctx(repo, objs, "deploy/k8s", kust, image, programs, False))
    if a.rendered:
        rendered = load_yaml_file(a.rendered, "kubectl kustomize deploy/k8s")
        if len(rendered) != len(objs):
            fail("kubectl kustomize deploy/k8s", "renders %d objects, the files hold %d"
                 % (len(rendered), len(objs)))
        run_object_checks(Ctx(repo, rendered, "rendered", kust, image, programs, True))
    else:
        note("no kubectl (or KUBECTL empty); the kustomization was not rendered")

    for n in NOTES:
        print("deploy/check: note: %s" % n)
    if ERRORS:
        for e in ERRORS:
            print("deploy/check: FAIL %s" % e, file=sys.stderr)
        print("deploy/check: %d problem(s)" % len(ERRORS), file=sys.stderr)
        return 1
    print("deploy/check: ok (%d objects in %d manifests%s)"
          % (len(objs), len((kust or {}).get("resources") or []),
             ", rendered with kubectl kustomize" if a.rendered else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
