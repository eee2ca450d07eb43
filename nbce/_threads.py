"""Numba's threading layer for nbce's parallel kernels: forked workers and
concurrent Python threads must both work, or fail with a clear error.

Numba runs ``parallel=True`` kernels on one of three layers, chosen once per
process at the first parallel compilation or launch:

* ``tbb``: safe after ``fork`` and from several threads at once;
* ``omp``: GNU OpenMP (Linux) kills a child forked after a parallel kernel
  ran ("fork() called from a process already using GNU OpenMP") and a
  ``multiprocessing.Pool`` waiting on that child hangs;
* ``workqueue``: aborts the process when two threads launch at once.

So nbce, at import:

1. makes TBB loadable: the ``tbb`` wheel puts ``libtbb`` in the
   environment's ``lib`` folder, which the dynamic loader does not search, so
   Numba's own lookup fails in a virtual environment; loading it by its path
   first lets Numba find it.
2. if the user chose no layer (neither ``NUMBA_THREADING_LAYER`` nor
   ``NUMBA_THREADING_LAYER_PRIORITY``, nor ``numba.config``) and TBB cannot
   be loaded, asks Numba for its ``"forksafe"`` choice (TBB, else Intel
   OpenMP on macOS, else ``workqueue``) instead of GNU OpenMP.

and every CPU launch goes through ``launches``, which serialises nbce's
launches under ``workqueue`` (so threads take turns instead of aborting) and
raises ``RuntimeError`` in a child forked after GNU OpenMP started (instead of
the child being killed).  A layer chosen by the user is never overridden.

It also sizes launches: a small kernel runs on the calling thread alone
(``launch``), and a small batch is split into a few tasks per thread
(``n_tasks``).
"""

import ctypes
import functools
import importlib.metadata
import os
import sys
import threading

import numba
from numba.np.ufunc import parallel as _parallel

_TBB_LIBRARY = {"win32": "tbb12.dll", "darwin": "libtbb.12.dylib"}.get(sys.platform, "libtbb.so.12")
_TBB_MIN_INTERFACE = 12060  # TBB 2021.6, the oldest Numba's TBB layer accepts

FORK_MESSAGE = (
    "nbce cannot run here: this process was forked from one whose Numba parallel kernels ran on the GNU "
    "OpenMP threading layer, which does not survive fork(). Install TBB (pip install tbb) or set "
    "NUMBA_THREADING_LAYER=tbb or workqueue, or start worker processes with the 'spawn' or 'forkserver' method."
)


def _open_library(path, mode=ctypes.DEFAULT_MODE):
    try:
        return ctypes.CDLL(path, mode=mode)
    except OSError:
        return None


def load_tbb():
    """Load TBB (from the system, else from the ``tbb`` wheel); True when it is
    recent enough for Numba's TBB layer."""
    library = _open_library(_TBB_LIBRARY)
    if library is None:
        try:
            files = importlib.metadata.distribution("tbb").files or ()
        except importlib.metadata.PackageNotFoundError:
            return False
        for file in files:
            if file.name == _TBB_LIBRARY:
                library = _open_library(str(file.locate()), ctypes.RTLD_GLOBAL)
                break
        if library is None:
            return False
    try:
        version = library.TBB_runtime_interface_version
    except AttributeError:
        return False
    version.restype = ctypes.c_int
    return version() >= _TBB_MIN_INTERFACE


def user_chose_layer():
    return ("NUMBA_THREADING_LAYER" in os.environ or "NUMBA_THREADING_LAYER_PRIORITY" in os.environ
            or str(numba.config.THREADING_LAYER).lower() != "default")


def configure():
    """Steps 1 and 2 of the module docstring; nothing once the layer is running."""
    if _parallel._is_initialized:
        return
    tbb = load_tbb()
    if not tbb and not user_chose_layer():
        numba.config.THREADING_LAYER = "forksafe"


def layer():
    """The running threading layer's name, or None before the first parallel launch."""
    return _parallel._threading_layer if _parallel._is_initialized else None


def _gnu_openmp():
    from numba.np.ufunc import omppool

    return getattr(omppool, "openmp_vendor", "GNU") == "GNU"


_launch_lock = threading.Lock()
_forked_after_gnu_openmp = False

# Kernels reading fewer elements than this run on the calling thread alone:
# waking the pool's other threads costs more than they take off.  Measured
# (2 cores, TBB, cross_entropy's kernel between other work): 64x100 float32
# 13.9 us on two threads, 6.4 us on one; 16x1000 7.9 and 5.9 us; at 128x100
# and 32x1000 two threads break even or win.  Results do not depend on the
# thread count.
SERIAL_WORK = 1 << 14
# Tasks a row kernel splits a small batch into, per thread (see the row
# kernels' ``rows_per_group``): enough for the threads to even out, few
# enough that each task's fixed costs stay small beside its rows'.
TASKS_PER_THREAD = 8


def _after_fork_in_child():
    global _launch_lock, _forked_after_gnu_openmp
    _launch_lock = threading.Lock()  # another thread may have held it at the fork
    if layer() == "omp" and _gnu_openmp():
        _forked_after_gnu_openmp = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def n_tasks():
    """How many tasks a row kernel launched now should make of a small batch:
    TASKS_PER_THREAD per thread of this thread's Numba thread count."""
    return numba.get_num_threads() * TASKS_PER_THREAD


def launch(kernel, work, *args):
    """``kernel(*args)``, on the calling thread alone when it reads fewer than
    ``SERIAL_WORK`` elements (``work``); the caller's thread count is restored
    (Numba keeps it per thread)."""
    if work >= SERIAL_WORK:
        return kernel(*args)
    threads = numba.get_num_threads()
    if threads == 1:
        return kernel(*args)
    try:
        numba.set_num_threads(1)
        return kernel(*args)
    finally:
        numba.set_num_threads(threads)


def launches(function):
    """Decorator for a function that launches parallel kernels (see the module docstring)."""

    @functools.wraps(function)
    def guarded(*args, **kwargs):
        if _forked_after_gnu_openmp:
            raise RuntimeError(FORK_MESSAGE)
        if layer() in ("tbb", "omp"):  # thread-safe layers
            return function(*args, **kwargs)
        with _launch_lock:  # workqueue, or not chosen yet
            return function(*args, **kwargs)

    return guarded
