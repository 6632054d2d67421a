"""Model zoo: shapes, memory formats, in-model normalization, RobustBench-compatible naming.

CPU only and quick: each big model is built once and run on tiny batches; WRN-34-10 gets a
single forward pass (WRN-28-10 runs the same code for the memory-format checks).
"""
import math

import pytest
import torch

from ratio_fast.datasets import CIFAR10, CIFAR100
from ratio_fast.errors import UserError
from ratio_fast.models import MODEL_NAMES, create_model

# Known parameter counts of the CIFAR variants (10 classes). 46,160,474 is RobustBench's
# WRN-34-10 (Augustin2020Adversarial_34_10 and friends).
PARAM_COUNTS = {
    "wrn34": 46_160_474,
    "wrn28": 36_479_194,
    "resnet18": 11_173_962,
    "resnet50": 23_520_842,
}

_BUILT: dict[str, torch.nn.Module] = {}


def built(name: str) -> torch.nn.Module:
    """Each architecture is built once per test session, in eval mode; tests must not mutate it."""
    if name not in _BUILT:
        torch.manual_seed(0)
        _BUILT[name] = create_model(name).eval()
    return _BUILT[name]


def images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_model_names():
    assert MODEL_NAMES == ("wrn34", "wrn28", "resnet18", "resnet50", "tiny")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_logits_shape_and_cpu_only(name):
    model = built(name)
    with torch.no_grad():
        logits = model(images(2))
    assert logits.shape == (2, 10)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n != "wrn34"])
def test_channels_last_gives_same_logits(name):
    # 16x16 keeps this cheap; every model pools globally, so any size >= 16 works.
    model = built(name)
    x = images(2, size=16, seed=1)
    with torch.no_grad():
        ref = model(x)
        cl_input = model(x.contiguous(memory_format=torch.channels_last))
        model.to(memory_format=torch.channels_last)
        try:
            cl_both = model(x.contiguous(memory_format=torch.channels_last))
        finally:
            model.to(memory_format=torch.contiguous_format)
    atol = 1e-5 * max(1.0, ref.abs().max().item())
    torch.testing.assert_close(cl_input, ref, rtol=1e-4, atol=atol)
    torch.testing.assert_close(cl_both, ref, rtol=1e-4, atol=atol)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_num_classes_100(name):
    model = create_model(name, num_classes=100, mean=CIFAR100.mean, std=CIFAR100.std)
    classifier = model.fc if name.startswith("wrn") else model.linear
    assert classifier.out_features == 100
    torch.testing.assert_close(model.mu.flatten(), torch.tensor(CIFAR100.mean))
    if name == "tiny":
        assert model(images(3)).shape == (3, 100)


def test_unknown_name_is_a_user_error():
    with pytest.raises(UserError) as info:
        create_model("foo")
    message = str(info.value)
    assert "--arch" in message and "'foo'" in message
    assert all(name in message for name in MODEL_NAMES)


@pytest.mark.parametrize("bad", [dict(mean=(0.5, 0.5)), dict(std=(0.2, 0.0, 0.2)),
                                 dict(num_classes=0)])
def test_bad_constructor_arguments(bad):
    with pytest.raises(ValueError):
        create_model("tiny", **bad)


@pytest.mark.parametrize("name", PARAM_COUNTS)
def test_parameter_counts(name):
    assert sum(p.numel() for p in built(name).parameters()) == PARAM_COUNTS[name]


