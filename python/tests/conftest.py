"""Shared fixtures of the ferry package's tests (pytest, /usr/bin/python3).

The package is imported from the build tree (CTest sets PYTHONPATH to
<build>/python); a real etcd and ferry-coordinator come from
tests/python/ferry_harness.py, and ferry-worker from <build>/worker.
"""
import os
import shutil
import sys
import tempfile

import numpy as np
import pytest

SOURCE_DIR = os.environ.get(
    "FERRY_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
BUILD_DIR = os.environ.get("FERRY_BUILD_DIR", os.path.join(SOURCE_DIR, "build"))
if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, os.path.join(BUILD_DIR, "python"))
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "python"))

import ferry  # noqa: E402
import ferry_harness  # noqa: E402

WORKER = os.path.join(BUILD_DIR, "worker", "ferry-worker")
TOKEN = "python-token-0123456789"

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def pattern(size):
    """The bytes ferry-worker writes and checks (worker/cli/pattern.c): word
    k is (k + 1) * 0x9E3779B97F4A7C15, little-endian; the tail takes the low
    bytes of its word."""
    words = (size + 7) // 8
    with np.errstate(over="ignore"):
        w = np.arange(1, words + 1, dtype=np.uint64) * _GOLDEN
    return w.astype("<u8").view(np.uint8)[:size]


def split(buf, n):
    """ferry-worker's split: n regions as even as possible, in order."""
    size = len(buf)
    out, off = [], 0
    for i in range(n):
        length = size // n + (1 if i < size % n else 0)
        out.append(buf[off:off + length])
        off += length
    return out


@pytest.fixture(scope="session")
def connector():
    c = ferry.Connector("py-test")
    yield c


@pytest.fixture(scope="session")
def sender():
    """The active side's connector. Transfers between two operations of one
    connector work but are slow (libferry's progress thread is not woken by
    UCX's self transport: ~18 ms per write): two connectors, as two workers
    would be."""
    c = ferry.Connector("py-test-sender")
    yield c


class _Cluster:
    """One etcd and one coordinator, without the gRPC stubs (their `ferry`
    package would shadow this one)."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="ferry-pkg-")
        self.etcd = ferry_harness.Etcd(self.tmp)
        try:
            self.etcd.start()
            self.coordinator = ferry_harness.Coordinator(self.tmp, self.etcd.endpoint, ttl=3)
            self.coordinator.start()
        except BaseException:
            # Nothing of a cluster that did not start is left behind (the
            # coordinator's start kills its own process when it fails).
            self.etcd.stop()
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        self.target = self.coordinator.target

    def close(self):
        rc = self.coordinator.stop()
        self.etcd.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return rc


@pytest.fixture(scope="session")
def cluster():
    c = _Cluster()
    yield c
    assert c.close() == 0, "the coordinator did not exit cleanly on SIGTERM"


@pytest.fixture(scope="session")
def coordinator(cluster):
    coord = ferry.Coordinator(cluster.target)
    yield coord
