"""The work model (bench/work_model.py): counted FLOPs and operator calls of a RATIO step.

The counts are shape-determined, so the claims are checked on the tiny model on the CPU with
2 / 3 attack steps (the step counts scale the counts, they do not change which way they go),
and the MFU constant on WRN-34-10 on the meta device (no arithmetic). The committed rows
(bench/results/*-work-model.jsonl, WRN-34-10 with 10 / 20 steps) must say the same.
"""
import json
from pathlib import Path

import pytest
import torch.fx.experimental._config as fx_config

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
AGREEMENT = 0.02  # the MFU numerator against the counted reference
STEPS = (2, 3)


@pytest.fixture(scope="module")
def work_model(bench_module):
    return bench_module("work_model")


@pytest.fixture(scope="module")
def tiny_counts(work_model):
    """name -> (step, attack phase) Work of the tiny model at batch 2+2."""
    ratio, data = work_model.reference("tiny", 2, steps=STEPS)
    counts = {"reference": (work_model.count(lambda: ratio.step(*data)), work_model.count(lambda: ratio.attack(*data)))}
    for variant, overrides in work_model.ENGINE_VARIANTS.items():
        trainer, data = work_model.engine("tiny", 2, steps=STEPS, **overrides)
        counts[variant] = (work_model.count(lambda: trainer.step(*data)),
                           work_model.count(lambda: trainer.adversarial_examples(*data)))
    return counts


def test_the_mfu_constant_agrees_with_the_counted_reference(work_model):
    # The reference keeps the best iterate with boolean masks; on the meta device their size is
    # taken as the whole batch, which moves no FLOPs (masking is not arithmetic).
    with fx_config.patch(meta_nonzero_assume_all_nonzero=True):
        ratio, data = work_model.reference("wrn34", 1, device="meta")
        step = work_model.count(lambda: ratio.step(*data))
    assert step.flops == pytest.approx(work_model.FLOP_PER_PAIR, rel=AGREEMENT)


def test_input_gradient_attacks_cost_what_the_reference_costs(work_model, tiny_counts):
    """autograd.grad(loss, x) with the weights still requiring grad (reference.py, the authors'
    ArgminPGD) asks the convolution backward for the input gradient only: freezing the weights
    (the engine) saves nothing against it; asking for weight gradients too costs more."""
    _, reference = tiny_counts["reference"]
    _, frozen = tiny_counts["sequential, fused step"]
    _, with_weight_grads = tiny_counts["weight grads in attacks"]
    clean_forward = work_model.clean_forward_flops("tiny", 2)  # the engine's one extra forward
    assert frozen.flops == reference.flops + clean_forward
    assert with_weight_grads.flops > frozen.flops * 1.3


def test_under_compile_frozen_weights_halve_the_attack_backward(work_model):
    """AOTAutograd's compiled backward computes every gradient it was compiled for, asked or not."""
    frozen = work_model.compiled_attack_iteration_flops("tiny", weights_require_grad=False)
    not_frozen = work_model.compiled_attack_iteration_flops("tiny", weights_require_grad=True)
    assert frozen["forward"] == not_frozen["forward"] == frozen["backward"]  # input gradient: one forward's worth
    assert not_frozen["backward"] == 2 * frozen["backward"]  # plus the weight gradients


def test_schedules_and_the_fused_step_change_operator_calls_not_flops(work_model, tiny_counts):
    sequential, _ = tiny_counts["sequential, fused step"]
    concat, _ = tiny_counts["concat, fused step"]
    reference, _ = tiny_counts["reference"]
    assert concat.flops == sequential.flops
    assert concat.calls < sequential.calls < reference.calls
    assert work_model.pgd_update_calls("native") == 1 and work_model.pgd_update_calls("torch") >= 12
    # The fused step accounts for the difference between the fused and plain-torch updates, per iteration.
    assert sequential.op_calls["ratio_fast.pgd_step"] == sum(STEPS)  # one call per attack iteration


def test_operator_calls_do_not_depend_on_the_device(work_model):
    """The committed rows were counted on a CPU; a meta-device count gives the same calls and FLOPs."""
    ratio, data = work_model.reference("tiny", 2, steps=STEPS)
    on_cpu = work_model.count(lambda: ratio.step(*data))
    with fx_config.patch(meta_nonzero_assume_all_nonzero=True):
        ratio, data = work_model.reference("tiny", 2, device="meta", steps=STEPS)
        on_meta = work_model.count(lambda: ratio.step(*data))
    assert (on_meta.flops, on_meta.op_calls) == (on_cpu.flops, on_cpu.op_calls)


def test_the_committed_rows_agree_with_the_constant(work_model):
    files = sorted(RESULTS.glob("*-work-model.jsonl"))
    assert files, "no committed work-model rows: run python3 bench/work_model.py"
    rows = {row["case"]: row for row in map(json.loads, files[-1].read_text().splitlines())}
    reference = rows["work_model::reference[authors' code]"]
    engine = rows["work_model::engine[sequential, fused step]"]
    assert reference["model"] == "wrn34"
    assert reference["flops_per_pair"] == pytest.approx(work_model.FLOP_PER_PAIR, rel=AGREEMENT)
    clean_forward = reference["clean_forward_flops_per_image"]
    assert engine["attack_flops_per_pair"] == reference["attack_flops_per_pair"] + clean_forward
    assert rows["work_model::engine[concat, fused step]"]["flops_per_pair"] == engine["flops_per_pair"]
    compiled = rows["work_model::compiled_attack_iteration[weights require grad]"]
    assert compiled["backward_flops_per_image"] == 2 * rows["work_model::compiled_attack_iteration[weights frozen]"][
        "backward_flops_per_image"]
