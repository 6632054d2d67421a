"""What the engine calls fp32 runs in IEEE fp32, not cuDNN's TF32 (torch's default for fp32
convolutions on Ampere and newer GPUs): under --no-amp every convolution, under AMP the fp32
first convolution, forward and backward. The reference (bench/reference.py) keeps torch's default.

On a CPU the cuDNN flag is still there to read and set, so the tests record it from inside the
first convolution's forward and backward during a real step; the GPU test checks the numbers.
"""
import pytest
import torch

from ratio_fast import RatioTrainer, TrainConfig, create_model
from ratio_fast.models.precision import first_conv, fp32_conv_math, ieee_fp32_convolutions

CUDNN = torch.backends.cudnn


@pytest.fixture(autouse=True)
def torch_default_tf32():
    """Each test starts from torch's default (TF32 allowed for cuDNN) and leaves it so."""
    assert CUDNN.allow_tf32 and CUDNN.conv.fp32_precision == "tf32", "a previous test leaked its TF32 setting"
    yield
    CUDNN.allow_tf32 = True


def test_the_context_turns_tf32_off_and_restores_it():
    assert fp32_conv_math("cuda") == "tf32" and fp32_conv_math("cpu") == "ieee"
    with ieee_fp32_convolutions():
        assert fp32_conv_math("cuda") == "ieee" and CUDNN.allow_tf32 is False  # both interfaces agree
        with ieee_fp32_convolutions():
            pass
        assert fp32_conv_math("cuda") == "ieee"  # nested: the inner one restores the outer setting
    assert fp32_conv_math("cuda") == "tf32" and CUDNN.allow_tf32 and CUDNN.rnn.fp32_precision == "tf32"


def test_the_context_restores_per_op_settings_made_through_the_new_interface():
    CUDNN.conv.fp32_precision = "ieee"  # a mix: reading allow_tf32 now raises in torch 2.11-2.13
    with ieee_fp32_convolutions():
        assert fp32_conv_math("cuda") == "ieee"
    assert (CUDNN.conv.fp32_precision, CUDNN.rnn.fp32_precision) == ("ieee", "tf32")
    CUDNN.conv.fp32_precision = "tf32"


def conv_math_seen_by_the_first_conv(config: TrainConfig) -> set[tuple[str, str]]:
    """{(pass, cuDNN fp32 conv math)} recorded in the first convolution during one RATIO step."""
    torch.manual_seed(0)
    trainer = RatioTrainer(create_model("tiny"), config, total_steps=10)
    seen = set()

    def record_forward(module, inputs, output):
        seen.add(("forward", fp32_conv_math("cuda")))
        if output.requires_grad:  # attacks and the train step differentiate through it
            output.register_hook(lambda grad: seen.add(("backward", fp32_conv_math("cuda"))))

    first_conv(trainer.model).register_forward_hook(record_forward)
    x, z = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    trainer.step(x, torch.randint(0, 10, (4,)), z)
    trainer.adversarial_examples(x, torch.randint(0, 10, (4,)), z)
    assert fp32_conv_math("cuda") == "tf32"  # restored after the step
    return seen


@pytest.mark.parametrize("amp", [False, True], ids=["no-amp", "amp-fp32-first-conv"])
def test_fp32_convolutions_run_ieee_in_forward_and_backward(amp):
    config = TrainConfig(arch="tiny", batch_size=4, steps_in=1, steps_out=2, amp=amp)
    assert conv_math_seen_by_the_first_conv(config) == {("forward", "ieee"), ("backward", "ieee")}


def test_bf16_convolutions_leave_torch_default_alone():
    config = TrainConfig(arch="tiny", batch_size=4, steps_in=1, steps_out=2, amp=True, fp32_first_conv=False)
    assert conv_math_seen_by_the_first_conv(config) == {("forward", "tf32"), ("backward", "tf32")}


@pytest.mark.gpu
def test_the_fp32_first_conv_is_ieee_accurate_on_cuda():
    """TF32 keeps 10 mantissa bits (relative error ~1e-3); IEEE fp32 convolutions stay near 1e-6."""
    torch.manual_seed(0)
    trainer = RatioTrainer(create_model("wrn34"), TrainConfig(arch="wrn34", amp=True), total_steps=1, device="cuda")
    conv = first_conv(trainer.model)
    x = torch.rand(64, 3, 32, 32, device="cuda").to(memory_format=trainer.memory_format)
    exact = torch.nn.functional.conv2d(x.double(), conv.weight.double(), None, conv.stride, conv.padding)
    with trainer.fp32_convolutions(), trainer.autocast(), torch.no_grad():
        ours = conv(x)
    with torch.no_grad():
        default = torch.nn.functional.conv2d(x, conv.weight, None, conv.stride, conv.padding)  # torch's TF32
    scale = exact.abs().max()
    assert ours.dtype == torch.float32
    assert (ours.double() - exact).abs().max() / scale < 1e-5
    assert fp32_conv_math("cuda") == "tf32"  # what the reference runs in on this GPU
    # Recorded, not asserted: whether TF32 changes this conv depends on cuDNN's choice of kernel.
    print(f"relative error: ieee {(ours.double() - exact).abs().max() / scale:.2e}, "
          f"torch default {(default.double() - exact).abs().max() / scale:.2e}")
