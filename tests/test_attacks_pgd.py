"""The attacks: they attack, stay in the ball and the box, and match independent plain loops."""
import pytest
import torch
import torch.nn.functional as F

from ratio_fast import APGD, PGD, L2PGD, LinfPGD, APGDTargeted, joint_l2_pgd, joint_pgd, l2_pgd, pgd
from ratio_fast.attacks.apgd import apgd_run
from ratio_fast.errors import UserError
from ratio_fast.attacks.objectives import cross_entropy, kl_to_uniform


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def max_confidence(model, x):
    with torch.no_grad():
        return model(x).softmax(1).amax(1)


@pytest.fixture
def batch(synthetic_split):
    x, y = synthetic_split["test"]
    return x[:64], y[:64]


ATTACKS_OF_THE_API = {
    "L2PGD": lambda model, x, y, **check: L2PGD(0.5, 1, 0.1, **check)(model, x, y),
    "l2_pgd": lambda model, x, y, **check: l2_pgd(model, x, y, eps=0.5, steps=1, step_size=0.1, **check),
    "joint_l2_pgd": lambda model, x, y, **check: joint_l2_pgd(
        model, x[:2], y[:2], x[2:], L2PGD(0.5, 1, 0.1, **check), L2PGD(1.0, 1, 0.1, objective="kl_uniform", **check)),
    "LinfPGD": lambda model, x, y, **check: LinfPGD(steps=1, **check)(model, x, y),
    "pgd": lambda model, x, y, **check: pgd(model, x, y, eps=0.03, steps=1, step_size=0.01, norm="linf", **check),
    "APGD": lambda model, x, y, **check: APGD(0.5, 1, **check)(model, x, y),
    "APGD linf": lambda model, x, y, **check: APGD(0.03, 1, norm="linf", **check)(model, x, y),
    "APGD.run": lambda model, x, y, **check: APGD(0.5, 1, **check).run(model, x, y),
    "APGDTargeted": lambda model, x, y, **check: APGDTargeted(0.5, 1, targets=2, **check)(model, x, y),
    "apgd_run": lambda model, x, y, **check: apgd_run(model, x, y, eps=0.5, steps=1, **check),
}


@pytest.mark.parametrize("name", list(ATTACKS_OF_THE_API))
def test_the_api_attacks_refuse_images_outside_0_1(trained_tiny, batch, name):
    attack = ATTACKS_OF_THE_API[name]
    x, y = batch[0][:4], batch[1][:4]
    with pytest.raises(UserError, match=r"must be images with values in \[0, 1\] .*got values from 0 to 2\d\d"):
        attack(trained_tiny, x * 255, y)  # 0..255 pixels: an eps of 0.5 would be nothing
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(UserError, match="values in \\[0, 1\\]"):
        attack(trained_tiny, nan, y)
    attack(trained_tiny, x, y)
    attack(trained_tiny, x * 255, y, check_inputs=False)  # the trainer's and evaluation's unchecked path


def test_attack_raises_the_loss_it_attacks(trained_tiny, batch):
    x, y = batch
    attack = L2PGD(eps=0.5, steps=5, step_size=0.1, momentum=0.9, keep_best=True)
    x_adv = attack(trained_tiny, x, y)
    with torch.no_grad():
        before, after = cross_entropy(trained_tiny(x), y), cross_entropy(trained_tiny(x_adv), y)
    # keep_best never returns a point worse than the clean one, and the attack finds better ones
    assert (after >= before - 1e-6).all()
    assert after.mean() > 1.5 * before.mean()


@pytest.mark.parametrize("kwargs", [
    dict(momentum=0.0),
    dict(momentum=0.9, keep_best=True),
    dict(momentum=0.9, random_start=True),
])
def test_attack_respects_ball_and_box_with_per_sample_eps(trained_tiny, batch, kwargs):
    x, y = batch
    eps = torch.linspace(0.0, 3.0, x.shape[0])
    x_adv = l2_pgd(trained_tiny, x, y, eps=eps, steps=4, step_size=0.5, **kwargs)
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert (norms <= eps + 1e-5).all()
    assert ((x_adv >= 0) & (x_adv <= 1)).all()
    assert norms[0] == 0
    assert norms[-1] > 0.5, "a large ball should be used"


