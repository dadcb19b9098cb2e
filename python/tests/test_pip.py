"""`pip install ./python` works offline: a wheel built with Debian's
setuptools (--no-build-isolation) against this build tree's libferry
carries the stable-ABI module, and that module imports and runs."""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from conftest import BUILD_DIR, SOURCE_DIR


def test_pip_builds_an_abi3_wheel_that_works():
    tmp = tempfile.mkdtemp(prefix="ferry-pip-")
    try:
        src = os.path.join(tmp, "python")
        shutil.copytree(os.path.join(SOURCE_DIR, "python"), src,
                        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__",
                                                      "tests"))
        env = dict(os.environ, FERRY_SOURCE_DIR=SOURCE_DIR, FERRY_BUILD_DIR=BUILD_DIR,
                   PIP_NO_INDEX="1", PYTHONPATH="")
        env.pop("FERRY_PREFIX", None)
        wheels = os.path.join(tmp, "wheels")
        r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation",
                            "--no-deps", "-w", wheels, src], env=env, capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        [wheel] = glob.glob(os.path.join(wheels, "*.whl"))
        assert wheel.endswith("-cp311-abi3-linux_x86_64.whl"), wheel
        with zipfile.ZipFile(wheel) as z:
            names = z.namelist()
            assert {"ferry/_ferry.abi3.so", "ferry/__init__.py", "ferry/py.typed",
                    "ferry/_ferry.pyi"} <= set(names), names
            z.extractall(os.path.join(tmp, "site"))
        r = subprocess.run(
            [sys.executable, "-c",
             "import ferry; c = ferry.Connector('pip'); print(ferry._ferry.__file__, c.name)"],
            env=dict(env, PYTHONPATH=os.path.join(tmp, "site")), capture_output=True, text=True,
            cwd=tmp)
        assert r.returncode == 0, r.stderr
        assert os.path.join(tmp, "site") in r.stdout and "pip" in r.stdout
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
