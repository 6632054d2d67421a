"""APGD against AutoAttack's own APGD in L2 and L-infinity (the `pyautoattack` package, a dev
dependency), iterate by iterate.

Both runs start from the same point; a model wrapper records every point AutoAttack evaluates
its model at (one per iterate, the start included). Our run goes through a second wrapper
that checks each of our iterates against AutoAttack's and then evaluates the model at
AutoAttack's point (the value of AutoAttack's iterate, the gradient flowing to ours). Feeding
the reference iterate back in keeps last-bit differences from compounding: on DLR, whose
denominator z_pi1 - z_pi3 can be tiny, 1e-16 grows to 1e-7 in a few free-running steps while
every decision stays the same. Each step is therefore checked from the same state, and every
decision (best point, step-size halving, jump back, momentum after it, success) shows up as a
mismatch at once if it differs.
"""
import copy

import pytest
import torch

from ratio_fast.attacks.apgd import apgd_run, random_start_point
from ratio_fast.attacks.objectives import dlr, targeted_dlr
from conftest import Recording

# A dev dependency, but not on the GPU machine's image (nothing can be installed there), whose GPU
# tests must still be collected: without it this module skips instead of breaking collection.
autopgd_base = pytest.importorskip("pyautoattack.autopgd_base", reason="pyautoattack (extra 'dev') is not installed")
APGDAttack, APGDAttack_targeted = autopgd_base.APGDAttack, autopgd_base.APGDAttack_targeted

EPS = {"l2": 1.0, "linf": 8 / 255}  # per norm (ours' name), both fooling some of the 16 points and not all
AUTOATTACK_NORM = {"l2": "L2", "linf": "Linf"}


class FollowingReference(torch.nn.Module):
    """The model evaluated at the reference's k-th iterate when called for the k-th time; records the gap."""

    def __init__(self, model, reference_iterates):
        super().__init__()
        self.model, self.reference, self.gaps = model, reference_iterates, []

    def forward(self, x):
        ref = self.reference[len(self.gaps)]
        self.gaps.append((x.detach() - ref).flatten(1).abs().amax(1))
        return self.model(ref + (x - x.detach()))


@pytest.fixture(scope="module")
def model64(trained_tiny):
    return copy.deepcopy(trained_tiny).double().eval()


@pytest.fixture(scope="module")
def points(synthetic_split):
    x, y = synthetic_split["test"]
    return x[:16].double(), y[:16]


def autoattack_run(model, x, y, start, steps, loss, target=None, norm="l2"):
    """AutoAttack's APGD in `norm` from `start`: (iterates, (x_best, robust, loss_best, x_best_adv))."""
    recording = Recording(model).eval()
    settings = dict(n_iter=steps, norm=AUTOATTACK_NORM[norm], eps=EPS[norm], device=x.device)
    if loss == "dlr-targeted":
        attack = APGDAttack_targeted(recording, **settings)
        attack.y_target = target
    else:
        attack = APGDAttack(recording, loss=loss, **settings)
    attack.init_hyperparam(x)
    result = attack.attack_single_run(x, y, x_init=start.clone())
    return recording.inputs, result


@pytest.mark.parametrize("steps", [10, 100])  # 10: the shortest windows (1 step); 100: AutoAttack's budget
@pytest.mark.parametrize("loss", ["ce", "dlr", "dlr-targeted"])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_every_iterate_and_the_result_are_autoattacks_in_fp64(model64, points, steps, loss, norm):
    x, y = points
    start = random_start_point(x, EPS[norm], torch.Generator().manual_seed(1), norm=norm)
    target = None
    objective = loss
    if loss == "dlr-targeted":
        with torch.no_grad():  # the 3rd most likely class, as AutoAttack's second target
            target = model64(x).argsort(1, descending=True)[:, 2]
        objective = lambda logits, labels: targeted_dlr(logits, labels, target)  # noqa: E731
    reference, (x_best, robust, loss_best, x_best_adv) = autoattack_run(model64, x, y, start, steps, loss, target,
                                                                        norm)

    following = FollowingReference(model64, reference).eval()
    ours = apgd_run(following, x, y, eps=EPS[norm], steps=steps, objective=objective, start=start,
                    count_misclassified=True, backend="torch", norm=norm)

    assert len(following.gaps) == len(reference) == steps + 1
    gaps = torch.stack(following.gaps)
    assert gaps.max() < 1e-8, f"iterate {int(gaps.amax(1).argmax())} differs by {float(gaps.max()):.2e}"
    assert torch.allclose(ours.best, x_best, rtol=0, atol=1e-8)
    assert torch.allclose(ours.best_loss, loss_best, rtol=1e-8, atol=1e-8)
    assert torch.equal(ours.fooled, ~robust)
    fooled = ~robust
    assert torch.allclose(ours.adversarial[fooled], x_best_adv[fooled], rtol=0, atol=1e-8)
    # The comparison means something only if both outcomes occur.
    assert 0 < int(fooled.sum()) < len(y)


