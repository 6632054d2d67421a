"""Tests of ratio_fast.data.loaders: the three loader kinds keep one contract and give the same
batches (CPU; DALI with device_id=None); the resident loader's batches; `--loader auto`.

The gpu loader is the reference: its augmentation is checked against PIL in
tests/test_data_augment.py. The torch loader must equal it bit for bit for every (seed,
epoch, index) and every --augment, whatever order the batches are asked in, which is what exact
resume needs; so must DALI for crop_flip and none (its AutoAugment: tests/test_data_dali.py).

`--loader auto` on a GPU: the candidates that can hold the set are measured once, the fastest
wins, and the answer is cached. On CPU, timers are injected (as tests/test_speed.py does for the
attack schedule): each fake timer still runs the real loader's batches, then reports its time.
"""

from __future__ import annotations

import functools
import io
import json

import numpy as np
import pytest
import torch

from ratio_fast.config import TrainConfig
from ratio_fast.data import BatchSpec, choose_loader_kind, loaders, make_loader, make_synthetic
from ratio_fast.data.dali import DaliLoader
from ratio_fast.data.loaders import DEVICE_RESIDENT_MAX_BYTES, MEASURED_BATCHES, ResidentLoader, TorchLoader
from ratio_fast.data.sources import ArraySource, ImageSource
from ratio_fast.datasets import CIFAR10
from ratio_fast.errors import UserError
from conftest import no_host_sync

STREAMING = ["torch", "dali"]


def reference_and(kind, images, labels, batch_size, **spec):
    spec = BatchSpec(batch_size, **{"seed": 5, **spec})
    return make_loader("gpu", images, labels, spec, "cpu"), make_loader(kind, images, labels, spec, "cpu", workers=0)


def assert_same(a, b):
    (xa, ya), (xb, yb) = a, b
    assert xa.shape == xb.shape and xa.dtype == xb.dtype == torch.float32
    assert xa.stride() == xb.stride()  # same memory format
    assert torch.equal(xa, xb)
    assert (ya is None and yb is None) or torch.equal(ya, yb)


@pytest.mark.parametrize("kind", STREAMING)
@pytest.mark.parametrize("options", [
    dict(),
    dict(channels_last=True),
    dict(augment="crop_flip"),
    dict(augment="none"),
    dict(shuffle=False, augment="none"),
    dict(drop_last=False),
], ids=["default", "channels_last", "crop_flip", "none", "in_order", "keep_last"])
def test_streaming_loader_equals_resident_loader(kind, options):
    if kind == "dali" and options.get("augment", "autoaugment_cutout") == "autoaugment_cutout":
        options = {**options, "augment": "crop_flip"}  # DALI's own AutoAugment kernels: tests/test_data_dali.py
    x, y = make_synthetic(300)
    ref, other = reference_and(kind, x, y, 64, **options)
    assert len(ref) == len(other) == (4 if options.get("drop_last", True) else 5)
    # In order through an epoch boundary, then jumps back and forth (each reopens the stream).
    order = [(0, i) for i in range(len(ref))] + [(1, 0), (1, 1), (3, 2), (0, 1), (3, 3), (1, 0)]
    for epoch, index in order:
        assert_same(ref.batch(epoch, index), other.batch(epoch, index))


