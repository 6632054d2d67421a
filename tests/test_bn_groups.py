"""--bn-groups: BatchNorm over equal slices of the batch, as nn.DataParallel computes it
(ratio_fast/models/grouped_batchnorm.py). The 2-process equivalence is in test_distributed.py."""
import copy

import pytest
import torch
from torch import nn

from ratio_fast import RatioTrainer, TrainConfig, create_model
from ratio_fast.cli import main
from ratio_fast.config import resume_differences
from ratio_fast.attacks.cuda_graph import GraphedCall
from ratio_fast.training.distributed import DistContext
from ratio_fast.errors import UserError
from ratio_fast.attacks.objectives import ratio_loss
from ratio_fast.models.grouped_batchnorm import (GroupedBatchNorm2d, group_batchnorm, grouped_joint_batch,
                                                 split_grouped_logits)
from ratio_fast.cli.run import Run
from conftest import no_host_sync

CHANNELS = 3


def batchnorm(seed=0) -> nn.BatchNorm2d:
    """A BatchNorm2d with weights and running statistics that are not the defaults."""
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(CHANNELS)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(CHANNELS, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(CHANNELS, generator=g))
        bn.running_mean.copy_(torch.randn(CHANNELS, generator=g))
        bn.running_var.copy_(torch.rand(CHANNELS, generator=g) + 0.5)
    return bn


def slices_unlike(groups, n=4, seed=1) -> torch.Tensor:
    """(groups * n, C, 5, 5): each slice with its own mean and scale, so per-slice statistics differ."""
    g = torch.Generator().manual_seed(seed)
    slices = [torch.randn(n, CHANNELS, 5, 5, generator=g) * (1 + k) + 2 * k - 1 for k in range(groups)]
    return torch.cat(slices)


def per_slice_batchnorm(bn: nn.BatchNorm2d, x: torch.Tensor, weights: torch.Tensor, groups: int):
    """Plain BatchNorm on each slice (a DataParallel replica each): outputs, input gradients,
    summed weight and bias gradients, and each replica's module."""
    outputs, input_grads, replicas = [], [], []
    for x_slice, w_slice in zip(x.chunk(groups), weights.chunk(groups)):
        replica = copy.deepcopy(bn)
        x_slice = x_slice.detach().clone().requires_grad_(True)
        y = replica(x_slice)
        (y.float() * w_slice).sum().backward()
        outputs.append(y.detach())
        input_grads.append(x_slice.grad)
        replicas.append(replica)
    param_grads = [sum(r.weight.grad for r in replicas), sum(r.bias.grad for r in replicas)]
    return torch.cat(outputs), torch.cat(input_grads), param_grads, replicas


def grouped_batchnorm(bn: nn.BatchNorm2d, x: torch.Tensor, weights: torch.Tensor, groups: int):
    grouped = GroupedBatchNorm2d(CHANNELS, groups)
    grouped.load_state_dict(bn.state_dict())
    x = x.detach().clone().requires_grad_(True)
    y = grouped(x)
    (y.float() * weights).sum().backward()
    return y.detach(), x.grad, [grouped.weight.grad, grouped.bias.grad], grouped


@pytest.mark.parametrize("groups", [2, 4])
def test_equals_batchnorm_on_each_slice_with_the_first_slices_running_statistics(groups):
    bn, x = batchnorm(), slices_unlike(groups)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    y, x_grad, param_grads, replicas = per_slice_batchnorm(bn, x, weights, groups)
    y_g, x_grad_g, param_grads_g, grouped = grouped_batchnorm(bn, x, weights, groups)

    torch.testing.assert_close(y_g, y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_grad_g, x_grad, atol=1e-5, rtol=1e-5)
    for ours, theirs in zip(param_grads_g, param_grads):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-5)
    first = replicas[0]
    torch.testing.assert_close(grouped.running_mean, first.running_mean)
    torch.testing.assert_close(grouped.running_var, first.running_var)
    assert int(grouped.num_batches_tracked) == 1
    # the other slices would have given other running statistics, and the whole batch others again
    assert not torch.allclose(grouped.running_mean, replicas[1].running_mean, atol=1e-2)
    whole = copy.deepcopy(bn)
    whole(x)
    assert not torch.allclose(grouped.running_var, whole.running_var, atol=1e-2)