def test_dlr_losses_are_autoattacks(model64, points):
    x, y = points
    logits = model64(x).detach().requires_grad_(True)
    reference = APGDAttack(model64, norm="L2", eps=EPS["l2"])
    targeted = APGDAttack_targeted(model64, norm="L2", eps=EPS["l2"])
    targeted.y_target = logits.argsort(1, descending=True)[:, 3].detach()
    for ours, theirs in ((dlr(logits, y), reference.dlr_loss(logits, y)),
                         (targeted_dlr(logits, y, targeted.y_target), targeted.dlr_loss_targeted(logits, y))):
        assert torch.allclose(ours, theirs, rtol=1e-12, atol=0)
        (g_ours,) = torch.autograd.grad(ours.sum(), logits)
        (g_theirs,) = torch.autograd.grad(theirs.sum(), logits)
        assert torch.allclose(g_ours, g_theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss", ["ce", "dlr-targeted"])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_fused_fp32_path_follows_autoattack(trained_tiny, synthetic_split, loss, norm):
    """The Triton kernels (interpreter on CPU) in fp32 take AutoAttack's fp32 steps."""
    x, y = synthetic_split["test"]
    x, y = x[:8], y[:8]
    start = random_start_point(x, EPS[norm], torch.Generator().manual_seed(2), norm=norm)
    target, objective = None, "ce"
    if loss == "dlr-targeted":
        with torch.no_grad():
            target = trained_tiny(x).argsort(1, descending=True)[:, 1]
        objective = lambda logits, labels: targeted_dlr(logits, labels, target)  # noqa: E731
    reference, (x_best, robust, _, _) = autoattack_run(trained_tiny, x, y, start, 10, loss, target, norm)
    following = FollowingReference(trained_tiny, reference).eval()
    ours = apgd_run(following, x, y, eps=EPS[norm], steps=10, objective=objective, start=start,
                    count_misclassified=True, backend="triton", norm=norm)
    assert torch.stack(following.gaps).max() < 2e-5
    assert torch.allclose(ours.best, x_best, atol=2e-5)
    assert torch.equal(ours.fooled, ~robust)


def test_linf_random_start_is_autoattacks(points):
    """AutoAttack's L-infinity start x + eps t / (||t||_inf + 1e-12), t = 2 U - 1 from torch's global
    generator, clipped to [0, 1]: ours draws the same numbers from a generator seeded alike (the
    iterate tests above give both runs the same start, so only this test checks the draw)."""
    x, _ = points
    eps = EPS["linf"]
    torch.manual_seed(5)
    t = 2 * torch.rand(x.shape) - 1
    theirs = (x + eps * t / (t.abs().flatten(1).amax(1).view(-1, 1, 1, 1) + 1e-12)).clamp(0, 1)
    ours = random_start_point(x, eps, torch.Generator().manual_seed(5), backend="torch", norm="linf")
    # AutoAttack divides in fp32 (its t is fp32), ours in x's fp64: one fp32 rounding of eps t / ||t||.
    assert torch.allclose(ours, theirs, rtol=0, atol=eps * 2 ** -23)
    on_surface = ((ours - x).abs().flatten(1).amax(1) - eps).abs() < eps * 2 ** -20
    assert on_surface.sum() >= len(x) - 1  # the box's surface, unless the [0, 1] clip cut every extreme pixel
