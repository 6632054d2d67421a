"""Files a run writes: atomic replacement, one writer per run directory, and one-line errors.

- `atomic_write` (and `atomic_save`, `atomic_write_text`, `atomic_copy` on top of it): the one
  writer of checkpoints, config.json, exports, eval and counterfactual results, the measurement
  cache and downloads (metrics.jsonl is appended to). The new bytes go to a temporary file beside
  the target, are flushed to disk, and replace the target in one rename, so a crash, a kill -9
  or a full disk at any moment leaves the old file or the new one, never half of one.
  Temporary names carry the host and the process id; a process only removes temporaries of its
  own, or of a process of this host that no longer runs (a kill -9 skips every cleanup).
- `RunDirectoryLock`: an exclusive `flock` on `<run dir>/.lock`. The kernel releases it when the
  process ends in any way, so a killed run never leaves a stale lock behind, and a second run
  into the same directory fails at once, naming the holder's PID.
- `file_error`: an OSError (disk full, read-only, permission, a file where a directory should
  be) as a UserError that names the path and what to do, printed by the CLI in one line. A
  writer's failure is reported so whatever it raised: the OSError itself, or an error it caused
  (torch.save turns a failed write into a RuntimeError whose context is the OSError, or, writing
  to a path itself, into "PytorchStreamWriter failed writing file ...", which carries no errno).

Archives (`atomic_save`) and safetensors files carry a SHA-256 of their bytes (digest.py).
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import uuid
from pathlib import Path
from typing import Callable, Iterable

from .digest import safetensors_bytes, save_torch
from .errors import UserError

LOCK_FILE = ".lock"
_TMP_SUFFIX = ".tmp"

# errno -> what went wrong, in words a user can act on.
_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EEXIST: "a file of that name is in the way",
    errno.EISDIR: "it is a directory",
    errno.ENOENT: "no such file or directory",
}


def file_error(path: str | Path, error: OSError, doing: str = "write", advice: str = "") -> UserError:
    """A one-line UserError: 'cannot <doing> <path>: <reason>[; <advice>]'."""
    reason = _REASONS.get(error.errno) or error.strerror or str(error) or type(error).__name__
    return UserError(f"cannot {doing} {path}: {reason}" + (f"; {advice}" if advice else ""))


def make_directory(path: str | Path, flag: str = "--out") -> bool:
    """Create the output directory `path` (and its parents); True if it did not exist before.

    UserError in one line when that cannot be: a file in the way, no permission, read-only.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: exists and is not a directory; choose another {flag}")
    existed = path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise file_error(path, error, "create", f"choose another {flag}") from None
    return not existed


def atomic_write(path: str | Path, write: Callable[[Path], None], advice: str = "") -> None:
    """Call write(tmp_path) and then rename tmp_path over path: all of the new file or none of it.

    The file gets the mode a plain open() would give (0666 less the umask). An OSError becomes
    a UserError naming `path` (plus `advice`), other errors pass through; either way the
    temporary file is removed and the previous file is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{_owner_tag()}.{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_directory(path.parent)  # make the rename itself durable
    except BaseException as error:
        _discard(tmp)
        failure = _write_failure(path, error, advice)
        if failure is None:
            raise
        raise failure from None


def _discard(tmp: Path) -> None:
    """Remove a temporary file if it is there; where it cannot be (its folder is gone or is a
    file), the error being reported is the one to see, not this one."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def _write_failure(path: Path, error: BaseException, advice: str) -> UserError | None:
    """The one-line error of a failed write, or None if `error` is not the file system's (a bug,
    Ctrl-C, or a source's error that atomic_copy passes through)."""
    if isinstance(error, _SourceError):
        return None
    seen = error
    while seen is not None:  # the error, then what caused it (explicitly, or by failing while it was handled)
        if isinstance(seen, OSError):
            return file_error(path, seen, advice=advice)
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    text = str(error)
    if isinstance(error, RuntimeError) and "PytorchStreamWriter failed" in text:  # without "[enforce fail at ...] . "
        what = text[text.index("PytorchStreamWriter failed"):].splitlines()[0]
        return file_error(path, OSError(_likely_errno(path.parent), what), advice=advice)
    return None


def _likely_errno(directory: Path) -> int | None:
    """ENOSPC when the file system of `directory` has no space left: the usual reason for a failed
    write that does not say why."""
    try:
        stat = os.statvfs(directory)
    except OSError:
        return None
    return errno.ENOSPC if stat.f_bavail * stat.f_frsize < (1 << 20) else None