def test_running_statistics_follow_the_first_slice_over_steps():
    bn, grouped = batchnorm(), GroupedBatchNorm2d(CHANNELS, groups=2)
    grouped.load_state_dict(bn.state_dict())
    for step in range(3):
        x = slices_unlike(2, seed=10 + step)
        grouped(x)
        bn(x.chunk(2)[0])
    torch.testing.assert_close(grouped.running_mean, bn.running_mean)
    torch.testing.assert_close(grouped.running_var, bn.running_var)
    assert int(grouped.num_batches_tracked) == int(bn.num_batches_tracked) == 3


def test_eval_mode_is_batchnorm_on_the_running_statistics():
    bn = batchnorm().eval()
    grouped = group_batchnorm(nn.Sequential(copy.deepcopy(bn)), 2).eval()
    x = slices_unlike(2)
    assert torch.equal(grouped(x), bn(x))
    assert torch.equal(grouped[0].running_mean, bn.running_mean)  # nothing updated


def test_channels_last_in_channels_last_out_with_the_same_numbers():
    bn, x = batchnorm(), slices_unlike(2)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    y, x_grad, param_grads, grouped = grouped_batchnorm(bn, x, weights, 2)
    to_last = lambda t: t.contiguous(memory_format=torch.channels_last)
    y_l, x_grad_l, param_grads_l, grouped_l = grouped_batchnorm(bn, to_last(x), to_last(weights), 2)
    assert y_l.is_contiguous(memory_format=torch.channels_last) and not y_l.is_contiguous()
    torch.testing.assert_close(y_l, y, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x_grad_l, x_grad, atol=1e-6, rtol=1e-6)
    for ours, theirs in zip(param_grads_l + [grouped_l.running_var], param_grads + [grouped.running_var]):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-6)


def test_bf16_autocast_keeps_the_dtype_and_computes_the_statistics_in_fp32():
    bn = batchnorm()
    x = slices_unlike(2).bfloat16()
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, x_grad, _, replicas = per_slice_batchnorm(bn, x, weights, 2)
        y_g, x_grad_g, _, grouped = grouped_batchnorm(bn, x, weights, 2)
    assert y_g.dtype == y.dtype == torch.bfloat16 and x_grad_g.dtype == torch.bfloat16
    torch.testing.assert_close(y_g, y, atol=2e-2, rtol=1e-2)  # one bf16 rounding apart at most
    torch.testing.assert_close(x_grad_g, x_grad, atol=2e-2, rtol=1e-2)
    # running statistics are fp32 and equal the fp32 statistics of the (bf16) first slice
    assert grouped.running_mean.dtype == torch.float32
    torch.testing.assert_close(grouped.running_mean, replicas[0].running_mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grouped.running_var, replicas[0].running_var, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_keeps_for_backward_one_activation_in_its_dtype_as_batchnorm_does(dtype):
    def activations_saved(module, x):
        saved = []
        keep = lambda t: saved.append(t) or t
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
            module(x)
        return sorted(str(t.dtype) for t in saved if t.numel() == x.numel())

    x = slices_unlike(2).to(dtype).requires_grad_(True)
    bn = batchnorm()
    assert activations_saved(group_batchnorm(nn.Sequential(copy.deepcopy(bn)), 2), x) \
        == activations_saved(bn, x) == [str(dtype)]


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def forward_backward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    out = model(x)
    out.float().square().sum().backward()
    return out.detach(), [p.grad for p in model.parameters()]


@pytest.mark.slow
def test_torch_compile_fullgraph_of_a_model_with_it():
    eager = group_batchnorm(tiny_net(), 2)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True)  # a graph break or data-dependent branch fails here
    x = torch.rand(8, 3, 6, 6, generator=torch.Generator().manual_seed(5))
    out, grads = forward_backward(eager, x)
    out_c, grads_c = forward_backward(compiled, x)
    torch.testing.assert_close(out_c, out, atol=1e-5, rtol=1e-5)
    for ours, theirs in zip(grads_c, grads):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):  # the buffer updates survive compiling
        torch.testing.assert_close(getattr(compiled_model[1], name), getattr(eager[1], name))


def test_one_group_leaves_the_model_and_the_joint_batch_as_they_were():
    model = create_model("tiny")
    classes = [type(m) for m in model.modules()]
    assert group_batchnorm(model, 1) is model and [type(m) for m in model.modules()] == classes
    trainer = RatioTrainer(create_model("tiny"), TrainConfig(arch="tiny"), total_steps=1)
    assert not any(isinstance(m, GroupedBatchNorm2d) for m in trainer.model.modules())
    x, z = torch.rand(6, 3, 4, 4), torch.rand(6, 3, 4, 4)
    assert torch.equal(grouped_joint_batch(x, z, 1), torch.cat([x, z]))
    logits = torch.randn(12, 10)
    logits_in, logits_out = split_grouped_logits(logits, 6, 1)
    assert torch.equal(logits_in, logits[:6]) and torch.equal(logits_out, logits[6:])
    assert split_grouped_logits(logits, 12, 1) == (logits, None)


