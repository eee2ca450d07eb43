"""Install, use, reinstall in the other mode, uninstall: in one fresh virtual
environment, nothing may be left behind that shadows the next install.

Numba used to cache kernels in ``site-packages/nbce/__pycache__``; pip does
not record those files, so they outlived ``pip uninstall`` as a folder that
Python imports as an empty namespace package, hiding an editable install.

Slow (a virtual environment, three installs, two cold compilations): run
with ``--run-install`` (``.ci/run`` does, as a step of its own).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.install

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """(a copy of the source, a fresh virtual environment's python, its environment variables)."""
    base = tmp_path_factory.mktemp("install")
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "nbce", source / "nbce", ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True)
    python = base / "venv" / ("Scripts" if os.name == "nt" else "bin") / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "NUMBA_", "VIRTUAL_ENV"))}
    env["XDG_CACHE_HOME"] = str(base / "user-cache")
    return source, python, env


def run(env, *command, cwd=None):
    done = subprocess.run([str(c) for c in command], env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (command, done.stdout[-3000:], done.stderr[-3000:])
    return done.stdout


def site_packages(python, env):
    return Path(run(env, python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())


def use(python, env, cwd):
    """``nbce demo`` from outside the source tree; the path nbce was imported from."""
    script = Path(python).parent / "nbce"
    assert "check: nbce agrees" in run(env, script, "demo", "--rows", "512", cwd=cwd)
    return Path(run(env, python, "-c", "import nbce; print(nbce.__file__)", cwd=cwd).strip()).parent


def test_install_use_reinstall_uninstall(sandbox, tmp_path):
    source, python, env = sandbox
    pip = (python, "-m", "pip", "install", "--quiet")
    packages = site_packages(python, env)
    user_cache = Path(env["XDG_CACHE_HOME"]) / "nbce"

    run(env, *pip, f"{source}[cli]")
    assert use(python, env, tmp_path) == packages / "nbce"
    assert not [p for p in (packages / "nbce").rglob("*") if p.suffix in (".nbi", ".nbc")]
    assert list(user_cache.rglob("*.nbi")), "the kernels were cached in the user's cache directory"

    run(env, *pip, "-e", source)  # the sequence: the editable install replaces the regular one
    assert not (packages / "nbce").exists(), sorted(map(str, (packages / "nbce").rglob("*")))
    assert use(python, env, tmp_path) == source / "nbce"
    assert not [p for p in (source / "nbce").rglob("*") if p.suffix in (".nbi", ".nbc")]

    run(env, *pip, source)  # and back
    assert use(python, env, tmp_path) == packages / "nbce"

    run(env, python, "-m", "pip", "uninstall", "--yes", "--quiet", "nbce")
    assert not (packages / "nbce").exists(), sorted(map(str, (packages / "nbce").rglob("*")))
    done = subprocess.run([str(python), "-c", "import nbce"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert "No module named 'nbce'" in done.stderr