@pytest.mark.parametrize("kind", STREAMING)
def test_unlabelled_memmap_source(kind, tmp_path):
    """Out-distribution shape: no labels, a memory-mapped .npy read batch by batch."""
    from ratio_fast.data import load_out_distribution

    z = np.random.default_rng(1).integers(0, 256, (130, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "z.npy", z)
    source = load_out_distribution(str(tmp_path / "z.npy"), tmp_path, in_name="cifar10")
    ref, other = reference_and(kind, source, None, 32, augment="autoaugment_cutout" if kind == "torch" else "crop_flip")
    for index in range(len(ref)):
        xb, yb = other.batch(2, index)
        assert yb is None and xb.shape == (32, 3, 32, 32) and 0 <= xb.min() and xb.max() <= 1
        assert_same(ref.batch(2, index), (xb, yb))

def test_factory_kinds_and_auto_rule():
    x, y = make_synthetic(64)
    spec = BatchSpec(32)
    assert isinstance(make_loader("gpu", x, y, spec, "cpu"), ResidentLoader)
    assert isinstance(make_loader("torch", x, y, spec, "cpu"), TorchLoader)
    assert isinstance(make_loader("dali", x, y, spec, "cpu"), DaliLoader)
    # Small in-memory sets stay resident; big or decoded sets stream (DALI is installed here).
    assert choose_loader_kind("auto", x, "cpu").kind == "gpu"
    assert isinstance(make_loader("auto", x, y, spec, "cpu"), ResidentLoader)

    class Huge(ImageSource):
        def __len__(self):
            return DEVICE_RESIDENT_MAX_BYTES // 3072 + 1

    class Decoded(ArraySource):
        decodes = True

    assert choose_loader_kind("auto", Huge(), "cpu").kind == "dali"
    assert choose_loader_kind("auto", Decoded(x), "cpu").kind == "dali"
    assert choose_loader_kind("torch", Huge(), "cpu").kind == "torch"
    with pytest.raises(UserError, match="--loader gpu.*GiB"):
        make_loader("gpu", Huge(), None, spec, "cpu")
    with pytest.raises(UserError, match="--loader: unknown loader 'fast'"):
        make_loader("fast", x, y, spec, "cpu")
    with pytest.raises(UserError, match="--augment: unknown augmentation 'autoaugment'"):
        BatchSpec(32, augment="autoaugment")


@pytest.mark.gpu
@pytest.mark.parametrize("augment", ["crop_flip", "autoaugment_cutout"])
@pytest.mark.parametrize("kind", STREAMING)
def test_streaming_loaders_on_cuda_equal_resident_loader(kind, augment):
    """On CUDA too: the torch loader's CPU workers and the resident loader's CUDA kernels give the same bits."""
    if kind == "dali":
        pytest.importorskip("nvidia.dali", reason="DALI is not installed on this GPU machine")
        if augment == "autoaugment_cutout":
            pytest.skip("DALI's AutoAugment kernels differ by design: tests/test_data_dali.py bounds them")
    x, y = make_synthetic(512)
    spec = BatchSpec(128, seed=3, augment=augment, channels_last=True)
    ref = make_loader("gpu", x, y, spec, "cuda")
    other = make_loader(kind, x, y, spec, "cuda", workers=2)
    for epoch, index in [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (2, 2)]:
        xa, ya = ref.batch(epoch, index)
        xb, yb = other.batch(epoch, index)
        assert xb.is_cuda and yb.is_cuda
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# --- the resident loader ----------------------------------------------------------------------


def resident(images, labels, batch_size, **spec):
    return ResidentLoader(images, labels, BatchSpec(batch_size, **spec), "cpu")


def _id_images(n: int) -> np.ndarray:
    """Image i has value (i mod 256) at every pixel of channel 0 and i // 256 in channel 1."""
    x = np.zeros((n, 32, 32, 3), np.uint8)
    x[..., 0] = (np.arange(n) % 256)[:, None, None]
    x[..., 1] = (np.arange(n) // 256)[:, None, None]
    x[..., 2] = 1
    return x


def _ids(x: torch.Tensor) -> np.ndarray:
    """Recover image ids from un-augmented batches made of ``_id_images``."""
    v = torch.round(x[:, :2, 0, 0] * 255).long()
    return (v[:, 0] + 256 * v[:, 1]).numpy()


def test_loader_batch_format():
    x, y = make_synthetic(300)
    for channels_last in (False, True):
        loader = resident(x, y, 128, channels_last=channels_last)
        xb, yb = loader.batch(0, 1)
        assert len(loader) == 2
        assert xb.shape == (128, 3, 32, 32) and xb.dtype == torch.float32
        assert yb.shape == (128,) and yb.dtype == torch.int64
        assert 0.0 <= xb.min() and xb.max() <= 1.0 and xb.max() > 0.9
        assert xb.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert xb.is_contiguous() != channels_last

    unlabelled = resident(torch.from_numpy(x), None, 100)
    xb, yb = unlabelled.batch(0, 0)
    assert yb is None and xb.shape == (100, 3, 32, 32)


def test_loader_labels_follow_images_through_shuffle_and_augment():
    labels = np.arange(500) % 10
    x = np.broadcast_to((labels * 20 + 5).astype(np.uint8)[:, None, None, None], (500, 32, 32, 3)).copy()
    loader = resident(x, labels, 64, seed=1, augment="crop_flip")
    for epoch in range(2):
        for xb, yb in loader.epoch(epoch):
            # Crops pad with zeros, so the image's value is its maximum.
            assert torch.equal(torch.round(xb.amax(dim=(1, 2, 3)) * 255).long(), yb * 20 + 5)


def test_loader_is_pure_function_of_seed_epoch_index():
    x, y = make_synthetic(400)
    a = resident(x, y, 64, seed=7)
    b = resident(x, y, 64, seed=7)
    c = resident(x, y, 64, seed=8)
    xa, ya = a.batch(3, 4)
    xb, yb = b.batch(3, 4)  # fresh instance, no earlier batches or epochs drawn
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, c.batch(3, 4)[0])
    assert not torch.equal(xa, a.batch(4, 4)[0])  # epochs differ
    assert torch.equal(xa, a.batch(3, 4)[0])  # back to epoch 3 after the cache moved on
    # Resuming mid-epoch gives the same batches as the full pass.
    full = list(a.epoch(2))
    resumed = list(b.epoch(2, start=3))
    assert len(resumed) == len(full) - 3
    for (x1, y1), (x2, y2) in zip(full[3:], resumed):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(next(iter(a))[0], a.batch(0, 0)[0])


def test_loader_drop_last_and_coverage():
    n = 300
    x = _id_images(n)
    keep = resident(x, None, 128, augment="none", drop_last=False)
    batches = [xb for xb, _ in keep.epoch(5)]
    assert len(keep) == 3 and [len(b) for b in batches] == [128, 128, 44]
    ids = np.concatenate([_ids(b) for b in batches])
    assert sorted(ids.tolist()) == list(range(n))  # every image exactly once per epoch
    assert not np.array_equal(ids, np.arange(n))  # shuffled

    drop = resident(x, None, 128, augment="none")
    assert len(drop) == 2
    with pytest.raises(IndexError):
        drop.batch(0, 2)

    ordered = ResidentLoader(x, None, BatchSpec.in_order(128), "cpu")  # what evaluation reads
    xb, _ = ordered.batch(0, 2)
    assert np.array_equal(_ids(xb), np.arange(256, 300))
    assert torch.equal(xb, torch.from_numpy(x[256:]).permute(0, 3, 1, 2).float() / 255)  # as is
    head = ordered.first(200)  # the first 200 images, in the same batches, the last one cut
    assert len(head) == 2 and head.num_samples == 200 and head.images.data_ptr() == ordered.images.data_ptr()
    assert torch.equal(head.batch(0, 1)[0], ordered.batch(0, 1)[0][:72])
    with pytest.raises(ValueError, match="shuffled"):
        keep.first(10)


def test_loader_rejects_bad_inputs():
    x, y = make_synthetic(10)
    with pytest.raises(ValueError):
        resident(x.astype(np.float32), y, 4)
    with pytest.raises(ValueError):
        resident(x, y[:5], 4)
    with pytest.raises(ValueError):
        resident(x, y, 16)  # drop_last leaves no batch


@pytest.mark.gpu
@pytest.mark.parametrize("augment", ["autoaugment_cutout", "crop_flip"])
def test_loader_batches_do_not_sync_the_host(augment):
    """The resident loader's batches, AutoAugment included, never wait for the GPU."""
    x, y = make_synthetic(512)
    loader = ResidentLoader(x, y, BatchSpec(128, augment=augment, channels_last=True), "cuda")
    loader.batch(0, 0)  # the epoch plan is copied to the device here, once
    with no_host_sync():
        xb, yb = loader.batch(0, 1)
    assert xb.is_cuda and yb.is_cuda
    assert torch.equal(xb.cpu(), ResidentLoader(x, y, loader.spec, "cpu").batch(0, 1)[0])  # CUDA = CPU, bit for bit


# --- --loader auto: measured once, the fastest wins, cached -----------------------------------

SECONDS_PER_CALL = {"gpu": 0.08, "dali": 0.02, "torch": 0.04}


class FakeTimer:
    """Loads the batches it is given (so the real loaders run), reports SECONDS_PER_CALL."""

    def __init__(self, seconds=SECONDS_PER_CALL):
        self.seconds = seconds
        self.measured = []

    def __call__(self, kind, run):
        run()
        self.measured.append(kind)
        return self.seconds[kind]


def choose(images, timer, cache, **spec):
    return choose_loader_kind("auto", images, "cpu", BatchSpec(64, **spec), workers=0, timer=timer, cache=cache)


def test_fastest_measured_kind_wins_then_the_cache_answers(tmp_path):
    x, _ = make_synthetic(200)
    cache, timer = tmp_path / "loaders.json", FakeTimer()
    first = choose(x, timer, cache)
    assert (first.kind, first.cached, sorted(timer.measured)) == ("dali", False, ["dali", "gpu", "torch"])
    assert first.images_per_s == pytest.approx({kind: 64 * MEASURED_BATCHES / s for kind, s in SECONDS_PER_CALL.items()})
    assert first.describe() == (f"loader auto: dali 25.6k img/s, torch 12.8k img/s, gpu 6.4k img/s -> dali "
                                f"(measured now, cached in {cache})")

    again = choose(x, timer, cache)  # a later or resumed run: same key, no measuring
    assert (again.kind, again.cached, len(timer.measured)) == ("dali", True, 3)
    assert again.images_per_s == pytest.approx(first.images_per_s)
    assert f"read from {cache}" in again.describe()
    assert len(timer.measured) == 3

    # What decides the answer is in the key: another batch size or augmentation is measured anew.
    other = FakeTimer({"gpu": 0.01, "dali": 0.02, "torch": 0.04})
    assert choose(x, other, cache, augment="crop_flip").kind == "gpu" and len(other.measured) == 3
    assert choose_loader_kind("auto", x, "cpu", BatchSpec(32), workers=0, timer=other, cache=cache).kind == "gpu"
    assert len(other.measured) == 6
    assert len(json.loads(cache.read_text())) == 3


def test_a_corrupt_cache_is_measured_over(tmp_path):
    x, _ = make_synthetic(200)
    cache = tmp_path / "loaders.json"
    cache.write_text("{ torn")
    timer = FakeTimer()
    choice = choose(x, timer, cache)
    assert (choice.kind, choice.cached, len(timer.measured)) == ("dali", False, 3)
    (entry,) = json.loads(cache.read_text()).values()  # rewritten whole
    assert entry["fastest"] == "dali"

    cache.write_text(json.dumps({key: {"fastest": "no-such-loader"} for key in json.loads(cache.read_text())}))
    assert choose(x, timer, cache).cached is False  # an entry naming no candidate is not trusted
    assert len(timer.measured) == 6


def test_kinds_that_cannot_hold_the_set_are_never_measured(tmp_path, monkeypatch):
    x, _ = make_synthetic(200)
    fastest_gpu = {"gpu": 0.001, "dali": 0.02, "torch": 0.04}

    class Decoded(ArraySource):
        decodes = True

    timer = FakeTimer(fastest_gpu)
    assert choose(Decoded(x), timer, tmp_path / "a.json").kind == "dali"  # decoding sets stream
    assert sorted(timer.measured) == ["dali", "torch"]

    monkeypatch.setattr(loaders, "DEVICE_RESIDENT_MAX_BYTES", x.nbytes - 1)  # too big for the device
    timer = FakeTimer(fastest_gpu)
    assert choose(x, timer, tmp_path / "b.json").kind == "dali"
    assert sorted(timer.measured) == ["dali", "torch"]

    monkeypatch.setattr(loaders, "dali_available", lambda: False)
    timer = FakeTimer(fastest_gpu)
    choice = choose(x, timer, tmp_path / "c.json")
    assert (choice.kind, choice.measured, timer.measured) == ("torch", False, [])  # nothing to compare
    assert not (tmp_path / "c.json").exists()


def test_cpu_without_a_timer_keeps_the_size_rule(tmp_path, monkeypatch):
    monkeypatch.setenv("RATIO_FAST_CACHE_DIR", str(tmp_path))
    x, _ = make_synthetic(200)
    choice = choose_loader_kind("auto", x, "cpu", BatchSpec(64))
    assert (choice.kind, choice.measured) == ("gpu", False)
    assert choose_loader_kind("torch", x, "cpu", BatchSpec(64)).kind == "torch"
    assert list(tmp_path.iterdir()) == []
    assert loaders.default_loader_cache_path() == tmp_path / "loader_choice.json"


def test_run_logs_the_measured_choice_and_passes_the_augmentation(tmp_path, monkeypatch):
    """Run wiring: the measured choice is logged; --augment reaches both training loaders (filled
    with the in-distribution's mean colour), the test loader stays in order and unaugmented."""
    from ratio_fast import run as run_module

    timer = FakeTimer({"gpu": 0.04, "dali": 0.08, "torch": 0.02})
    monkeypatch.setattr(run_module, "choose_loader_kind", functools.partial(
        choose_loader_kind, workers=0, timer=timer, cache=tmp_path / "loaders.json"))
    config = TrainConfig(arch="tiny", dataset="synthetic", synthetic_size=256, batch_size=32, device="cpu",
                         augment="autoaugment_cutout")
    log = io.StringIO()
    run = run_module.Run(config, tmp_path / "run", log=log)
    try:
        assert run.loader_kinds == ["torch", "torch"]
        assert run.train_loader.spec.augment == run.out_loader.spec.augment == "autoaugment_cutout"
        assert run.train_loader.spec.mean == run.out_loader.spec.mean == CIFAR10.mean
        assert run.out_loader.spec.seed == run.train_loader.spec.seed + 1
        assert run.test_loader.spec == BatchSpec.in_order(256)
        lines = [line for line in log.getvalue().splitlines() if line.startswith("loader auto:")]
        assert len(lines) == 2 and all(line.endswith("-> torch (measured now, cached in "
                                                     f"{tmp_path / 'loaders.json'})") for line in lines)
    finally:
        run.train_loader.close()
        run.out_loader.close()


@pytest.mark.gpu
def test_measures_real_loaders_on_cuda(tmp_path):
    x, _ = make_synthetic(2048)
    cache = tmp_path / "loaders.json"
    first = choose_loader_kind("auto", x, "cuda", BatchSpec(256), workers=2, cache=cache)
    candidates = loaders.auto_candidates(ArraySource(x))
    assert first.measured and not first.cached and set(first.images_per_s) == set(candidates)
    assert first.kind == max(first.images_per_s, key=first.images_per_s.get)
    assert all(rate > 0 for rate in first.images_per_s.values())
    again = choose_loader_kind("auto", x, "cuda", BatchSpec(256), workers=2, cache=cache)
    assert (again.kind, again.cached) == (first.kind, True)
