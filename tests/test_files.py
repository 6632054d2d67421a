"""Tests of ratio_fast.files' one atomic writer in the shape a download takes (atomic_copy): the
source's errors pass through as they were raised, the file system's become the one-line file
error, and either way no temporary file is left and the previous file is kept. The writer's
checkpoint-side guarantees (live and dead temporaries, permissions, a full disk mid-save) are in
test_run_integrity.py and test_faults.py, the CIFAR download's in test_data_cifar.py."""

from __future__ import annotations

import errno
import os

import pytest

from ratio_fast.errors import UserError
from ratio_fast.files import atomic_copy


def chunks_then(error: Exception):
    yield b"first bytes, "
    yield b"then the source fails"
    raise error


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_source_error_passes_through_unchanged_and_leaves_the_old_file(tmp_path):
    target = tmp_path / "archive.tar.gz"
    target.write_bytes(b"old")
    reset = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")  # an OSError, not the disk's
    with pytest.raises(ConnectionResetError) as info:
        atomic_copy(target, chunks_then(reset))
    assert info.value is reset
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.tar.gz"]


def test_a_file_system_error_is_the_one_line_file_error(tmp_path, monkeypatch):
    target = tmp_path / "archive.tar.gz"
    target.write_bytes(b"old")
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(UserError) as info:
        atomic_copy(target, iter([b"all ", b"of it"]), advice="free some space")
    monkeypatch.undo()
    assert str(info.value) == f"cannot write {target}: the disk is full; free some space"
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.tar.gz"]


def test_a_copy_writes_every_chunk(tmp_path):
    target = tmp_path / "deep" / "file.bin"
    atomic_copy(target, iter([b"a" * 5, b"", b"b" * 3]))
    assert target.read_bytes() == b"aaaaabbb"
