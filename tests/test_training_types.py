"""Every --mode row (choices.MODES) in fp64 on the tiny model: one step's loss is the training
type's formula, written out here from the authors' code (utils/train_types/) and TRADES'
trades.py; every attack raises its objective; types without attacks run none."""
import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ratio_fast import RatioTrainer, TrainConfig, create_model
from ratio_fast.choices import MODES, NORMS
from ratio_fast.cli.config_file import read_config_file
from ratio_fast.cli.main import TRAIN_SETTINGS, build_parser
from ratio_fast.errors import UserError
from ratio_fast.training import trainer as trainer_module

LAM, BETA, BETA_OUT = 2.0, 3.0, 5.0  # not the defaults, so a weight on the wrong term shows
N = 8


def ce(logits, y):
    return F.cross_entropy(logits, y)


def kl_uniform(logits):
    """KL(U || p), averaged over the batch."""
    uniform = torch.full_like(logits, 1.0 / logits.shape[1])
    return F.kl_div(F.log_softmax(logits, dim=1), uniform, reduction="batchmean")


def trades_kl(logits_adv, logits_clean):
    """TRADES' regularizer: KL(p(x) || p(x_adv)), 'batchmean' (summed over classes, mean over samples)."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")


# mode -> (the images of the train forward, in order; the loss from their logits L)
FORMULAS = {
    "plain": ("x", lambda L, y: ce(L["x"], y)),
    "ceda": ("x z", lambda L, y: ce(L["x"], y) + LAM * kl_uniform(L["z"])),
    "acet": ("x z_adv", lambda L, y: ce(L["x"], y) + LAM * kl_uniform(L["z_adv"])),
    "at": ("x_adv", lambda L, y: ce(L["x_adv"], y)),
    "trades": ("x x_adv", lambda L, y: ce(L["x"], y) + BETA * trades_kl(L["x_adv"], L["x"])),
    "ratio": ("x_adv z_adv", lambda L, y: 0.5 * ce(L["x_adv"], y) + 0.5 * LAM * kl_uniform(L["z_adv"])),
    "trades-ceda": ("x x_adv z z_adv", lambda L, y: 0.5 * (ce(L["x"], y) + BETA * trades_kl(L["x_adv"], L["x"]))
                    + 0.5 * LAM * (kl_uniform(L["z"]) + BETA_OUT * trades_kl(L["z_adv"], L["z"]))),
    "trades-acet": ("x x_adv z_adv", lambda L, y: 0.5 * (ce(L["x"], y) + BETA * trades_kl(L["x_adv"], L["x"]))
                    + 0.5 * LAM * kl_uniform(L["z_adv"])),
}
TRAIN_CLEAN = ("x x_adv z_adv", lambda L, y: 0.5 * (ce(L["x"], y) + ce(L["x_adv"], y))
               + 0.5 * LAM * kl_uniform(L["z_adv"]))


def test_every_row_has_a_formula_here():
    assert set(FORMULAS) == set(MODES)


@pytest.fixture(scope="module")
def batch64(synthetic_split):
    x, y = synthetic_split["train"]
    return x[:N].double(), y[:N], synthetic_split["out"][:N].double()


def recorded_step(mode, batch, **overrides):
    """(trainer's model before the step, the step's fp64 loss, x_adv, z_adv) of one fp64 step under `mode`."""
    config = TrainConfig(arch="tiny", mode=mode, batch_size=N, steps_in=3, steps_out=3, lam=LAM, trades_beta=BETA,
                         trades_beta_out=BETA_OUT, backend="torch", **overrides)
    torch.manual_seed(0)
    trainer = RatioTrainer(create_model("tiny").double(), config, total_steps=5, device="cpu")
    before = copy.deepcopy(trainer.model)
    recorded = {"x_adv": None, "z_adv": None}
    if trainer.attack_phase is not None:
        phase = trainer.attack_phase

        def recording(x, y, z):
            out = phase(x, y, z)
            recorded["x_adv"], recorded["z_adv"] = out[1], out[2]
            return out
        trainer.attack_phase = recording
    losses, the_loss = [], trainer_module.mode_loss

    def mode_loss(*args, **kwargs):  # the loss the step backpropagates (its metric is fp32)
        losses.append(the_loss(*args, **kwargs))
        return losses[-1]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer_module, "mode_loss", mode_loss, raising=True)
        trainer.step(*batch)
    return before, losses[0].detach(), recorded["x_adv"], recorded["z_adv"]


@pytest.mark.parametrize("mode", list(FORMULAS) + ["ratio --train-clean"])
def test_one_step_loss_is_the_types_formula_in_fp64(mode, batch64):
    x, y, z = batch64
    train_clean = mode.endswith("--train-clean")
    mode = mode.split()[0]
    order, formula = TRAIN_CLEAN if train_clean else FORMULAS[mode]
    model, loss, x_adv, z_adv = recorded_step(mode, batch64, train_clean=train_clean)
    images = {"x": x, "x_adv": x_adv, "z": z, "z_adv": z_adv}
    names = order.split()
    assert all(images[name] is not None for name in names)  # the attacks of the type ran
    assert (x_adv is not None) == ("x_adv" in names) and (z_adv is not None) == ("z_adv" in names)
    model.train()  # one forward of the joined batch: BatchNorm's statistics over all of it
    logits = dict(zip(names, model(torch.cat([images[name] for name in names])).split(N)))
    expected = formula(logits, y)
    assert loss.dtype == torch.float64
    assert torch.allclose(loss, expected, rtol=1e-10, atol=0), (mode, loss.item(), expected.item())


def attack_objectives(model, x, y, z):
    """objective name -> f(images, clean images) per sample, evaluated in eval mode."""
    def trades(images, clean):
        return F.kl_div(F.log_softmax(model(images), 1), F.softmax(model(clean), 1), reduction="none").sum(1)
    return {
        "ce": lambda images, clean: F.cross_entropy(model(images), y, reduction="none"),
        "kl_uniform": lambda images, clean: F.kl_div(F.log_softmax(model(images), 1),
                                                     torch.full((N, 10), 0.1, dtype=images.dtype),
                                                     reduction="none").sum(1),
        "trades_kl": trades,
    }


@pytest.mark.parametrize("mode", [name for name, row in MODES.items() if row.attacks_in or row.attacks_out])
def test_each_attack_raises_its_objective(mode, batch64):
    x, y, z = batch64
    model, _, x_adv, z_adv = recorded_step(mode, batch64)
    model.eval()
    row = MODES[mode]
    with torch.no_grad():
        objectives = attack_objectives(model, x, y, z)
        for objective, clean, adversarial in ((row.in_attack, x, x_adv), (row.out_attack, z, z_adv)):
            assert (objective is None) == (adversarial is None)
            if objective is None:
                continue
            start, after = objectives[objective](clean, clean), objectives[objective](adversarial, clean)
            assert (after >= start - 1e-12).all(), (mode, objective)
            assert after.mean() > start.mean() + 1e-6, (mode, objective)  # it moved, beyond the start noise


@pytest.mark.parametrize("mode", [name for name, row in MODES.items() if row.attacks_in or row.attacks_out])
def test_a_types_attacks_take_the_norm_given_on_the_command_line(mode):
    """`train --mode M --norm linf`: each attack of the row is an L-infinity one with the radius and
    step size of NORMS' linf row (the flags left to --norm), the in-distribution one at eps_in, the
    out-distribution one at eps_out; a row without an attack builds none."""
    args = build_parser().parse_args(["train", "--mode", mode, "--norm", "linf"])
    config = TrainConfig(**{name: value for name, value in vars(args).items() if name in TRAIN_SETTINGS})
    linf, row = NORMS["linf"], MODES[mode]
    attack_in, attack_out = trainer_module.training_attacks(config)
    assert (attack_in is not None, attack_out is not None) == (row.attacks_in, row.attacks_out)
    for attack, eps in ((attack_in, linf.eps_in), (attack_out, linf.eps_out)):
        if attack is not None:
            assert (attack.norm, attack.eps, attack.step_size) == ("linf", eps, linf.step_size), mode


@pytest.mark.parametrize("mode", ["trades-ceda", "trades-acet"])
def test_a_types_attacks_run_in_linf(mode, batch64):
    """--norm linf with a training type: both attacks stay in their boxes (NORMS' linf radii), move
    every sample by more than one sign step (TRADES' start noise alone stays below it) and raise
    their objectives."""
    x, y, z = batch64
    model, _, x_adv, z_adv = recorded_step(mode, batch64, norm="linf")
    model.eval()
    row, linf = MODES[mode], NORMS["linf"]
    with torch.no_grad():
        objectives = attack_objectives(model, x, y, z)
        for objective, clean, adversarial, eps in ((row.in_attack, x, x_adv, linf.eps_in),
                                                   (row.out_attack, z, z_adv, linf.eps_out)):
            moved = (adversarial - clean).abs().flatten(1).amax(dim=1)
            assert (moved <= eps + 1e-12).all() and (moved > linf.step_size).all(), (mode, objective)
            start, after = objectives[objective](clean, clean), objectives[objective](adversarial, clean)
            assert after.mean() > start.mean() + 1e-6, (mode, objective)


@pytest.mark.parametrize("mode", ["plain", "ceda"])
def test_types_without_attacks_run_no_attack(mode, batch64):
    config = TrainConfig(arch="tiny", mode=mode, batch_size=N, backend="torch")
    trainer = RatioTrainer(create_model("tiny").double(), config, total_steps=2, device="cpu")
    calls = []
    trainer.model.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    trainer.step(*batch64)
    assert trainer.attack_phase is None
    assert calls == [N * len(FORMULAS[mode][0].split())]  # the train forward alone


def test_train_clean_is_refused_where_it_means_nothing():
    for mode in ("at", "trades", "plain"):
        with pytest.raises(UserError, match="--train-clean"):
            TrainConfig(mode=mode, train_clean=True)


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("mode", list(MODES))
def test_each_type_ships_a_cifar10_wrn34_config_with_the_authors_settings(mode):
    """configs/<mode>-cifar10-wrn34.json: the authors' RATIO command (their README gives no other)
    with --train_type <mode>, their run_file_helpers.py defaults for it (trades_weight and
    od_trades_weight 6, od_weight 1)."""
    config = TrainConfig(**read_config_file(CONFIGS / f"{mode}-cifar10-wrn34.json"))
    ratio = TrainConfig(**read_config_file(CONFIGS / "ratio-cifar10-wrn34.json"))
    assert config.mode == mode
    shared = ("arch", "dataset", "augment", "epochs", "batch_size", "bn_groups", "lr", "momentum", "weight_decay",
              "ema_decay", "eps_in", "eps_out", "steps_in", "steps_out", "step_size_in", "step_size_out", "lam")
    assert {k: getattr(config, k) for k in shared} == {k: getattr(ratio, k) for k in shared}
    assert config.trades_beta == config.trades_beta_out == 6.0 and not config.train_clean
    assert (config.out_data is not None) == MODES[mode].uses_out_data
    assert config.out_exclude == (ratio.out_exclude if MODES[mode].uses_out_data else [])