def test_trained_model_accuracy_drops_under_attack(trained_tiny, synthetic_split):
    x, y = synthetic_split["test"]
    clean = accuracy(trained_tiny, x, y)
    attack = L2PGD(eps=1.5, steps=10, step_size=0.3)
    robust = accuracy(trained_tiny, attack(trained_tiny, x, y), y)
    assert clean > 0.9
    assert robust < clean - 0.3


def test_out_distribution_attack_raises_confidence(trained_tiny, synthetic_split):
    z = synthetic_split["out"][:64]
    attack = L2PGD(eps=1.0, steps=10, step_size=0.1, momentum=0.9, keep_best=True, objective="kl_uniform")
    z_adv = attack(trained_tiny, z)  # no labels needed
    with torch.no_grad():
        assert (kl_to_uniform(trained_tiny(z_adv)) >= kl_to_uniform(trained_tiny(z)) - 1e-6).all()
    assert max_confidence(trained_tiny, z_adv).mean() > max_confidence(trained_tiny, z).mean() + 0.05


def test_attack_restores_mode_and_leaves_weights_alone(synthetic_split):
    from ratio_fast.models import create_model

    model = create_model("tiny")
    x, y = synthetic_split["test"]
    x, y = x[:16], y[:16]
    bn_before = {k: v.clone() for k, v in model.state_dict().items()}
    for training in (True, False):
        model.train(training)
        L2PGD(eps=0.5, steps=2, step_size=0.1)(model, x, y)
        assert model.training is training
    # eval mode during the attack: BatchNorm statistics untouched; input gradients only
    for k, v in model.state_dict().items():
        assert torch.equal(v, bn_before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_attack_computes_no_weight_gradients(trained_tiny, batch):
    x, y = batch
    fired = []
    handles = [p.register_hook(lambda g, name=name: fired.append(name)) for name, p in trained_tiny.named_parameters()]
    try:
        L2PGD(eps=0.5, steps=2, step_size=0.1, momentum=0.9, keep_best=True)(trained_tiny, x, y)
    finally:
        for h in handles:
            h.remove()
    assert fired == []  # autograd never produced a gradient for any weight


def textbook_pgd_l2(model, x, y, eps, steps, step_size):
    """Madry et al.'s PGD-L2, written out plainly: normalized-gradient step, project, clip."""
    delta = torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, delta)
        g_norm = g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        delta = delta.detach() + step_size * g / g_norm
        d_norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        delta = delta * torch.clamp(eps / d_norm, max=1.0)
        delta = (x + delta).clamp(0, 1) - x
    return x + delta


