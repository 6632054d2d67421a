"""Tests of ratio_fast.data.loaders: the kinds' builder table and `--loader auto`.

`--loader auto` on a GPU: the candidates that can hold the set and give the reference batches for
the run's --augment are measured once, the fastest wins, and the answer is cached. On CPU,
timers are injected (as tests/test_training_speed.py does for the attack schedule): each fake timer still
runs the real loader's batches, then reports its time. Measured choices here use crop_flip,
where every kind gives the reference batches; with AutoAugment DALI is left out.
"""

from __future__ import annotations

import functools
import io
import json

import pytest

from ratio_fast.config import TrainConfig
from ratio_fast.data import BatchSpec, choose_loader_kind, loaders, make_loader, make_synthetic
from ratio_fast.data.dali import DaliLoader
from ratio_fast.data.loaders import MEASURED_BATCHES
from ratio_fast.data.resident import DEVICE_RESIDENT_MAX_BYTES, ResidentLoader
from ratio_fast.data.sources import ArraySource, ImageSource
from ratio_fast.data.streaming import TorchLoader
from ratio_fast.datasets import CIFAR10
from ratio_fast.errors import UserError


def test_factory_kinds_and_auto_rule():
    x, y = make_synthetic(64)
    spec = BatchSpec(32)
    assert isinstance(make_loader("gpu", x, y, spec, "cpu"), ResidentLoader)
    assert isinstance(make_loader("torch", x, y, spec, "cpu"), TorchLoader)
    assert isinstance(make_loader("dali", x, y, spec, "cpu"), DaliLoader)
    # Small in-memory sets stay resident; big or decoded sets stream (DALI is installed here).
    assert choose_loader_kind("auto", x, "cpu", spec).kind == "gpu"
    assert isinstance(make_loader("auto", x, y, spec, "cpu"), ResidentLoader)

    class Huge(ImageSource):
        def __len__(self):
            return DEVICE_RESIDENT_MAX_BYTES // 3072 + 1

    class Decoded(ArraySource):
        decodes = True

    crop_flip = BatchSpec(32, augment="crop_flip")
    assert choose_loader_kind("auto", Huge(), "cpu", crop_flip).kind == "dali"
    assert choose_loader_kind("auto", Decoded(x), "cpu", crop_flip).kind == "dali"
    assert choose_loader_kind("torch", Huge(), "cpu", spec).kind == "torch"
    with pytest.raises(UserError, match="--loader gpu.*GiB"):
        make_loader("gpu", Huge(), None, spec, "cpu")
    with pytest.raises(UserError, match="--loader: unknown loader 'fast'"):
        make_loader("fast", x, y, spec, "cpu")
    with pytest.raises(UserError, match="--augment: unknown augmentation 'autoaugment'"):
        BatchSpec(32, augment="autoaugment")


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
    spec = BatchSpec(64, **{"augment": "crop_flip", **spec})
    return choose_loader_kind("auto", images, "cpu", spec, workers=0, timer=timer, cache=cache)


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
    assert choose(x, other, cache, augment="none").kind == "gpu" and len(other.measured) == 3
    assert choose_loader_kind("auto", x, "cpu", BatchSpec(32, augment="crop_flip"), workers=0, timer=other,
                              cache=cache).kind == "gpu"
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

    monkeypatch.setattr(loaders, "installed", lambda kind: kind.package is None)  # DALI missing
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


