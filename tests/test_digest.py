"""digest.py: every archive and safetensors file ratio-fast writes carries the SHA-256 of its bytes,
stays loadable by torch.load / safetensors as it is, and any changed, cut or unrecorded byte is
found when it is loaded. (Runs, eval, export and resume on a damaged checkpoint:
test_run_integrity.py; kill -9 during writes: test_faults.py.)"""
import hashlib
import io
import warnings

import pytest
import torch
from safetensors.torch import load_file

from ratio_fast import digest
from ratio_fast.training.checkpoint import load_checkpoint, save_checkpoint
from ratio_fast.digest import TRAILER_HEAD, TRAILER_SIZE, DamagedFile, load_torch, verify
from ratio_fast.errors import Note
from ratio_fast.evaluation.evaluate import EvalState
from ratio_fast.files import atomic_save, atomic_write_safetensors

PAYLOAD = {"w": torch.arange(60_000, dtype=torch.float32), "n": 3}


def flipped(path, offset, count=400):
    data = bytearray(path.read_bytes())
    data[offset:offset + count] = bytes(b ^ 0xFF for b in data[offset:offset + count])
    path.write_bytes(bytes(data))


def test_an_archive_ends_with_the_sha256_of_the_bytes_before_it_and_loads_anywhere(tmp_path):
    path = tmp_path / "a.pt"
    atomic_save(path, PAYLOAD)
    data = path.read_bytes()
    body, record = data[:-TRAILER_SIZE], data[-TRAILER_SIZE:]
    assert record == TRAILER_HEAD + hashlib.sha256(body).hexdigest().encode() + b"\n"
    assert verify(path) == hashlib.sha256(body).hexdigest()
    buffer = io.BytesIO()
    torch.save(PAYLOAD, buffer)
    assert body == buffer.getvalue()  # the archive torch.save writes, byte for byte
    for mmap in (False, True):  # anyone's torch.load reads it as it is
        assert torch.equal(torch.load(path, weights_only=True, mmap=mmap)["w"], PAYLOAD["w"])
    assert torch.equal(load_torch(path)["w"], PAYLOAD["w"])


def test_a_safetensors_file_keeps_its_format_with_the_digest_in_its_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    tensors = {"a": torch.randn(300, 7), "b": torch.arange(5)}
    atomic_write_safetensors(path, tensors, {"arch": "tiny"})
    loaded = load_file(path)
    assert torch.equal(loaded["a"], tensors["a"]) and torch.equal(loaded["b"], tensors["b"])
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    assert metadata["arch"] == "tiny" and verify(path) == metadata[digest.SAFETENSORS_KEY]
    data = path.read_bytes()
    assert metadata[digest.SAFETENSORS_KEY] == hashlib.sha256(
        data.replace(metadata[digest.SAFETENSORS_KEY].encode(), b"0" * 64)).hexdigest()


@pytest.mark.parametrize("where", ["inside", "digest", "header"])
def test_a_changed_byte_anywhere_is_a_mismatch(tmp_path, where):
    archive, tensors = tmp_path / "a.pt", tmp_path / "m.safetensors"
    atomic_save(archive, PAYLOAD)
    atomic_write_safetensors(tensors, {"a": torch.randn(60_000)})
    offsets = {"inside": (200_000, 200_000), "digest": (archive.stat().st_size - 10, 80),
               "header": (40, 20)}[where]
    for path, offset in zip((archive, tensors), offsets):
        flipped(path, offset, count=1)
        with pytest.raises(DamagedFile, match="corrupted: checksum mismatch") as error:
            verify(path)
        assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("damage", ["cut", "record", "junk"])
def test_a_cut_file_or_a_damaged_record_is_not_taken_for_an_old_one(tmp_path, damage):
    path = tmp_path / "a.pt"
    atomic_save(path, PAYLOAD)
    data = path.read_bytes()
    path.write_bytes({"cut": data[: len(data) // 2],
                      "record": data[:-TRAILER_SIZE] + b"\nratio-fist" + data[-TRAILER_SIZE + 11:],
                      "junk": b"\x00garbage"}[damage])
    with pytest.raises(DamagedFile, match="not a readable file"):
        verify(path)
    with pytest.raises(DamagedFile):  # torch.load alone would read the archive in front of a damaged record
        load_torch(path)


def test_files_from_before_checksums_load_with_a_note(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": "ratio-fast-checkpoint-v1", "config": {"arch": "tiny"}, "trainer": {}}, path)
    with pytest.warns(Note, match="old.pt has no checksum"):
        assert load_checkpoint(path)["config"]["arch"] == "tiny"
    old_state = tmp_path / "eval_state.pt"
    torch.save({"identity": {"id": 1}, "parts": {"p": {0: {"v": torch.ones(2)}}}}, old_state)
    with pytest.warns(Note, match="has no checksum"):
        assert EvalState(old_state, {"id": 1}).done("p", 0)


def test_a_file_is_read_once_to_check_it_while_it_stays_the_same(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"config": {"arch": "tiny"}, "trainer": {"w": torch.ones(3)}})
    checks = []
    real = digest._check
    monkeypatch.setattr(digest, "_check", lambda *a: checks.append(1) or real(*a))
    for _ in range(3):  # train --resume reads the settings, then the state; eval reads it three times
        load_checkpoint(path)
    assert len(checks) == 1
    save_checkpoint(path, {"config": {"arch": "tiny"}, "trainer": {"w": torch.zeros(3)}})  # a new file
    assert torch.equal(load_checkpoint(path)["trainer"]["w"], torch.zeros(3)) and len(checks) == 2


def test_writing_hashes_the_bytes_on_their_way_without_reading_the_file_back(tmp_path, monkeypatch):
    reads = []
    real_open = open

    def watched(file, mode="r", *args, **kwargs):
        if "r" in mode and str(file).startswith(str(tmp_path)):
            reads.append(file)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", watched)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        atomic_save(tmp_path / "a.pt", PAYLOAD)
    monkeypatch.undo()
    assert reads == [] and verify(tmp_path / "a.pt")
