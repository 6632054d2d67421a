"""Robust evaluation speed: `ratio-fast eval`'s APGD-CE + APGD-T against AutoAttack's own, images per second.

CPU: the tiny model trained for a few seconds on the synthetic set (robust enough that APGD-T
has work), 64 test images, L2 0.5, 100 steps, 9 targets: the full cascade (clean, APGD-CE on
the clean-correct points, APGD-T on those still robust), and the same pair from the
`pyautoattack` package on the same points, so `speedup_vs_autoattack` is measured in this
process. Rows carry `images_per_s` (test images evaluated per second), the robust counts of
both (ours must not be higher), and `gradient_rows` (image-gradient evaluations ours made).

GPU: WRN-34-10, untrained (so every row is attacked: the cost does not depend on what the
model has learned), one batch of 256 images through APGD-CE and through APGD-T's 2304
(image, target) rows, with and without CUDA graphs. From the seconds per image-step it projects
the time of AutoAttack-equivalent APGD-CE + APGD-T on 10,000 CIFAR-10 test images for a model
with the accuracies of `PROJECTED_MODEL` (`projected_10k_minutes`; the moonshot: under 10).
"""
from __future__ import annotations

import os
import time

import pytest
import torch

from ratio_fast import create_model
from ratio_fast.attacks.apgd import APGDTargeted, apgd_run, random_start_point
from ratio_fast.config import EvalConfig
from ratio_fast.evaluation.evaluate import AttackCalls, EvalState, batch_source, evaluate_model

EPS, STEPS, TARGETS = 0.5, 100, 9
CPU_IMAGES = 64
if os.environ.get("RATIO_FAST_BENCH_QUICK") == "1":  # seconds, not minutes: for testing the tooling itself
    STEPS, CPU_IMAGES = 5, 16
# Fractions of the 10,000 test images each attack runs on, for the projection: clean accuracy
# (APGD-CE attacks those) and robust accuracy after APGD-CE (APGD-T attacks those), about
# those of the authors' RATIO WRN-34-10 at L2 0.5 (RobustBench: ~92 % clean, ~77 % robust).
PROJECTED_MODEL = {"clean": 0.92, "after_apgd_ce": 0.78}


def trained_tiny_and_points(n: int):
    """The tiny model after 3 clean epochs on 1024 synthetic images, and n test points as uint8 images."""
    from ratio_fast.data.synthetic import make_synthetic

    torch.manual_seed(0)
    model = create_model("tiny")
    images, labels = make_synthetic(1024, seed=0)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    y = torch.from_numpy(labels)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    for _ in range(3):
        for idx in torch.randperm(len(y)).split(64):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    test_images, test_labels = make_synthetic(n, seed=1)
    return model.eval(), test_images, test_labels


@pytest.mark.benchmark(group="eval-cpu")
def test_eval_cpu(benchmark, tmp_path):
    from ratio_fast.evaluation.autoattack_package import AutoAttackPackage

    model, images, labels = trained_tiny_and_points(CPU_IMAGES)
    source = batch_source(images, labels, batch_size=CPU_IMAGES, device="cpu")
    settings = EvalConfig(eps=EPS, steps=STEPS, targets=TARGETS, ood_steps=0, batch_size=CPU_IMAGES)
    rounds = iter(range(1000))

    def ours():  # a fresh state each round: nothing is resumed
        return evaluate_model(model, source, {}, settings, EvalState(tmp_path / f"{next(rounds)}.pt", {}))

    results = benchmark.pedantic(ours, rounds=2, iterations=1, warmup_rounds=0)
    seconds = benchmark.stats.stats.median
    x, y = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).contiguous(), torch.from_numpy(labels)
    began = time.perf_counter()
    theirs = AutoAttackPackage(EPS, attacks=("apgd-ce", "apgd-t")).robust(model, x, y, seed=0)
    autoattack_s = time.perf_counter() - began
    clean, after_ce = results["clean_accuracy"], results["robust"]["apgd-ce"]
    benchmark.extra_info.update(
        device="cpu", threads=torch.get_num_threads(), model="tiny", images=CPU_IMAGES, eps=EPS, steps=STEPS,
        targets=TARGETS, images_per_s=CPU_IMAGES / seconds, autoattack_s=autoattack_s,
        autoattack_images_per_s=CPU_IMAGES / autoattack_s, speedup_vs_autoattack=autoattack_s / seconds,
        robust=round(results["robust"]["all"] * CPU_IMAGES), autoattack_robust=int(theirs.sum()),
        clean_correct=round(clean * CPU_IMAGES), robust_after_apgd_ce=round(after_ce * CPU_IMAGES),
        gradient_rows=round((clean + TARGETS * after_ce) * CPU_IMAGES * STEPS))


@pytest.mark.gpu
@pytest.mark.benchmark(group="eval-gpu")
@pytest.mark.parametrize("graphs", [True, False], ids=["cuda-graphs", "eager"])
def test_eval_attacks_gpu(benchmark, graphs):
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = create_model("wrn34").cuda().eval()
    x = torch.rand(256, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (256,), device="cuda")
    calls = AttackCalls(256, graphs)
    targeted = APGDTargeted(EPS, STEPS, targets=TARGETS, check_inputs=False)  # as evaluation/evaluate.py: no sync
    target_rows = targeted.attack_rows(model)
    generator = torch.Generator(device="cuda").manual_seed(0)

    def ce_rows(x, y, start):
        return apgd_run(model, x, y, eps=EPS, steps=STEPS, start=start, count_misclassified=True, check_inputs=False)

    def both():
        calls("apgd-ce", ce_rows, x, y, random_start_point(x, EPS, generator))
        targeted.run(model, x, y, generator, attack_rows=lambda *rows: calls("apgd-t", target_rows, *rows))
        torch.cuda.synchronize()

    began = time.perf_counter()
    both()  # cuDNN plans, Triton compilation, graph capture: reported, not timed
    first_s = time.perf_counter() - began
    benchmark.pedantic(both, rounds=3, iterations=1, warmup_rounds=0)
    seconds = benchmark.stats.stats.median
    row_steps = 256 * STEPS * (1 + TARGETS)
    per_row_step = seconds / row_steps
    projected = 10_000 * STEPS * (PROJECTED_MODEL["clean"] + TARGETS * PROJECTED_MODEL["after_apgd_ce"]) * per_row_step
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name(0), model="wrn34", images=256, eps=EPS, steps=STEPS, targets=TARGETS,
        cuda_graphs=graphs, first_call_s=first_s, row_steps_per_s=1 / per_row_step,
        images_per_s=256 / seconds, projected_10k_minutes=projected / 60, projection_assumes=PROJECTED_MODEL)
