"""Where Numba caches nbce's kernels: a per-user directory, never the package
(files pip did not install would outlive ``pip uninstall``)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import nbce
from nbce import _cache
from nbce.cpu import kernels

PROBE = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import nbce
    from nbce.cpu import kernels
    import user_module
    print(json.dumps([kernels.normalize_rows._cache.cache_path, user_module.f._cache.cache_path]))
    """
)

USER_MODULE = "from numba import njit\n\n@njit(cache=True)\ndef f(x):\n    return x + 1\n"


def probe(tmp_path, **env):
    """(cache path of an nbce kernel, cache path of a user's function) in a fresh interpreter."""
    (tmp_path / "user_module.py").write_text(USER_MODULE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CACHE")} | env
    done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    return tuple(json.loads(done.stdout))


def inside(path, folder):
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(folder)]) == os.path.abspath(folder)


def test_kernels_cache_outside_the_package():
    package = os.path.dirname(nbce.__file__)
    path = kernels.normalize_rows._cache.cache_path
    if not os.environ.get("NUMBA_CACHE_DIR"):
        assert any(inside(path, root) for root in _cache.PackageCacheLocator.roots)
    assert not inside(path, package)


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="XDG_CACHE_HOME is the Linux convention")
def test_user_cache_root_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _cache.user_cache_root() == str(tmp_path / "nbce" / "numba")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # ignored, as the XDG spec says
    assert _cache.user_cache_root() == os.path.expanduser("~/.cache/nbce/numba")


def test_users_functions_keep_numbas_locators(tmp_path):
    xdg = tmp_path / "xdg"
    ours, theirs = probe(tmp_path, XDG_CACHE_HOME=str(xdg))
    assert inside(ours, xdg / "nbce" / "numba" / nbce.__version__)
    assert theirs == str(tmp_path / "__pycache__")  # Numba's default, beside the user's source


def test_numba_cache_dir_is_honoured(tmp_path):
    chosen = tmp_path / "chosen"
    ours, theirs = probe(tmp_path, NUMBA_CACHE_DIR=str(chosen))
    assert inside(ours, chosen) and inside(theirs, chosen)


def test_a_kernels_stamp_moves_when_any_module_of_the_package_changes(tmp_path, monkeypatch):
    """Kernels inline functions of other modules: editing one of those must
    invalidate the cached machine code of every kernel."""
    from nbce import _cache

    (tmp_path / "kernels.py").write_text("def kernel(): pass\n")
    (tmp_path / "_rows.py").write_text("def helper(): pass\n")
    monkeypatch.setattr(_cache, "PACKAGE_DIR", str(tmp_path))
    monkeypatch.setattr(_cache.PackageCacheLocator, "_package_stamp", None)
    locator = _cache.PackageCacheLocator(lambda: None, str(tmp_path / "kernels.py"), str(tmp_path / "cache"))
    before = locator.get_source_stamp()
    os.utime(tmp_path / "_rows.py", (before[0] + 10, before[0] + 10))
    monkeypatch.setattr(_cache.PackageCacheLocator, "_package_stamp", None)  # a new process
    assert locator.get_source_stamp() != before
