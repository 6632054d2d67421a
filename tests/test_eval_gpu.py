"""Evaluation on a CUDA device: they skip on CPU-only machines (CI) and run on a lent GPU.

APGD's loop, APGD-T's batched targets and the evaluation's CUDA-graph replay: no host
synchronization inside an attack, and graphed calls (padded to a fixed row count) give the
eager numbers.
"""
import pytest
import torch

from ratio_fast import create_model
from ratio_fast.attacks.apgd import APGDTargeted, apgd_run, random_start_point
from ratio_fast.config import EvalConfig
from ratio_fast.evaluation.evaluate import EvalState, batch_source, evaluate_model
from conftest import no_host_sync

pytestmark = pytest.mark.gpu


def test_apgd_and_apgd_t_never_synchronize_with_the_host():
    torch.manual_seed(0)
    model = create_model("tiny").cuda().eval()
    x = torch.rand(32, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (32,), device="cuda")
    start = random_start_point(x, 0.5)
    targeted = APGDTargeted(0.5, 5, targets=3)

    def attacks():
        apgd_run(model, x, y, eps=0.5, steps=5, start=start, count_misclassified=True)
        targeted.run(model, x, y)

    attacks()  # warm-up: cuDNN plans, kernel compilation
    torch.cuda.synchronize()
    with no_host_sync():
        attacks()


def test_graphed_evaluation_gives_the_eager_numbers(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny").cuda().eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (80, 32, 32, 3), dtype=torch.uint8, generator=g).numpy()
    with torch.no_grad():  # label every image with the model's own prediction: all clean-correct, all attacked
        labels = model(torch.from_numpy(images).cuda().permute(0, 3, 1, 2).float() / 255).argmax(1).cpu().numpy()
    test = batch_source(images, labels, batch_size=32, device="cuda")  # 32, 32, 16: the last call is padded
    ood = {"noise": batch_source(images[::-1].copy(), None, batch_size=32, device="cuda")}
    results = {}
    for graphs in (False, True):
        settings = EvalConfig(eps=0.1, steps=5, targets=3, ood_steps=5, batch_size=32, cuda_graphs=graphs)
        results[graphs] = evaluate_model(model, test, ood, settings, EvalState(tmp_path / f"{graphs}.pt", {}))
    eager, graphed = results[False], results[True]
    for key in ("apgd-ce", "apgd-t"):
        assert graphed["robust"][key] == pytest.approx(eager["robust"][key], abs=1.5 / 80)  # one borderline point
    assert graphed["ood"]["noise"]["worst_case_mean_max_conf"] == pytest.approx(
        eager["ood"]["noise"]["worst_case_mean_max_conf"], rel=1e-3)