def _bn(prefix):
    return [f"{prefix}.{s}" for s in
            ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def _robustbench_wrn_keys(blocks_per_group: int) -> list[str]:
    """State-dict keys of RobustBench's Augustin2020AdversarialWideNet, spelled out."""
    keys = ["mu", "sigma", "conv1.weight"]
    for group in (1, 2, 3):
        for i in range(blocks_per_group):
            p = f"block{group}.layer.{i}"
            keys += _bn(f"{p}.bn1") + [f"{p}.conv1.weight"] + _bn(f"{p}.bn2") + [f"{p}.conv2.weight"]
            if i == 0:  # 16->160, 160->320, 320->640: every group widens in its first block
                keys.append(f"{p}.convShortcut.weight")
    return keys + _bn("bn1") + ["fc.weight", "fc.bias"]


@pytest.mark.parametrize("name,blocks", [("wrn34", 5), ("wrn28", 4)])
def test_wide_resnet_state_dict_matches_robustbench_names(name, blocks):
    state = built(name).state_dict()
    assert sorted(state) == sorted(_robustbench_wrn_keys(blocks))
    assert len(state) == {5: 193, 4: 157}[blocks]
    for group in (1, 2, 3):
        assert f"block{group}.layer.{blocks - 1}.conv2.weight" in state
        assert f"block{group}.layer.{blocks}.conv1.weight" not in state
    shortcuts = sorted(k for k in state if "convShortcut" in k)
    assert shortcuts == [f"block{g}.layer.0.convShortcut.weight" for g in (1, 2, 3)]
    expected_shapes = {
        "conv1.weight": (16, 3, 3, 3),
        "block1.layer.0.bn1.weight": (16,),
        "block1.layer.0.conv1.weight": (160, 16, 3, 3),
        "block1.layer.0.convShortcut.weight": (160, 16, 1, 1),
        "block2.layer.0.convShortcut.weight": (320, 160, 1, 1),
        "block3.layer.0.conv1.weight": (640, 320, 3, 3),
        "block3.layer.1.conv2.weight": (640, 640, 3, 3),
        "bn1.running_var": (640,),
        "fc.weight": (10, 640),
        "fc.bias": (10,),
        "mu": (1, 3, 1, 1),
        "sigma": (1, 3, 1, 1),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(m.bias is not None for m in built(name).modules()
                   if isinstance(m, torch.nn.Conv2d))


def test_wide_resnet_initialization():
    model = built("wrn28")
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0)
               for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.all(model.fc.bias == 0)
    # He-normal with fan_out: std = sqrt(2 / (out_channels * 3 * 3)).
    w = model.block3.layer[1].conv2.weight
    assert w.std().item() == pytest.approx(math.sqrt(2 / (640 * 9)), rel=0.02)
    assert w.mean().abs().item() < 1e-3


def test_resnet_state_dict_names():
    r18 = built("resnet18").state_dict()
    for key in ("conv1.weight", "bn1.running_mean", "layer1.1.conv2.weight",
                "layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.running_var",
                "layer4.1.bn2.bias", "linear.weight", "linear.bias"):
        assert key in r18, key
    assert not any(k.startswith("layer1.0.shortcut") for k in r18)  # 64->64, stride 1
    assert tuple(r18["conv1.weight"].shape) == (64, 3, 3, 3)  # CIFAR stem: 3x3, no max-pool
    r50 = built("resnet50").state_dict()
    assert "layer1.0.shortcut.0.weight" in r50  # 64 -> 256 channels
    assert tuple(r50["layer4.2.conv3.weight"].shape) == (2048, 512, 1, 1)
    assert tuple(r50["linear.weight"].shape) == (10, 2048)
    assert max(int(k.split(".")[1]) for k in r50 if k.startswith("layer3.")) == 5


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_normalization_buffers_in_state_dict(name):
    state = built(name).state_dict()
    torch.testing.assert_close(state["mu"], torch.tensor(CIFAR10.mean).view(1, 3, 1, 1))
    torch.testing.assert_close(state["sigma"], torch.tensor(CIFAR10.std).view(1, 3, 1, 1))
    assert "mu" not in dict(built(name).named_parameters())  # buffers, never trained
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state)


def test_normalization_is_applied_inside_forward():
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    x = images(4)
    with torch.no_grad():
        before = model(x)
        # Same weights without normalization, fed pre-normalized input: same logits.
        plain = create_model("tiny", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)).eval()
        plain.load_state_dict({**model.state_dict(), "mu": plain.mu, "sigma": plain.sigma})
        mu = torch.tensor(CIFAR10.mean).view(1, 3, 1, 1)
        sigma = torch.tensor(CIFAR10.std).view(1, 3, 1, 1)
        torch.testing.assert_close(plain((x - mu) / sigma), before)
        # And the buffers are live: changing the mean changes the output.
        model.mu.fill_(0.5)
        assert not torch.allclose(model(x), before)


def test_state_dict_round_trips_with_weights_only_load(tmp_path):
    torch.manual_seed(0)
    source = create_model("tiny", mean=CIFAR100.mean, std=CIFAR100.std)
    path = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), path)
    target = create_model("tiny")
    target.load_state_dict(torch.load(path, weights_only=True))
    torch.testing.assert_close(target.mu.flatten(), torch.tensor(CIFAR100.mean))
    x = images(2)
    torch.testing.assert_close(target.eval()(x), source.eval()(x))


def test_tiny_gives_input_gradients_for_attacks():
    model = create_model("tiny").eval()
    stats_before = {k: v.clone() for k, v in model.state_dict().items()}
    x = images(8).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(x), torch.arange(8) % 10)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # Attacks run in eval mode: BatchNorm must use, not update, its running statistics.
    for key, value in model.state_dict().items():
        assert torch.equal(value, stats_before[key]), key
