"""SHA-256 checksums of the files ratio-fast writes, kept inside each file and checked on every load.

Two layouts, each still loadable by everyone else's tools as it is:

- torch.save archives (checkpoint.pt, best.pt, model.pt, eval_state.pt): the zip archive is
  followed by one 84-byte record, b"\\nratio-fast sha256 " + 64 hex digits + b"\\n", the SHA-256
  of every byte before it. Zip readers (torch.load, Python's zipfile) find an archive by the end
  record they search for from the back, so bytes after it change nothing for them.
- safetensors files (model.safetensors, counterfactuals.safetensors): safetensors refuses any
  byte after its data, so the digest is the metadata entry `ratio_fast_sha256`: the SHA-256 of
  the whole file with those 64 digits written as zeros.

Writing hashes the bytes on their way to the file (`save_torch`) or in memory before they are
written (`safetensors_bytes`): no second read of a large file. The digest lands in the same
temporary file that `files.atomic_write` fsyncs and renames over the old one, so after a crash
or a kill -9 at any moment the name holds either the old file with its digest or the new one
with its own: the file and its digest never disagree.

Loading (`load_torch`, `verify`) reads the file once to check it. A file whose bytes changed is
`DamagedFile` (a UserError naming it). A torch archive that ends with the zip end record and no
digest record, or a safetensors file without the entry, was written before checksums (or by
another tool): it loads, with a `Note` that it is unverified. Any other ending (a file cut
short, a damaged digest record) is damaged. A file checked once is not read again by the same
process while it stays the same file (device, inode, size, modification time).
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

from .errors import Note, UserError

DIGEST_CHARS = 64  # hex digits of a SHA-256
TRAILER_HEAD = b"\nratio-fast sha256 "
TRAILER_SIZE = len(TRAILER_HEAD) + DIGEST_CHARS + 1  # the record after a torch archive, with its "\n"
SAFETENSORS_KEY = "ratio_fast_sha256"
_PLACEHOLDER = "0" * DIGEST_CHARS
_ZIP_END = b"PK\x05\x06"  # the zip end-of-central-directory record: 22 bytes when it has no comment
_ZIP_END_SIZE = 22
_CHUNK = 8 << 20

# (device, inode, size, mtime_ns) -> digest (None: written before checksums) of files already checked
_checked: dict[tuple[int, int, int, int], str | None] = {}


MISMATCH = "corrupted: checksum mismatch (its bytes changed after they were written)"


class DamagedFile(UserError):
    """A file whose content is not what was written: '<path>: <what is wrong>'."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


class _Hashing:
    """A write-only file object that hashes what passes through it to `out`."""

    def __init__(self, out: BinaryIO):
        self.out, self.sha256 = out, hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def save_torch(obj, out: BinaryIO) -> str:
    """torch.save(obj) to the open binary file `out`, then its digest record; returns the digest."""
    import torch

    hashing = _Hashing(out)
    torch.save(obj, hashing)
    digest = hashing.sha256.hexdigest()
    out.write(TRAILER_HEAD + digest.encode() + b"\n")
    return digest


