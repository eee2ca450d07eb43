"""Where Numba caches nbce's compiled kernels: a per-user directory, never
the package directory.

Numba's default puts ``cache=True`` machine code in ``__pycache__`` beside the
source.  For an installed nbce that is ``site-packages/nbce``, and files pip
did not record outlive ``pip uninstall``: a later install in the other mode
(editable or not) then finds a ``site-packages/nbce/`` holding only caches,
imported as an empty namespace package that hides the real one.

A cache locator placed first in Numba's list claims only functions whose
source lies inside this package and sends them to
``<user cache>/nbce/numba/<nbce version>/<source folder>_<hash of its path>``.
Their source stamp covers every source file of the package (kernels inline
functions of other modules).  Everyone else's functions keep Numba's own locators, and ``NUMBA_CACHE_DIR``
or ``NUMBA_CACHE_LOCATOR_CLASSES``, when set, apply to nbce as well.
"""

import os
import sys
import tempfile

from numba.core import caching, config

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

# Numba 0.68 made these names public; earlier releases spell them with a
# leading underscore.
_UserProvidedCacheLocator = getattr(caching, "UserProvidedCacheLocator", None) or caching._UserProvidedCacheLocator
_CacheImpl = getattr(caching, "CacheImpl", None) or caching._CacheImpl


def user_cache_root():
    """The per-user cache directory (as the XDG/platform conventions place it)."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser(r"~\AppData\Local")
    elif sys.platform == "darwin":
        base = os.path.expanduser("~/Library/Caches")
    else:
        base = os.environ.get("XDG_CACHE_HOME", "")
        if not os.path.isabs(base):  # unset, empty or relative: ignored, as the spec says
            base = os.path.expanduser("~/.cache")
    return os.path.join(base, "nbce", "numba")


def _temporary_root():
    user = os.environ.get("USER") or os.environ.get("USERNAME") or str(getattr(os, "getuid", lambda: "")())
    return os.path.join(tempfile.gettempdir(), f"nbce-{user}", "numba")


def _inside_package(path):
    path = os.path.abspath(path)
    return os.path.commonpath([path, PACKAGE_DIR]) == PACKAGE_DIR


class PackageCacheLocator(_UserProvidedCacheLocator):
    """Numba cache locator for nbce's own source files (see the module docstring)."""

    roots = ()  # candidate directories, best first; set by ``install``

    def __init__(self, py_func, py_file, root):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = os.path.join(root, self.get_suitable_cache_subpath(py_file))

    _package_stamp = None

    def get_source_stamp(self):
        """(latest modification time, total size) of the package's source files.

        Numba's stamp is the decorated function's file alone, but nbce's
        kernels inline functions of other modules: an edit there would leave
        the cached machine code of the old version in use."""
        if PackageCacheLocator._package_stamp is None:
            stamps = [os.stat(os.path.join(folder, name)) for folder, _, names in os.walk(PACKAGE_DIR)
                      for name in names if name.endswith(".py")]
            PackageCacheLocator._package_stamp = (max(st.st_mtime for st in stamps), sum(st.st_size for st in stamps))
        return PackageCacheLocator._package_stamp

    @classmethod
    def from_function(cls, py_func, py_file):
        if config.CACHE_DIR or not os.path.exists(py_file) or not _inside_package(py_file):
            return None
        for root in cls.roots:
            locator = cls(py_func, py_file, root)
            try:
                locator.ensure_cache_path()
            except OSError:  # not writable: the next candidate
                continue
            return locator
        return None  # nowhere writable: Numba's own locators decide


def install(version):
    """Put the nbce locator first in Numba's list (idempotent); call before any
    kernel module is imported, since Numba picks a locator when it decorates."""
    PackageCacheLocator.roots = (os.path.join(user_cache_root(), version), os.path.join(_temporary_root(), version))
    classes = _CacheImpl._locator_classes
    mine = (PackageCacheLocator.__module__, PackageCacheLocator.__qualname__)
    classes[:] = [PackageCacheLocator] + [cls for cls in classes if (cls.__module__, cls.__qualname__) != mine]
