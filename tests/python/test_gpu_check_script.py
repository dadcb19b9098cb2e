#!/usr/bin/env python3
"""scripts/run-gpu-checks.sh, the GPU check's one command, decides pass or
fail as it says: on a bundle laid out as scripts/gpu-bundle.sh makes it, with
stub programs (nvidia-smi, ucx_info, one test) standing in for the machine.

Where nvidia-smi lists a GPU, a CUDA test that skips (exit 77: libferry could
not use the GPU, or the direct path's UCX has no CUDA transports) tested
nothing, and the check fails; where none is listed the same skip is expected
and the check passes; a CUDA test that passes on a GPU passes the check.
The Python package's CUDA tests (a stub test file, run by the real pytest;
a stub python3 says torch sees a GPU): a failure fails the check, and so
does a skip for want of CUDA in libferry.
No GPU is needed: nothing here touches one.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

SOURCE = os.environ.get("FERRY_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(SOURCE, "scripts", "run-gpu-checks.sh")


def write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


class GpuCheckVerdict(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ferry-gpu-check-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.bundle = os.path.join(self.dir, "ferry-gpu")
        shutil.copy(SCRIPT, os.path.join(self.bundle + "-script"))
        os.makedirs(self.bundle)
        shutil.move(self.bundle + "-script", os.path.join(self.bundle, "run-gpu-checks.sh"))
        write(os.path.join(self.bundle, "BUNDLE.txt"), "ferry GPU bundle (test stub)\n")
        write(os.path.join(self.bundle, "bin", "ucx_info"),
              "#!/bin/sh\necho '# Version 1.13.1'\n", 0o755)
        # name, path, timeout, labels, environment, arguments (gpu-bundle.sh)
        write(os.path.join(self.bundle, "tests.tsv"),
              "test_worker_cuda\ttests/worker/test_worker_cuda\t60\tgpu\t-\t-\n"
              "test_worker_cuda_direct\ttests/worker/test_worker_cuda\t60\tgpu\t"
              "FERRY_CUDA_DIRECT=1\t-\n")

    PY_TESTS = {
        "pass": "pass",
        "fail": "assert False, 'stub failure'",
        "skip": "pytest.skip(\"torch sees a GPU but libferry's connector has no CUDA\")",
    }

    def run_check(self, gpu, test_exit, py="pass"):
        """Runs the check with nvidia-smi listing a GPU (or failing), the
        CUDA test exiting test_exit and the Python CUDA test doing `py`
        (PY_TESTS); returns (exit status, report text)."""
        write(os.path.join(self.bundle, "build", "tests", "worker", "test_worker_cuda"),
              "#!/bin/sh\n[ %d -ne 77 ] || echo 'SKIP: no usable CUDA GPU here (stub)'\n"
              "exit %d\n" % (test_exit, test_exit), 0o755)
        write(os.path.join(self.bundle, "build", "python", "ferry", "__init__.py"), "")
        write(os.path.join(self.bundle, "src", "python", "tests", "test_api.py"),
              "import pytest\n\n\ndef test_cuda_stub():\n    %s\n" % self.PY_TESTS[py])
        stubs = os.path.join(self.dir, "stubs")
        write(os.path.join(stubs, "python3"),
              "#!/bin/sh\ncase \"$2\" in\n"
              "*cuda.is_available*) echo '9.9.9 1'; exit 0 ;;\n"
              "*find_spec*|'import torch, numpy, ferry') exit 0 ;;\nesac\n"
              "exec %s \"$@\"\n" % sys.executable, 0o755)
        write(os.path.join(stubs, "nvidia-smi"),
              "#!/bin/sh\necho 'GPU 0: stub'\nexit 0\n" if gpu
              else "#!/bin/sh\necho 'NVIDIA-SMI has failed (stub)'\nexit 9\n", 0o755)
        report = os.path.join(self.dir, "report-%d-%d" % (gpu, test_exit))
        env = dict(os.environ, PATH=stubs + ":" + os.environ["PATH"],
                   FERRY_GPU_BUDGET_S="30", FERRY_GPU_JOBS="1")
        env.pop("OUT", None)
        proc = subprocess.run(["bash", os.path.join(self.bundle, "run-gpu-checks.sh"), report],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=120)
        with open(os.path.join(report, "report.txt")) as f:
            return proc.returncode, f.read()

    def test_a_skip_with_a_gpu_listed_fails(self):
        rc, report = self.run_check(gpu=True, test_exit=77)
        self.assertNotEqual(rc, 0, report)
        self.assertIn("a GPU is listed but a CUDA test skipped", report)
        self.assertIn("SKIP (SKIP: no usable CUDA GPU here (stub))", report)

    def test_a_skip_without_a_gpu_passes(self):
        rc, report = self.run_check(gpu=False, test_exit=77)
        self.assertEqual(rc, 0, report)
        self.assertNotIn("a GPU is listed", report)

    def test_a_pass_with_a_gpu_listed_passes(self):
        rc, report = self.run_check(gpu=True, test_exit=0)
        self.assertEqual(rc, 0, report)
        self.assertIn("failed 0", report)

    def test_a_python_cuda_test_that_fails_fails(self):
        rc, report = self.run_check(gpu=True, test_exit=0, py="fail")
        self.assertNotEqual(rc, 0, report)
        self.assertIn("pytest -k cuda: ", report)
        self.assertIn("1 failed", report)

    def test_a_python_cuda_test_skipped_where_torch_sees_a_gpu_fails(self):
        rc, report = self.run_check(gpu=True, test_exit=0, py="skip")
        self.assertNotEqual(rc, 0, report)
        self.assertIn("torch sees a GPU but a Python CUDA test skipped", report)

    def test_a_python_cuda_test_that_passes_passes(self):
        rc, report = self.run_check(gpu=True, test_exit=0, py="pass")
        self.assertEqual(rc, 0, report)
        self.assertIn("1 passed", report)
        self.assertIn("sees a GPU: 1", report)

    def test_a_failure_fails(self):
        rc, report = self.run_check(gpu=True, test_exit=1)
        self.assertNotEqual(rc, 0, report)
        self.assertIn("FAIL (exit 1)", report)


if __name__ == "__main__":
    unittest.main()