@pytest.mark.parametrize("augment", ["autoaugment_cutout", "crop_flip", "none"])
def test_auto_measures_only_loaders_that_give_the_reference_batches(tmp_path, augment):
    """DALI is the fastest here, but with AutoAugment its batches differ: auto leaves it out, says
    why, and picks the fastest of the others; --loader dali still gives it."""
    x, _ = make_synthetic(200)
    timer = FakeTimer({"gpu": 0.04, "dali": 0.01, "torch": 0.02})
    choice = choose(x, timer, tmp_path / "loaders.json", augment=augment)
    if augment == "autoaugment_cutout":
        assert (choice.kind, sorted(timer.measured), choice.candidates) == ("torch", ["gpu", "torch"], ("gpu", "torch"))
        assert choice.left_out == {"dali": "its AutoAugment is not PIL's bit for bit; --loader dali to use it anyway"}
        assert "; left out: dali (its AutoAugment is not PIL's bit for bit" in choice.describe()
    else:
        assert (choice.kind, sorted(timer.measured), choice.left_out) == ("dali", ["dali", "gpu", "torch"], {})
    asked = choose_loader_kind("dali", x, "cpu", BatchSpec(64, augment=augment))
    assert asked.kind == "dali"
    if augment == "autoaugment_cutout":
        assert asked.describe().startswith("loader dali: as asked, though with --augment autoaugment_cutout its "
                                           "batches are not the reference's bit for bit")
    else:
        assert asked.describe() == ""
    assert choose_loader_kind("gpu", x, "cpu", BatchSpec(64, augment=augment)).describe() == ""


def test_unmeasured_choice_names_what_it_left_out(tmp_path):
    """Without a measurement (a CPU) the line still says which loader auto took and why not the others."""
    x, _ = make_synthetic(200)

    class Huge(ImageSource):
        def __len__(self):
            return DEVICE_RESIDENT_MAX_BYTES // 3072 + 1

    small = choose_loader_kind("auto", x, "cpu", BatchSpec(64))
    assert small.describe() == ("loader auto: gpu, the first of gpu, torch (measured on CUDA only); left out: dali "
                                "(its AutoAugment is not PIL's bit for bit; --loader dali to use it anyway)")
    huge = choose_loader_kind("auto", Huge(), "cpu", BatchSpec(64))
    assert huge.kind == "torch" and huge.describe().startswith("loader auto: torch, the only candidate; left out: gpu "
                                                               "(the set is 8.0 GiB as uint8, above the 8 GiB")
    assert "; left out: dali (its AutoAugment" in huge.describe()


def test_run_logs_the_measured_choice_and_passes_the_augmentation(tmp_path, monkeypatch):
    """Run wiring: the measured choice is logged; --augment reaches both training loaders (filled
    with the in-distribution's mean colour), the test loader stays in order and unaugmented."""
    from ratio_fast.cli import run as run_module

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


def test_run_logs_an_unmeasured_choice_with_what_it_left_out(tmp_path):
    """On a CPU nothing is measured; the log still says which loader auto took and why not DALI,
    once for the in- and out-distribution loaders' equal choice."""
    from ratio_fast.cli.run import Run

    config = TrainConfig(arch="tiny", dataset="synthetic", synthetic_size=256, batch_size=32, device="cpu")
    log = io.StringIO()
    run = Run(config, tmp_path / "run", log=log)
    lines = [line for line in log.getvalue().splitlines() if line.startswith("loader auto:")]
    assert run.loader_kinds == ["gpu", "gpu"] and lines == [
        "loader auto: gpu, the first of gpu, torch (measured on CUDA only); left out: dali (its AutoAugment is not "
        "PIL's bit for bit; --loader dali to use it anyway)"]


@pytest.mark.gpu
def test_measures_real_loaders_on_cuda(tmp_path):
    x, _ = make_synthetic(2048)
    cache = tmp_path / "loaders.json"
    first = choose_loader_kind("auto", x, "cuda", BatchSpec(256), workers=2, cache=cache)
    candidates, _ = loaders.auto_candidates(ArraySource(x), BatchSpec(256))
    assert first.measured and not first.cached and set(first.images_per_s) == set(candidates)
    assert first.kind == max(first.images_per_s, key=first.images_per_s.get)
    assert all(rate > 0 for rate in first.images_per_s.values())
    again = choose_loader_kind("auto", x, "cuda", BatchSpec(256), workers=2, cache=cache)
    assert (again.kind, again.cached) == (first.kind, True)
