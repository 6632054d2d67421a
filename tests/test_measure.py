"""measure.py: the fastest candidate measured once per setting and cached, and the cache key.

The attack schedule and the loader choice both go through `fastest`; their own tests check
what they add (candidates, key contents, the logged line). A torn cache: test_data_loaders.
"""
import json

import pytest
import torch

from ratio_fast.measure import fastest, setting_key


def test_each_candidate_is_measured_once_per_key_then_the_cache_answers(tmp_path):
    cache, measured = tmp_path / "cache.json", []

    def measure(name):
        measured.append(name)
        return {"a": 0.020, "b": 0.012}[name]

    first = fastest("setting 1", measure, ("a", "b"), cache)
    assert (first.best, first.cached, sorted(measured)) == ("b", False, ["a", "b"])
    assert first.timings_ms == pytest.approx({"a": 20.0, "b": 12.0})

    again = fastest("setting 1", measure, ("a", "b"), cache)  # a later or resumed run
    assert (again.best, again.cached, len(measured)) == ("b", True, 2)
    assert again.timings_ms == pytest.approx(first.timings_ms)

    other = fastest("setting 2", lambda name: {"a": 1.0, "b": 2.0}[name], ("a", "b"), cache)
    assert (other.best, other.cached) == ("a", False)
    assert set(json.loads(cache.read_text())) == {"setting 1", "setting 2"}


def test_a_cache_that_cannot_be_written_only_costs_a_measurement_next_time(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cache = blocker / "cache.json"  # its folder is a file: every write fails
    for _ in range(2):
        assert fastest("setting", lambda name: {"a": 2.0, "b": 1.0}[name], ("a", "b"), cache).cached is False
    assert not cache.exists()


def test_the_key_names_the_device_the_setting_and_the_torch_version():
    key = setting_key(torch.device("cpu"), "batch 64", "bf16")
    assert key == f"cpu | batch 64 | bf16 | torch {torch.__version__}"
