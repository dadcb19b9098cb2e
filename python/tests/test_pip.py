"""`pip install ./python` works offline: a wheel built with Debian's
setuptools (--no-build-isolation) against this build tree's libferry
carries the stable-ABI module, and that module imports and runs. libferry's
install prefix is LIBFERRY_PREFIX: FERRY_PREFIX, the coordinator's etcd key
prefix, exported as deploy/ does, changes nothing, and a prefix without
libferry stops the build with a message naming the variable and the path."""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import pytest

from conftest import BUILD_DIR, SOURCE_DIR


@pytest.fixture
def tmp():
    path = tempfile.mkdtemp(prefix="ferry-pip-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def pip_wheel(tmp, **env_extra):
    """pip wheel of a copy of python/ into tmp/wheels: (the result, its env)."""
    src = os.path.join(tmp, "python")
    if not os.path.isdir(src):
        shutil.copytree(os.path.join(SOURCE_DIR, "python"), src,
                        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__",
                                                      "tests"))
    env = dict(os.environ, FERRY_SOURCE_DIR=SOURCE_DIR, FERRY_BUILD_DIR=BUILD_DIR,
               PIP_NO_INDEX="1", PYTHONPATH="")
    env.pop("LIBFERRY_PREFIX", None)
    env.update(env_extra)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-build-isolation",
                        "--no-deps", "-w", os.path.join(tmp, "wheels"), src], env=env,
                       capture_output=True, text=True)
    return r, env


def test_pip_builds_an_abi3_wheel_that_works(tmp):
    # The coordinator's variable (deploy/k8s/base/coordinator.yaml's value)
    # was taken for libferry's prefix: a missing-header compiler error.
    r, env = pip_wheel(tmp, FERRY_PREFIX="/ferry/")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "libferry from the build tree" in r.stdout + r.stderr
    [wheel] = glob.glob(os.path.join(tmp, "wheels", "*.whl"))
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


def test_libferry_prefix_without_libferry_is_named(tmp):
    """A LIBFERRY_PREFIX without the header, or with the header but no
    library, stops the build saying so; a complete one is used."""
    prefix = os.path.join(tmp, "prefix")
    os.makedirs(os.path.join(prefix, "lib"))
    r, _ = pip_wheel(tmp, LIBFERRY_PREFIX=prefix)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    header = os.path.join(prefix, "include", "ferry", "ferry.h")
    assert f"LIBFERRY_PREFIX={prefix}: no libferry header {header}" in out, out

    os.symlink(os.path.join(SOURCE_DIR, "include"), os.path.join(prefix, "include"))
    r, _ = pip_wheel(tmp, LIBFERRY_PREFIX=prefix)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert f"LIBFERRY_PREFIX={prefix}: no libferry.so in {os.path.join(prefix, 'lib')}" in out, \
        out

    os.rmdir(os.path.join(prefix, "lib"))
    os.symlink(os.path.join(BUILD_DIR, "worker"), os.path.join(prefix, "lib"))
    r, _ = pip_wheel(tmp, LIBFERRY_PREFIX=prefix, FERRY_BUILD_DIR=os.path.join(tmp, "none"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"libferry from LIBFERRY_PREFIX={prefix}" in r.stdout + r.stderr
