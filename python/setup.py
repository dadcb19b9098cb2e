"""Builds ferry._ferry against libferry (see pyproject.toml).

libferry is found, first match wins:
  1. LIBFERRY_PREFIX=/opt/ferry: a tree installed by hand (the project has
     no install rules), <prefix>/include/ferry/*.h and
     <prefix>/lib/libferry.so (or lib64/); a prefix without them stops the
     build, naming the variable and the path. (Not FERRY_PREFIX: that is
     the coordinator's etcd key prefix, often exported where this runs.)
  2. pkg-config ferry (a ferry.pc of your own on PKG_CONFIG_PATH; the
     project makes none).
  3. A build tree of this checkout: FERRY_BUILD_DIR (default <repo>/build,
     made by `make build`), with the headers from <repo>/include. This is
     the way the project supports.
The directory of libferry.so is written into the module's RUNPATH, so it
loads without LD_LIBRARY_PATH.
"""
import os
import shlex
import subprocess
import sys

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.environ.get("FERRY_SOURCE_DIR", os.path.dirname(HERE))
SOURCES = [os.path.join("src", f) for f in
           ["module.c", "descriptor.c", "connector.c", "op.c", "coordinator.c", "region.c"]]


def _pkg_config():
    try:
        if subprocess.run(["pkg-config", "--exists", "ferry"]).returncode != 0:
            return None
        cflags = subprocess.check_output(["pkg-config", "--cflags-only-I", "ferry"], text=True)
        libs = subprocess.check_output(["pkg-config", "--libs-only-L", "ferry"], text=True)
    except OSError:
        return None
    incs = [f[2:] for f in shlex.split(cflags) if f.startswith("-I")]
    libdirs = [f[2:] for f in shlex.split(libs) if f.startswith("-L")]
    return incs, libdirs


def _from_prefix(prefix):
    """(include dirs, library dirs) of an installed tree; exits naming
    LIBFERRY_PREFIX and what is missing rather than let the compiler or the
    linker fail on it."""
    header = os.path.join(prefix, "include", "ferry", "ferry.h")
    if not os.path.isfile(header):
        sys.exit(f"setup.py: LIBFERRY_PREFIX={prefix}: no libferry header {header} "
                 "(LIBFERRY_PREFIX names the tree libferry is installed in)")
    libdirs = [d for d in (os.path.join(prefix, "lib"), os.path.join(prefix, "lib64"))
               if os.path.isfile(os.path.join(d, "libferry.so"))]
    if not libdirs:
        sys.exit(f"setup.py: LIBFERRY_PREFIX={prefix}: no libferry.so in "
                 f"{os.path.join(prefix, 'lib')} or {os.path.join(prefix, 'lib64')}")
    return [os.path.join(prefix, "include")], libdirs


def find_libferry():
    """(include dirs, library dirs, where it came from)."""
    prefix = os.environ.get("LIBFERRY_PREFIX")
    if prefix:
        incs, libdirs = _from_prefix(prefix)
        return incs, libdirs, f"LIBFERRY_PREFIX={prefix}"
    found = _pkg_config()
    if found:
        return found[0], found[1], "pkg-config ferry"
    build = os.path.abspath(os.environ.get("FERRY_BUILD_DIR", os.path.join(REPO, "build")))
    libdir = os.path.join(build, "worker")
    if os.path.exists(os.path.join(libdir, "libferry.so")):
        return [os.path.join(REPO, "include")], [libdir], f"the build tree {build}"
    sys.exit("setup.py: libferry not found: set LIBFERRY_PREFIX (an installed tree), put a "
             "ferry.pc on PKG_CONFIG_PATH, or build this checkout first (`make build`, or "
             "FERRY_BUILD_DIR=<its build dir>)")


incs, libdirs, origin = find_libferry()
print(f"ferry: building against libferry from {origin}", file=sys.stderr)

setup(
    ext_modules=[Extension(
        "ferry._ferry",
        sources=SOURCES,
        include_dirs=incs,
        library_dirs=libdirs,
        runtime_library_dirs=libdirs,
        libraries=["ferry"],
        define_macros=[("Py_LIMITED_API", "0x030B0000"), ("_GNU_SOURCE", "1")],
        extra_compile_args=["-std=c11", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
        py_limited_api=True,
    )],
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