def atomic_save(path: str | Path, obj, advice: str = "") -> None:
    """torch.save(obj) to path with `atomic_write`, followed by its digest record (digest.save_torch)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            save_torch(obj, out)

    atomic_write(path, write, advice)


def atomic_write_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None,
                             advice: str = "") -> None:
    """A safetensors file of `tensors` (contiguous CPU tensors) with its digest, with `atomic_write`."""
    data = safetensors_bytes(tensors, metadata)
    atomic_write(path, lambda tmp: tmp.write_bytes(data), advice)


def atomic_write_text(path: str | Path, text: str, advice: str = "") -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), advice)


def atomic_copy(path: str | Path, chunks: Iterable[bytes], advice: str = "") -> None:
    """Write the bytes `chunks` yields to path with `atomic_write`: a download, chunk by chunk.

    Only the file system's errors become the one-line file error. An error the iterator raises
    is the source's (the network failing, or a checksum the iterator checks after its last
    chunk): it passes through as it was raised, not reworded as a write error. Either way no
    temporary file is left and the previous file is kept.
    """
    def from_source() -> Iterable[bytes]:
        iterator = iter(chunks)
        while True:
            try:
                chunk = next(iterator)
            except StopIteration:
                return
            except Exception as error:  # an OSError here (URLError, a timeout) is not the file system's
                raise _SourceError(error) from None
            yield chunk

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            for chunk in from_source():
                out.write(chunk)

    try:
        atomic_write(path, write, advice)
        return
    except _SourceError as failed:
        error = failed.error
    raise error  # outside the except block, so the source's error keeps its own context


class _SourceError(Exception):
    """Carries an error of `atomic_copy`'s source past `atomic_write`'s OSError handling."""

    def __init__(self, error: Exception):
        super().__init__(error)
        self.error = error


def _owner_tag() -> str:
    """host.pid: who wrote a temporary file (the host name keeps shared file systems apart)."""
    return f"{_host()}.{os.getpid()}"


def _host() -> str:
    return socket.gethostname().replace(".", "-") or "host"


def _remove_stale_temporaries(path: Path) -> None:
    """Temporaries of `path` left by a dead process of this host; live writers' files are theirs."""
    prefix = f"{path.name}.{_host()}."
    for candidate in path.parent.glob(f"{path.name}.*{_TMP_SUFFIX}"):
        rest = candidate.name[len(prefix):] if candidate.name.startswith(prefix) else ""
        pid = rest.split(".", 1)[0]
        if pid.isdigit() and not _process_runs(int(pid)):
            candidate.unlink(missing_ok=True)


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):  # file systems that cannot sync a directory
            raise
    finally:
        os.close(fd)


class RunDirectoryLock:
    """`with RunDirectoryLock(run_dir, flag="--out"):` one writer per run directory.

    Creates the directory if needed; `release(clean=True)` removes what the lock added: the
    directory, if it was created here and the holder left it empty (a run that failed before
    writing anything), else the lock file, if it was created here (so a run refused from a
    directory of someone else's files leaves none of its own).
    """

    def __init__(self, run_dir: str | Path, flag: str = "--out"):
        self.run_dir = Path(run_dir)
        self.flag = flag
        self._file = None
        self._created = False
        self._created_file = False

    def acquire(self) -> "RunDirectoryLock":
        self._created = make_directory(self.run_dir, self.flag)
        while True:  # until the file locked is the one at the path: a holder may remove it as it leaves
            self._created_file = not (self.run_dir / LOCK_FILE).exists()
            handle = self._lock_file()
            try:
                if os.path.samestat(os.fstat(handle.fileno()), os.stat(self.run_dir / LOCK_FILE)):
                    break
            except FileNotFoundError:
                pass
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return self

    def _lock_file(self):
        """The lock file, open and flock'ed; UserError naming the holder if another run has it."""
        try:
            handle = open(self.run_dir / LOCK_FILE, "a+")
        except OSError as error:
            raise file_error(self.run_dir / LOCK_FILE, error, "create", f"choose another {self.flag}") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise UserError(f"{self.flag} {self.run_dir} is in use by another ratio-fast run (PID {holder}); "
                            f"wait for it to end, or choose another {self.flag}") from None
        return handle

    def release(self, clean: bool = False) -> None:
        """Unlock; with clean, remove what the lock added (see the class)."""
        if self._file is None:
            return
        if clean and self._created and [p.name for p in self.run_dir.iterdir()] == [LOCK_FILE]:
            (self.run_dir / LOCK_FILE).unlink(missing_ok=True)
            self.run_dir.rmdir()
        elif clean and self._created_file:  # while still locked: another run cannot hold the removed file
            (self.run_dir / LOCK_FILE).unlink(missing_ok=True)
        self._file.close()  # closing the descriptor drops the flock
        self._file = None

    def __enter__(self) -> "RunDirectoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