def safetensors_bytes(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors file of `tensors` and `metadata`, with its digest in the metadata."""
    from safetensors.torch import save

    data = bytearray(save(tensors, metadata={**(metadata or {}), SAFETENSORS_KEY: _PLACEHOLDER}))
    start = _digest_offset(data)
    data[start:start + DIGEST_CHARS] = hashlib.sha256(data).hexdigest().encode()
    return bytes(data)


def verify(path: str | Path) -> str | None:
    """The file's digest once its content matches it; None for a file written before checksums
    (with a Note that it is unverified); DamagedFile otherwise."""
    return _verify(Path(path))[0]


def load_torch(path: str | Path, map_location="cpu"):
    """torch.load(path, weights_only=True, memory-mapped) of a file `verify` passes.

    The bytes loaded are those checked: were the file replaced in between (a run writing the
    next checkpoint), it is checked again.
    """
    import torch

    path = Path(path)
    for _ in range(3):
        _, key = _verify(path)
        obj = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
        if _key(os.stat(path)) == key:
            return obj
    raise UserError(f"{path}: it keeps being replaced while it is read (is a run writing it?); try again")


def _verify(path: Path) -> tuple[str | None, tuple]:
    with open(path, "rb") as f:
        key = _key(os.fstat(f.fileno()))
        # A file checked before is the same file if its key and the digest it records still match
        # (a new file can get a freed inode number, its size and, within the clock's tick, its mtime).
        if key not in _checked or _checked[key] != _recorded(f, key[2]):
            _checked[key] = digest = _check(f, path, key[2])
            if digest is None:  # said once per file, however often it is loaded
                warnings.warn(Note(f"{path} has no checksum (written before ratio-fast stored them): not verified"),
                              stacklevel=3)
    return _checked[key], key


def _key(stat: os.stat_result) -> tuple[int, int, int, int]:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def _recorded(f: BinaryIO, size: int) -> str | None:
    """The digest a file records (its archive's record or its safetensors entry), unchecked; None if none."""
    if size >= TRAILER_SIZE:
        f.seek(size - TRAILER_SIZE)
        tail = f.read(TRAILER_SIZE)
        if tail.startswith(TRAILER_HEAD):
            return tail[len(TRAILER_HEAD):-1].decode("ascii", "replace")
    f.seek(0)
    head = f.read(8)
    if len(head) == 8:
        header_size = struct.unpack("<Q", head)[0]
        if header_size < size - 8:
            header = head + f.read(header_size)
            try:
                start = _digest_offset(header)
            except ValueError:
                return None
            return header[start:start + DIGEST_CHARS].decode("ascii", "replace")
    return None


def _check(f: BinaryIO, path: Path, size: int) -> str | None:
    head = f.read(8)
    if len(head) == 8 and head[:4] != b"PK\x03\x04":  # not a zip archive: a safetensors file?
        header_size = struct.unpack("<Q", head)[0]
        if header_size < size - 8 and f.read(1) == b"{":
            return _check_safetensors(f, path, 8 + header_size)
    if size >= TRAILER_SIZE:
        f.seek(size - TRAILER_SIZE)
        tail = f.read(TRAILER_SIZE)
        if tail.startswith(TRAILER_HEAD) and tail.endswith(b"\n"):
            expected = tail[len(TRAILER_HEAD):-1].decode("ascii", "replace")
            f.seek(0)
            if _sha256(f, size - TRAILER_SIZE).hexdigest() != expected:
                raise DamagedFile(path, MISMATCH)
            return expected
    if size >= _ZIP_END_SIZE:
        f.seek(size - _ZIP_END_SIZE)
        end = f.read(_ZIP_END_SIZE)
        if end.startswith(_ZIP_END) and end.endswith(b"\x00\x00"):  # a bare archive: written before checksums
            return None
    raise DamagedFile(path, "not a readable file: it ends with neither a checksum nor the end of an archive "
                            "(cut short, or not written by ratio-fast)")


def _check_safetensors(f: BinaryIO, path: Path, data_start: int) -> str | None:
    f.seek(0)
    head = f.read(data_start)
    try:
        start = _digest_offset(head)
    except ValueError:  # another tool's file, or one written before checksums
        return None
    expected = head[start:start + DIGEST_CHARS].decode("ascii", "replace")
    sha256 = hashlib.sha256(head[:start] + _PLACEHOLDER.encode() + head[start + DIGEST_CHARS:])
    f.seek(data_start)
    _sha256(f, None, sha256)
    if sha256.hexdigest() != expected:
        raise DamagedFile(path, MISMATCH)
    return expected


def _digest_offset(data: bytes | bytearray) -> int:
    """Where the 64 digits of the digest start in a safetensors file's header; ValueError if absent."""
    header_size = struct.unpack("<Q", bytes(data[:8]))[0]
    marker = json.dumps(SAFETENSORS_KEY).encode() + b":\""
    at = bytes(data[8:8 + header_size]).find(marker)
    if at < 0:
        raise ValueError(f"no {SAFETENSORS_KEY} in the header")
    return 8 + at + len(marker)


def _sha256(f: BinaryIO, limit: int | None, sha256=None):
    """Hash the next `limit` bytes of f (all of them for None) into sha256 (a new one by default)."""
    sha256 = sha256 or hashlib.sha256()
    left = limit
    while left is None or left > 0:
        chunk = f.read(_CHUNK if left is None else min(_CHUNK, left))
        if not chunk:
            break
        sha256.update(chunk)
        if left is not None:
            left -= len(chunk)
    return sha256
