"""The output files of a run (``nbce score --per-token/--per-sequence``), put in
place only once the run has succeeded.

Each output is written under a temporary name in the folder of the file it
is to become (a symbolic link's target: the link stays) and renamed to that
file by ``Outputs.commit``.  A run refused, failing or interrupted midway
removes its temporary files and leaves no output behind, and an existing
one as it was; signals wait while the temporary files are made and while
they are renamed, so that none is lost and a run stopped then has put
every output in place or none.  Names are checked before anything is
scored, as the system resolves them, and used as given (``np.save`` would
add ``.npy`` to a bare name).
"""

import os
import signal
import tempfile
import threading


class OutputError(ValueError):
    """An output the run cannot write; its message is one line for the user."""


def shown(path):
    """A path for a one-line message: as it is, or quoted when it holds a control character."""
    return repr(path) if any(ord(c) < 32 for c in path) else path


def _output_file(label, path):
    """The file output ``path`` is to become, its symbolic links followed; an
    ``OutputError`` unless ``path`` names a file in an existing folder,
    resolved as the system resolves it (``L.npy/.`` or ``missing/../x`` are
    not), that is not an existing directory, device, FIFO or socket."""
    folder, name = os.path.split(path)
    if name in ("", ".", ".."):
        raise OutputError(f"{label} {path!r}: not a file name; name a file")
    if not os.path.isdir(folder or "."):
        raise OutputError(f"{label} {shown(path)}: no folder {shown(folder)} to write it in")
    try:
        os.stat(path)
    except FileNotFoundError:  # a new file, or a link to one
        pass
    except OSError as error:
        raise OutputError(f"{label} {shown(path)}: cannot write ({error.strerror or error})") from None
    else:
        if os.path.isdir(path):
            raise OutputError(f"{label} {path!r}: not a file name; name a file")
        if not os.path.isfile(path):
            raise OutputError(f"{label} {shown(path)}: not a regular file (a device, FIFO or socket?); name a file")
    return os.path.realpath(path)


def _files_of(paths, inputs):
    """{label: the file it is to become} (``_output_file``) for ``paths`` ({label:
    path}), refusing an input file (``inputs``, existing paths) and one file
    named twice."""
    files = {}
    for label, path in paths.items():
        file = _output_file(label, path)
        if os.path.exists(file) and any(os.path.samefile(file, source) for source in inputs):
            raise OutputError(f"{label} {shown(path)}: that is an input file; write the output elsewhere")
        for other, known in files.items():
            if file == known or (os.path.exists(file) and os.path.exists(known) and os.path.samefile(file, known)):
                raise OutputError(f"{other} and {label} both name {shown(paths[other])}; give each its own file")
        files[label] = file
    return files


class Outputs:
    """``with Outputs({label: path}, inputs) as outputs``: the temporary file of each
    output (``temporary(label)``) to write into, ``commit()`` once the run has
    succeeded (see the module docstring).  The names are checked when it is
    made, before anything is scored."""

    def __init__(self, paths, inputs):
        self._names = dict(paths)
        self._files = _files_of(self._names, inputs)
        self._temporary = {}

    def __enter__(self):
        try:
            with _signals_held():
                for label, file in self._files.items():
                    self._temporary[label] = _temporary_beside(file, self._names[label])
        except BaseException:
            self._remove()
            raise
        return self

    def temporary(self, label):
        """The temporary file of output ``label``, or None when it was not asked for."""
        return self._temporary.get(label)

    def commit(self):
        """Rename each temporary file to its output."""
        with _signals_held():
            for label, temporary in list(self._temporary.items()):
                try:
                    os.replace(temporary, self._files[label])
                except OSError as error:
                    raise OutputError(f"{shown(self._names[label])}: cannot write "
                                      f"({error.strerror or error})") from None
                del self._temporary[label]

    def __exit__(self, kind, error, trace):
        with _signals_held():
            self._remove()
        return False

    def _remove(self):
        for temporary in self._temporary.values():
            try:
                os.unlink(temporary)
            except OSError:
                pass
        self._temporary.clear()


class _signals_held:
    """Hold back SIGINT, SIGTERM and SIGHUP for a few steps that must not be cut
    in two (where the system can: Unix, the main thread); they are delivered
    when the block ends."""

    _HELD = {getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)}

    def __enter__(self):
        self._previous = None
        if hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread():
            self._previous = signal.pthread_sigmask(signal.SIG_BLOCK, self._HELD)
        return self

    def __exit__(self, kind, error, trace):
        if self._previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._previous)
        return False


def _temporary_beside(target, name):
    """A new empty file in ``target``'s folder, with the mode a new file there would
    get (mkstemp's are private); ``name`` (the output as given) names it in errors."""
    try:
        descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".nbce-", suffix=".partial")
    except OSError as error:
        raise OutputError(f"{shown(name)}: cannot write ({error.strerror or error})") from None
    os.close(descriptor)
    mask = os.umask(0)
    os.umask(mask)
    try:
        os.chmod(temporary, 0o666 & ~mask)
    except OSError:  # a file system without modes: keep the one it gave
        pass
    return temporary
