"""bench/cold_start.py's counts: what torch.compile compiled before the first RATIO step, put
down to the model call that compiled it. The tiny model through the 'aot_eager' backend gives
the same Dynamo graphs and AOTAutograd backwards as Inductor, in seconds instead of minutes."""
import functools

import pytest
import torch

FROZEN = ", weights frozen"


@pytest.fixture
def cold_start(bench_module, monkeypatch):
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    return bench_module("cold_start")


def test_a_given_schedule_compiles_each_call_once(cold_start):
    row = cold_start.measure("concat", batch=2, arch="tiny")
    assert (row["schedule"], row["compiled_graphs"], row["backward_graphs"]) == ("concat", 4, 2)
    assert [(call["call"], call["compiled_graphs"], call["backward_graphs"]) for call in row["calls"]] == [
        ("batch 2, eval, no grad", 1, 0),  # the clean forward
        (f"batch 4, eval, grad{FROZEN}", 1, 1),  # the joined attack's iterations
        (f"batch 4, eval, no grad{FROZEN}", 1, 0),  # its last iterate's score
        ("batch 4, train, grad", 1, 1),  # the training forward and backward
    ]


def test_auto_compiles_the_attacks_for_both_candidates(cold_start):
    row = cold_start.measure("auto", batch=2, arch="tiny")
    assert (row["compiled_graphs"], row["backward_graphs"]) == (6, 3)
    attack_batches = sorted(call["call"].split(",")[0] for call in row["calls"] if call["call"].endswith(FROZEN))
    assert attack_batches == ["batch 2", "batch 2", "batch 4", "batch 4"]  # streams' and concat's
    assert row["second_step_s"] > 0 and row["first_step_cpu_s"] > 0


def test_counting_is_per_span(cold_start):
    model = torch.compile(torch.nn.Linear(3, 2), dynamic=False)
    with cold_start.count_compiles() as first:
        model(torch.ones(2, 3)).sum().backward()
    with cold_start.count_compiles() as again:
        model(torch.ones(2, 3))  # compiled already
    with torch.no_grad(), cold_start.count_compiles() as no_grad:
        model(torch.ones(2, 3))  # another grad mode: a graph of its own
    assert (first["compiled_graphs"], first["backward_graphs"]) == (1, 1)
    assert again["compiled_graphs"] == again["backward_graphs"] == 0 and no_grad["compiled_graphs"] == 1