def argmin_pgd(model, x, y, eps, steps, step_size, momentum, loss_fn):
    """The authors' ArgminPGD as DESIGN.md describes it, written out plainly."""
    delta = torch.zeros_like(x)
    v = torch.zeros_like(x)
    best_x, best_loss = x.clone(), torch.full((x.shape[0],), -float("inf"))
    for i in range(steps + 1):
        delta.requires_grad_(True)
        loss = loss_fn(model(x + delta), y)
        improved = loss.detach() > best_loss
        best_x[improved] = (x + delta.detach())[improved]
        best_loss = torch.where(improved, loss.detach(), best_loss)
        if i == steps:
            break
        (g,) = torch.autograd.grad(loss.sum(), delta)
        v = momentum * v + g / g.abs().flatten(1).sum(1).view(-1, 1, 1, 1)
        delta = delta.detach() + step_size * v / v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        d_norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        delta = delta * torch.clamp(eps / d_norm, max=1.0)
        delta = (x + delta).clamp(0, 1) - x
    return best_x


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_defaults_are_textbook_pgd_l2(trained_tiny, batch, backend):
    x, y = batch
    ours = L2PGD(eps=0.5, steps=5, step_size=0.2, backend=backend)(trained_tiny, x, y)
    theirs = textbook_pgd_l2(trained_tiny, x, y, 0.5, 5, 0.2)
    assert torch.allclose(ours, theirs, atol=2e-5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("objective", ["ce", "kl_uniform"])
def test_reference_settings_reproduce_argmin_pgd(trained_tiny, synthetic_split, batch, backend, objective):
    x, y = batch if objective == "ce" else (synthetic_split["out"][:64], None)
    loss_fn = cross_entropy if objective == "ce" else kl_to_uniform
    ours = l2_pgd(trained_tiny, x, y, eps=1.0, steps=6, step_size=0.1, momentum=0.9, keep_best=True,
                  objective=objective, backend=backend)
    theirs = argmin_pgd(trained_tiny, x, y, 1.0, 6, 0.1, 0.9, loss_fn)
    assert torch.allclose(ours, theirs, atol=2e-5)


def test_random_start_is_reproducible_with_a_generator(trained_tiny, batch):
    x, y = batch
    attack = L2PGD(eps=0.5, steps=2, step_size=0.1, random_start=True)
    a = attack(trained_tiny, x, y, generator=torch.Generator().manual_seed(1))
    b = attack(trained_tiny, x, y, generator=torch.Generator().manual_seed(1))
    c = attack(trained_tiny, x, y, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_channels_last_input_gives_the_same_attack(trained_tiny, batch):
    x, y = batch
    attack = L2PGD(eps=0.5, steps=3, step_size=0.1, momentum=0.9, keep_best=True, backend="triton")
    a = attack(trained_tiny, x, y)
    b = attack(trained_tiny, x.contiguous(memory_format=torch.channels_last), y)
    assert b.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(a, b, atol=1e-5)


def textbook_pgd_linf(model, x, y, eps, steps, step_size, delta):
    """Madry et al.'s PGD-L-infinity from `delta`, written out plainly: sign step, clip to the box and to [0, 1]."""
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step_size * g.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    return x + delta


def argmin_pgd_linf(model, x, y, eps, steps, step_size, momentum, loss_fn):
    """The authors' ArgminPGD in L-infinity (argmin_pgd.py with norm 'inf'), written out plainly:
    velocity of the L1-normalized gradient, a step along its sign, clip to the box; the best iterate."""
    delta, v = torch.zeros_like(x), torch.zeros_like(x)
    best_x, best_loss = x.clone(), torch.full((x.shape[0],), -float("inf"))
    for i in range(steps + 1):
        delta.requires_grad_(True)
        loss = loss_fn(model(x + delta), y)
        improved = loss.detach() > best_loss
        best_x[improved] = (x + delta.detach())[improved]
        best_loss = torch.where(improved, loss.detach(), best_loss)
        if i == steps:
            break
        (g,) = torch.autograd.grad(loss.sum(), delta)
        v = momentum * v + g / g.abs().flatten(1).sum(1).view(-1, 1, 1, 1)
        delta = (delta.detach() + step_size * v.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0, 1) - x
    return best_x


def test_linf_pgd_defaults_are_madrys():
    attack = LinfPGD()
    assert (attack.eps, attack.steps, attack.step_size, attack.random_start, attack.norm) == (
        8 / 255, 10, 2 / 255, True, "linf")
    assert (attack.momentum, attack.keep_best) == (0.0, False)  # the last iterate of plain sign steps
    assert L2PGD(0.5, 1, 0.1).norm == "l2" and PGD(0.5, 1, 0.1).norm == "l2"


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_linf_pgd_takes_textbook_steps(trained_tiny, batch, backend):
    x, y = batch
    ours = LinfPGD(steps=5, random_start=False, backend=backend)(trained_tiny, x, y)
    theirs = textbook_pgd_linf(trained_tiny, x, y, 8 / 255, 5, 2 / 255, torch.zeros_like(x))
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert accuracy(trained_tiny, ours, y) < accuracy(trained_tiny, x, y)


def test_linf_random_start_is_uniform_in_the_box(trained_tiny, batch):
    """Madry et al.'s start: every pixel's offset uniform in [-eps, eps] (before the [0, 1] clip)."""
    x, y = batch
    eps = 8 / 255
    start = LinfPGD(steps=0)(trained_tiny, x, y, generator=torch.Generator().manual_seed(3))
    d = (start - x)[(x > eps) & (x < 1 - eps)] / eps  # pixels the clip cannot reach
    assert d.numel() > 10_000 and d.abs().max() <= 1 + 1e-6
    quarters = torch.histc(d, bins=4, min=-1, max=1) / d.numel()
    assert torch.allclose(quarters, torch.full((4,), 0.25), atol=0.01), quarters


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("objective", ["ce", "kl_uniform"])
def test_linf_argmin_pgd_is_the_authors(trained_tiny, synthetic_split, batch, backend, objective):
    x, y = batch if objective == "ce" else (synthetic_split["out"][:64], None)
    loss_fn = cross_entropy if objective == "ce" else kl_to_uniform
    ours = LinfPGD(8 / 255, 6, 2 / 255, momentum=0.9, keep_best=True, random_start=False, objective=objective,
                   backend=backend)(trained_tiny, x, y)
    theirs = argmin_pgd_linf(trained_tiny, x, y, 8 / 255, 6, 2 / 255, 0.9, loss_fn)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_linf_attack_respects_box_with_per_sample_eps(trained_tiny, batch):
    x, y = batch
    eps = torch.linspace(0.0, 16 / 255, x.shape[0])
    x_adv = pgd(trained_tiny, x, y, eps=eps, steps=4, step_size=4 / 255, norm="linf", momentum=0.9,
                random_start=True)
    largest = (x_adv - x).flatten(1).abs().amax(1)
    assert (largest <= eps + 1e-6).all() and largest[0] == 0 and largest[-1] > 15 / 255
    assert ((x_adv >= 0) & (x_adv <= 1)).all()


def test_joint_linf_pgd_is_the_two_attacks(trained_tiny, synthetic_split, batch):
    x, y = batch
    z = synthetic_split["out"][:32]
    attack_x = LinfPGD(8 / 255, 4, 2 / 255, momentum=0.9, keep_best=True, random_start=False)
    attack_z = LinfPGD(16 / 255, 6, 4 / 255, momentum=0.9, keep_best=True, random_start=False,
                       objective="kl_uniform")
    x_adv, z_adv = joint_pgd(trained_tiny, x, y, z, attack_x, attack_z)
    assert torch.allclose(x_adv, attack_x(trained_tiny, x, y), atol=1e-5)
    assert torch.allclose(z_adv, attack_z(trained_tiny, z), atol=1e-5)
    with pytest.raises(ValueError, match="norm"):
        joint_pgd(trained_tiny, x, y, z, attack_x, L2PGD(1.0, 2, 0.1, momentum=0.9, keep_best=True,
                                                           objective="kl_uniform"))
    assert joint_l2_pgd is joint_pgd


def test_bad_settings_are_rejected(trained_tiny, batch):
    x, _ = batch
    with pytest.raises(ValueError, match="eps"):
        L2PGD(eps=-0.1, steps=1, step_size=0.1)
    with pytest.raises(ValueError, match="objective"):
        L2PGD(eps=0.5, steps=1, step_size=0.1, objective="hinge")
    with pytest.raises(ValueError, match="labels"):
        L2PGD(eps=0.5, steps=1, step_size=0.1)(trained_tiny, x)
    for build in (lambda: PGD(0.5, 1, 0.1, norm="l1"), lambda: APGD(0.5, 1, norm="L2"),
                  lambda: APGDTargeted(0.5, 1, norm="inf")):
        with pytest.raises(ValueError, match="norm must be one of"):
            build()
