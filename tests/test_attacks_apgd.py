"""APGD: the schedule, the constraints, its strength against PGD, the objectives, the call contract.

Iterate-for-iterate agreement with AutoAttack's own APGD is in test_attacks_apgd_autoattack.py.
"""
import pytest
import torch

from ratio_fast import L2PGD
from ratio_fast.attacks.apgd import APGD, APGDTargeted, apgd_run, checkpoints
from ratio_fast.attacks.objectives import cross_entropy, dlr, max_log_confidence, targeted_dlr
from conftest import Recording


def ce_and_accuracy(model, x, y):
    with torch.no_grad():
        logits = model(x)
    return cross_entropy(logits, y).mean().item(), (logits.argmax(1) == y).float().mean().item()


@pytest.fixture
def batch(synthetic_split):
    x, y = synthetic_split["test"]
    return x[:64], y[:64]


def test_checkpoint_schedule_is_autoattacks():
    # Windows of floor(0.22 N), each floor(0.03 N) shorter, at least floor(0.06 N) (all at least 1).
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(500) == [110, 205, 285, 350, 400, 435, 465, 495]
    assert checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert checkpoints(20) == [4, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    assert checkpoints(1) == [] and checkpoints(0) == []
    for steps in (3, 10, 37):
        marks = checkpoints(steps)
        assert marks == sorted(set(marks)) and all(0 < w < steps for w in marks)


def extreme_images(x):
    """Images with whole regions at 0 and at 1, where the box constraint bites."""
    x = x.clone()
    x[::2, :, :16] = 0.0
    x[1::2, :, 16:] = 1.0
    return x


@pytest.mark.parametrize("objective", ["ce", "dlr", "kl_uniform", "max_conf", "target_ce"])
def test_apgd_stays_in_ball_and_box(trained_tiny, batch, objective):
    x, y = batch
    x = extreme_images(x)
    eps = torch.linspace(0.0, 3.0, x.shape[0])
    labels = (y + 1) % 10 if objective == "target_ce" else y
    x_adv = apgd_run(trained_tiny, x, labels, eps=eps, steps=6, objective=objective,
                     generator=torch.Generator().manual_seed(0)).best
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert (norms <= eps + 1e-5).all()
    assert ((x_adv >= 0) & (x_adv <= 1)).all()
    assert torch.isfinite(x_adv).all()
    assert norms[0] == 0, "eps 0 must leave the image alone"
    assert norms[-1] > 0.5, "a large ball should be used"


def test_targeted_apgd_stays_in_ball_and_box(trained_tiny, batch):
    x, y = batch
    x = extreme_images(x)
    x_adv = APGDTargeted(eps=1.0, steps=4, targets=2)(trained_tiny, x, y, generator=torch.Generator().manual_seed(0))
    assert ((x_adv - x).flatten(1).norm(dim=1) <= 1.0 + 1e-5).all()
    assert ((x_adv >= 0) & (x_adv <= 1)).all()


def test_apgd_is_at_least_as_strong_as_pgd_with_the_same_budget(trained_tiny, synthetic_split):
    x, y = synthetic_split["test"]
    steps, eps = 10, 1.0
    apgd_ce, apgd_acc = ce_and_accuracy(trained_tiny, APGD(eps, steps)(trained_tiny, x, y,
                                        generator=torch.Generator().manual_seed(0)), y)
    pgd_attacks = {
        "textbook": L2PGD(eps, steps, eps / 4),
        "argmin (the authors')": L2PGD(eps, steps, 0.1, momentum=0.9, keep_best=True),
    }
    clean_ce, clean_acc = ce_and_accuracy(trained_tiny, x, y)
    assert apgd_acc < clean_acc - 0.3, "APGD must actually attack"
    for name, attack in pgd_attacks.items():
        pgd_ce, pgd_acc = ce_and_accuracy(trained_tiny, attack(trained_tiny, x, y), y)
        assert apgd_ce >= pgd_ce, name
        assert apgd_acc <= pgd_acc, name


def test_apgd_best_iterate_never_loses_to_the_start(trained_tiny, batch):
    x, y = batch
    x_adv = APGD(0.5, 5, random_start=False)(trained_tiny, x, y)
    with torch.no_grad():
        assert (cross_entropy(trained_tiny(x_adv), y) >= cross_entropy(trained_tiny(x), y) - 1e-6).all()


def test_targeted_attack_raises_target_confidence(trained_tiny, batch):
    x, y = batch
    target = (y + 3) % 10
    x_adv = APGD(1.5, 10, objective="target_ce", random_start=False)(trained_tiny, x, target)
    with torch.no_grad():
        before = trained_tiny(x).softmax(1).gather(1, target[:, None]).squeeze(1)
        after = trained_tiny(x_adv).softmax(1).gather(1, target[:, None]).squeeze(1)
    assert (after >= before).all()
    assert after.mean() > before.mean() + 0.3


def test_apgd_t_fools_at_least_as_many_as_one_target(trained_tiny, batch):
    x, y = batch
    one = APGDTargeted(1.0, 6, targets=1)(trained_tiny, x, y, generator=torch.Generator().manual_seed(0))
    three = APGDTargeted(1.0, 6, targets=3)(trained_tiny, x, y, generator=torch.Generator().manual_seed(0))
    _, acc_one = ce_and_accuracy(trained_tiny, one, y)
    _, acc_three = ce_and_accuracy(trained_tiny, three, y)
    _, clean = ce_and_accuracy(trained_tiny, x, y)
    assert acc_three <= acc_one < clean


def test_worst_case_ood_attack_raises_confidence(trained_tiny, synthetic_split):
    z = synthetic_split["out"][:64]
    z_adv = APGD(1.0, 10, objective="max_conf")(trained_tiny, z, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before, after = trained_tiny(z).softmax(1).amax(1), trained_tiny(z_adv).softmax(1).amax(1)
    assert after.mean() > before.mean() + 0.05
    assert (max_log_confidence(trained_tiny(z_adv)) <= 0).all()


def test_losses_on_hand_made_logits():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, -1.0]])
    y = torch.tensor([0, 0])
    # sample 0: correct, margin 2, z1 - z3 = 3; sample 1: wrong by 2, z1 - z3 = 2
    assert torch.allclose(dlr(logits, y), torch.tensor([-2 / 3, 2 / 2]))
    t = torch.tensor([1, 2])
    # denominators: 3 - (0 + -1)/2 = 3.5 and 2 - (0 + -1)/2 = 2.5
    assert torch.allclose(targeted_dlr(logits, y, t), torch.tensor([-2 / 3.5, 1 / 2.5]))
    assert torch.allclose(max_log_confidence(logits), logits.log_softmax(1).amax(1))