def test_joint_batch_groups_hold_each_replicas_in_and_out_images_and_the_logits_come_back_in_order():
    x, z = torch.arange(8.0).view(8, 1, 1, 1), 100 + torch.arange(8.0).view(8, 1, 1, 1)
    batch = grouped_joint_batch(x, z, 2).flatten()
    # the authors' interleaved batch x0 z0 x1 z1 ... cut by DataParallel into 2 chunks: x0-3 z0-3 | x4-7 z4-7
    assert batch.tolist() == [0, 1, 2, 3, 100, 101, 102, 103, 4, 5, 6, 7, 104, 105, 106, 107]
    logits_in, logits_out = split_grouped_logits(batch.view(16, 1), 8, 2)
    assert torch.equal(logits_in, x.view(8, 1)) and torch.equal(logits_out, z.view(8, 1))
    assert torch.equal(grouped_joint_batch(x, None, 2), x)
    with pytest.raises(ValueError, match="6 images cannot be cut into 4"):
        grouped_joint_batch(x[:6], z[:6], 4)


def test_group_batchnorm_swaps_the_class_and_keeps_the_state_dict():
    model = create_model("tiny")
    state = copy.deepcopy(model.state_dict())
    group_batchnorm(model, 4)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(type(m) is GroupedBatchNorm2d and m.groups == 4 for m in norms)
    assert model.state_dict().keys() == state.keys()
    assert "groups=4" in repr(norms[0])
    with pytest.raises(ValueError, match="no BatchNorm2d"):
        group_batchnorm(nn.Linear(2, 2), 2)
    with pytest.raises(ValueError, match="SyncBatchNorm"):
        group_batchnorm(nn.Sequential(nn.SyncBatchNorm(3)), 2)
    with pytest.raises(ValueError, match="running statistics"):
        group_batchnorm(nn.Sequential(nn.BatchNorm2d(3, momentum=None)), 2)


def smooth_tiny_model() -> nn.Module:
    """The tiny model with SiLU for ReLU: two BatchNorm kernels a rounding apart can put an output at
    exactly 0 in one and 1e-8 in the other, where ReLU's gradient switches between 0 and 1."""
    model = create_model("tiny")
    for index, layer in enumerate(model.features):
        if isinstance(layer, nn.ReLU):
            model.features[index] = nn.SiLU()
    return model


def assert_relatively_close(ours: torch.Tensor, theirs: torch.Tensor, tolerance: float, what: str) -> None:
    error = float((ours.double() - theirs.double()).norm() / theirs.double().norm().clamp_min(1e-12))
    assert error <= tolerance, f"{what}: relative error {error:.2e} > {tolerance:.0e}"


def step_and_replicas(device="cpu", tolerance=2e-5, **speed):
    """One RATIO step with --bn-groups 2 against two copies of the model (DataParallel's replicas)
    in train mode, each fed x's and z's half: the same loss, summed gradients and the first
    replica's running statistics, within `tolerance` (relative, in the L2 norm of each tensor)."""
    # no weight decay: SGD's fused step adds it to the gradients in place, which are compared after it
    config = TrainConfig(arch="tiny", batch_size=16, steps_in=2, steps_out=2, bn_groups=2, weight_decay=0.0,
                         device=device, **speed)
    torch.manual_seed(0)
    trainer = RatioTrainer(smooth_tiny_model(), config, total_steps=10, device=device)
    replicas = [copy.deepcopy(trainer.model).train() for _ in range(2)]
    for replica in replicas:  # plain BatchNorm2d again: each replica normalizes its whole input
        for m in replica.modules():
            if isinstance(m, GroupedBatchNorm2d):
                m.__class__ = nn.BatchNorm2d
    g = torch.Generator().manual_seed(6)
    x, y, z = (t.to(device) for t in (torch.rand(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g),
                                      torch.rand(16, 3, 32, 32, generator=g)))
    x_adv, z_adv = (t.clone() for t in trainer.adversarial_examples(x, y, z))  # the attacks are deterministic
    with trainer.fp32_convolutions():
        with trainer.autocast():
            logits = [r(torch.cat([xs, zs])) for r, xs, zs in zip(replicas, x_adv.chunk(2), z_adv.chunk(2))]
            loss = ratio_loss(torch.cat([l[:8] for l in logits]), y, torch.cat([l[8:] for l in logits]), config.lam)
        loss.backward()

    metrics = trainer.step(x, y, z)
    assert_relatively_close(metrics["loss"], loss.detach(), tolerance, "loss")
    for (name, p), *replica_params in zip(trainer.model.named_parameters(), *(r.parameters() for r in replicas)):
        assert_relatively_close(p.grad, sum(q.grad for q in replica_params), tolerance, f"gradient of {name}")
    replica_buffers = dict(replicas[0].named_buffers())
    for name, buffer in trainer.model.named_buffers():
        assert_relatively_close(buffer.float(), replica_buffers[name].float(), tolerance, name)
    return trainer


