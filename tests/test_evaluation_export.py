"""Export: our WideResNet's state_dict loads into RobustBench's WideResNet; files, prefixes, checksums,
permissions, errors."""
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from ratio_fast.training.checkpoint import save_checkpoint
from ratio_fast.cli.main import main
from ratio_fast.config import TrainConfig
from ratio_fast.digest import DamagedFile, verify
from ratio_fast.errors import UserError
from ratio_fast.evaluation.export import clean_state_dict, export_checkpoint, model_from_checkpoint
from ratio_fast.models import WideResNet


# An independent transcription of RobustBench's classes (robustbench/model_zoo/architectures/
# wide_resnet.py, from TRADES, and Augustin2020AdversarialWideNet in model_zoo/cifar10.py):
# their attribute names, their forward, their avg_pool2d(8) + view head.
class RBBasicBlock(nn.Module):
    def __init__(self, in_planes, out_planes, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x):
        if not self.equalInOut:
            x = self.relu1(self.bn1(x))
        else:
            out = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(out if self.equalInOut else x)))
        out = self.conv2(out)
        return torch.add(x if self.equalInOut else self.convShortcut(x), out)


class RBNetworkBlock(nn.Module):
    def __init__(self, nb_layers, in_planes, out_planes, stride):
        super().__init__()
        self.layer = nn.Sequential(*[RBBasicBlock(in_planes if i == 0 else out_planes, out_planes,
                                                  stride if i == 0 else 1) for i in range(nb_layers)])

    def forward(self, x):
        return self.layer(x)


class RBAugustinWideNet(nn.Module):
    def __init__(self, depth, widen_factor, num_classes=10):
        super().__init__()
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, ch[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = RBNetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = RBNetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = RBNetworkBlock(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes)
        self.nChannels = ch[3]
        self.register_buffer("mu", torch.tensor([0.4913997551666284, 0.48215855929893703,
                                                 0.4465309133731618]).view(1, 3, 1, 1))
        self.register_buffer("sigma", torch.tensor([0.24703225141799082, 0.24348516474564,
                                                    0.26158783926049628]).view(1, 3, 1, 1))

    def forward(self, x):
        x = (x - self.mu) / self.sigma
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        out = F.avg_pool2d(out, 8).view(-1, self.nChannels)
        return self.fc(out)


def randomize_batchnorm(model, seed=0):
    """Non-trivial running statistics and affine parameters, so a mixed-up buffer changes the logits."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def test_our_wideresnet_loads_into_robustbench_strictly_with_the_same_logits():
    torch.manual_seed(0)
    ours = WideResNet(depth=16, widen_factor=2).eval()
    randomize_batchnorm(ours)
    theirs = RBAugustinWideNet(depth=16, widen_factor=2).eval()
    theirs.load_state_dict(clean_state_dict(ours.state_dict()), strict=True)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_prefixes_of_wrappers_are_removed():
    model = nn.Sequential(nn.Linear(2, 2))
    ddp_compiled = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    assert set(clean_state_dict(ddp_compiled)) == {"0.weight", "0.bias"}
    assert set(clean_state_dict({"block._orig_mod.w": torch.ones(1)})) == {"block.w"}
    with pytest.raises(ValueError, match="two parameters"):
        clean_state_dict({"module.w": torch.ones(1), "w": torch.ones(1)})


def write_checkpoint(path, weights, arch="tiny", dataset="synthetic", ema=None):
    trainer = {"model": weights, "ema": {"model": weights if ema is None else ema, "updates": 1}}
    save_checkpoint(path, {"config": TrainConfig(arch=arch, dataset=dataset).to_dict(), "trainer": trainer, "rng": {}})


def test_export_command_writes_plain_state_dict_and_safetensors(trained_tiny, tmp_path, capsys):
    ema = {f"_orig_mod.{k}": v for k, v in trained_tiny.state_dict().items()}  # a compiled model's keys
    write_checkpoint(tmp_path / "checkpoint.pt", {k: torch.zeros_like(v) for k, v in ema.items()}, ema=ema)
    assert main(["export", str(tmp_path / "checkpoint.pt"), "--out", str(tmp_path / "export")]) == 0
    assert "model.safetensors" in capsys.readouterr().out

    plain = torch.load(tmp_path / "export" / "model.pt", weights_only=True)
    st = load_file(tmp_path / "export" / "model.safetensors")
    expected = trained_tiny.state_dict()
    assert set(plain) == set(st) == set(expected), "no prefixes; mu/sigma and BN buffers included"
    assert {"mu", "sigma"} <= set(plain)
    for key, value in expected.items():
        assert torch.equal(plain[key], value) and torch.equal(st[key], value), key  # the EMA weights

    fresh = type(trained_tiny)().eval()
    fresh.load_state_dict(st, strict=True)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), trained_tiny(x))


def test_exports_carry_a_checksum_and_the_usual_permissions(trained_tiny, tmp_path):
    write_checkpoint(tmp_path / "c.pt", trained_tiny.state_dict())
    old = os.umask(0o022)
    try:
        paths = export_checkpoint(tmp_path / "c.pt", tmp_path / "out")
    finally:
        os.umask(old)
    for path in paths:
        assert path.stat().st_mode & 0o777 == 0o644, path  # what open() gives, not a temporary's 0600
        assert len(verify(path)) == 64
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        with pytest.raises(DamagedFile, match="checksum mismatch"):
            verify(path)


def test_export_of_raw_model_weights(trained_tiny, tmp_path):
    zeros = {k: torch.zeros_like(v) for k, v in trained_tiny.state_dict().items()}
    zeros["sigma"] = torch.ones_like(zeros["sigma"])
    write_checkpoint(tmp_path / "c.pt", zeros, ema=trained_tiny.state_dict())
    pt_path, _ = export_checkpoint(tmp_path / "c.pt", tmp_path / "out", weights="model")
    assert torch.equal(torch.load(pt_path, weights_only=True)["linear.weight"], zeros["linear.weight"])


def test_mismatched_architecture_is_a_clear_error(trained_tiny, tmp_path, capsys):
    write_checkpoint(tmp_path / "c.pt", trained_tiny.state_dict(), arch="resnet18")
    with pytest.raises(UserError, match=r"'ema' weights do not fit a resnet18 model .*missing"):
        model_from_checkpoint(tmp_path / "c.pt")
    wrong_classes = dict(trained_tiny.state_dict(), **{"linear.weight": torch.zeros(100, 64),
                                                       "linear.bias": torch.zeros(100)})
    write_checkpoint(tmp_path / "d.pt", wrong_classes)
    with pytest.raises(UserError, match=r"linear.weight \(100, 64\) instead of \(10, 64\)"):
        model_from_checkpoint(tmp_path / "d.pt")
    assert main(["export", str(tmp_path / "c.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ratio-fast: error: checkpoint") and err.count("\n") == 1


def test_bad_checkpoint_files_are_clear_errors(tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    for path, message in [(tmp_path / "missing.pt", "no such file"), (tmp_path / "junk.pt", "not a readable")]:
        assert main(["export", str(path), "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ratio-fast: error:") and message in err
    save_checkpoint(tmp_path / "no_ema.pt", {"config": TrainConfig(arch="tiny").to_dict(),
                                             "trainer": {"model": {}}, "rng": {}})
    with pytest.raises(UserError, match="no 'ema' weights"):
        model_from_checkpoint(tmp_path / "no_ema.pt")
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