def test_call_contract_mode_restored_no_weight_grads_no_labels_for_out_distribution(trained_tiny, synthetic_split):
    model = trained_tiny.train()
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    try:
        z = synthetic_split["out"][:16]
        z_adv = APGD(1.0, 3, objective="kl_uniform")(model, z)
        assert model.training, "the attack must restore train mode"
        assert all(p.requires_grad for p in model.parameters()), "frozen weights must be unfrozen"
        for p, g in zip(model.parameters(), grads):
            assert (p.grad is None and g is None) or torch.equal(p.grad, g), "no weight gradient may change"
        assert z_adv.shape == z.shape and z_adv.dtype == z.dtype
    finally:
        trained_tiny.eval()


def test_channels_last_layout_is_kept(trained_tiny, batch):
    x, y = batch
    x = x.contiguous(memory_format=torch.channels_last)
    x_adv = APGD(0.5, 3)(trained_tiny, x, y)
    assert x_adv.is_contiguous(memory_format=torch.channels_last)


def test_bad_arguments():
    with pytest.raises(ValueError, match="eps"):
        APGD(-1.0, 10)
    with pytest.raises(ValueError, match="objective"):
        APGD(0.5, 10, objective="nope")
    with pytest.raises(ValueError, match="labels"):
        apgd_run(torch.nn.Linear(3, 3), torch.rand(2, 3), None, eps=0.5, steps=1, objective="ce")