def test_trainer_step_normalizes_each_group_like_a_replica():
    step_and_replicas()


def test_batch_size_and_flags_that_do_not_fit_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(UserError, match=r"--batch-size 30 must be divisible by --bn-groups 4"):
        TrainConfig(batch_size=30, bn_groups=4)
    with pytest.raises(UserError, match="--bn-groups 2 and --sync-bn exclude each other"):
        TrainConfig(bn_groups=2, sync_bn=True)
    with pytest.raises(UserError, match="--bn-groups"):
        TrainConfig(bn_groups=0)
    # each of 2 processes takes 18 of 36 images, which 4 groups cannot share
    config = TrainConfig(arch="tiny", dataset="synthetic", device="cpu", batch_size=36, bn_groups=4)
    with pytest.raises(UserError, match=r"--batch-size 36 must be divisible by the 2 processes x --bn-groups 4"):
        Run(config, tmp_path / "run", dist_context=DistContext(rank=0, world_size=2))
    assert main(["train", "--dataset", "synthetic", "--arch", "tiny", "--batch-size", "30", "--bn-groups", "4",
                 "--out", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--bn-groups 4" in err and "Traceback" not in err


def test_a_resume_refuses_another_bn_groups():
    saved, given = TrainConfig(), TrainConfig(bn_groups=2)
    allowed, refused = resume_differences(saved, given)
    assert allowed == [] and refused == ["--bn-groups: checkpoint 1, given 2"]
    assert TrainConfig.from_dict({k: v for k, v in saved.to_dict().items() if k != "bn_groups"}).bn_groups == 1


# ---- on a GPU ------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_cuda_graph_replays_a_bf16_channels_last_train_forward_and_backward():
    model = group_batchnorm(tiny_net(), 2).cuda().to(memory_format=torch.channels_last)
    reference = copy.deepcopy(model)
    initial_buffers = [b.clone() for b in model.buffers()]
    x = torch.rand(8, 3, 6, 6, device="cuda").contiguous(memory_format=torch.channels_last)

    def train_step(net, inputs):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = net(inputs)
        out.float().square().sum().backward()
        return (out,)

    graphed = GraphedCall(lambda inputs: train_step(model, inputs))
    graphed(x)  # warm-up, capture, replay: the statistics and gradients of three steps
    model.zero_grad(set_to_none=False)  # in place: the graph holds these tensors
    with torch.no_grad():
        for buffer, initial in zip(model.buffers(), initial_buffers):
            buffer.copy_(initial)
    (replayed,) = graphed(x)
    (expected,) = train_step(reference, x)
    assert replayed.dtype == torch.bfloat16 and len(graphed._graphs) == 1
    torch.testing.assert_close(replayed, expected)
    for (name, ours), theirs in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, msg=name)
    for (name, ours), theirs in zip(model.named_buffers(), reference.buffers()):
        torch.testing.assert_close(ours, theirs, msg=name)


@pytest.mark.gpu
def test_trainer_step_on_cuda_bf16_channels_last_graphed_attacks_without_host_sync():
    trainer = step_and_replicas("cuda", tolerance=3e-2, amp=True, channels_last=True, cuda_graphs=True,
                                compile=False, attack_schedule="concat")
    g = torch.Generator().manual_seed(7)
    x, y, z = (t.cuda() for t in (torch.rand(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g),
                                  torch.rand(16, 3, 32, 32, generator=g)))
    trainer.step(x, y, z)
    torch.cuda.synchronize()
    with no_host_sync():
        metrics = trainer.step(x, y, z)
    assert torch.isfinite(metrics["loss"]) and metrics["skipped"] == 0