def test_triton_kernels_give_the_reference_result(trained_tiny, batch):
    """The fused step (Triton interpreter on CPU) and the plain-torch reference run the same APGD."""
    x, y = batch
    x, y = x[:4], y[:4]
    runs = [apgd_run(trained_tiny, x, y, eps=1.0, steps=4, backend=backend, count_misclassified=True,
                     generator=torch.Generator().manual_seed(0)) for backend in ("torch", "triton")]
    assert torch.allclose(runs[0].best, runs[1].best, atol=1e-5)
    assert torch.equal(runs[0].fooled, runs[1].fooled)


def test_fooled_means_some_iterate_was_misclassified(trained_tiny, batch):
    """AutoAttack's success criterion: any iterate counts, not only the highest-loss one."""
    x, y = batch
    recording = Recording(trained_tiny).eval()
    result = apgd_run(recording, x, y, eps=1.0, steps=8, objective="ce", count_misclassified=True,
                      generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        wrong = torch.stack([trained_tiny(p).argmax(1) != y for p in recording.inputs])  # start + 8 iterates
        best_wrong = trained_tiny(result.best).argmax(1) != y
        adversarial_wrong = trained_tiny(result.adversarial).argmax(1) != y
    assert len(recording.inputs) == 9
    assert torch.equal(result.fooled, wrong.any(0))
    assert (adversarial_wrong == result.fooled).all(), "the returned point is a misclassified iterate where fooled"
    assert (result.fooled >= best_wrong).all()
    assert 0 < int(result.fooled.sum()) < len(y)


def test_apgd_t_rows_target_the_runner_ups_and_merge_per_image(trained_tiny, batch):
    x, y = batch
    x, y = x[:16], y[:16]
    attack = APGDTargeted(eps=1.0, steps=4, targets=3)
    x_rows, y_rows, targets, start, eps = attack.rows(trained_tiny, x, y, torch.Generator().manual_seed(0))
    with torch.no_grad():
        ranked = trained_tiny(x).argsort(1, descending=True)
    assert torch.equal(targets.view(3, 16), ranked[:, 1:4].t()), "row k*N + i targets image i's (k+2)-th class"
    assert torch.equal(x_rows.view(3, 16, *x.shape[1:]), x.expand(3, *x.shape)) and torch.equal(y_rows, y.repeat(3))
    assert ((start - x_rows).flatten(1).norm(dim=1) <= eps + 1e-5).all()

    result = attack.run(trained_tiny, x, y, torch.Generator().manual_seed(0))
    per_row = attack.attack_rows(trained_tiny)(x_rows, y_rows, targets, start, eps)  # the same rows, one call
    assert torch.equal(result.fooled, per_row.fooled.view(3, 16).any(0))
    with torch.no_grad():
        wrong = trained_tiny(result.adversarial).argmax(1) != y
    assert torch.equal(wrong, result.fooled)
    assert ((result.adversarial - x).flatten(1).norm(dim=1) <= 1.0 + 1e-5).all()


def test_run_counts_success_only_where_labels_are_the_true_classes(trained_tiny, batch):
    x, y = batch
    assert APGD(0.5, 2).run(trained_tiny, x[:4], y[:4]).fooled.shape == (4,)
    assert APGD(0.5, 2, objective="kl_uniform").run(trained_tiny, x[:4]).fooled is None
    assert APGD(0.5, 2, objective="target_ce").run(trained_tiny, x[:4], (y[:4] + 1) % 10).fooled is None
