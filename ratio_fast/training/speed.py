"""The speed switches of a TrainConfig, resolved for one device.

Each switch is a TrainConfig field (and a `ratio-fast train` flag) so the benchmark can show
what each is worth. None means "the fast choice for this device": on for CUDA, off for CPU.
The switches that only exist on a GPU degrade to the plain path on a CPU where that computes
the same thing (streams run one after the other), and refuse where asking for them is a
mistake (CUDA graphs without CUDA).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..choices import AMP_TYPES, ATTACKS, SCHEDULES, SEQUENTIAL, check_builders, schedule_candidates
from ..errors import UserError

if TYPE_CHECKING:
    from ..config import TrainConfig

# --amp-dtype (choices.AMP_TYPES): the autocast type of each name.
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
check_builders(AMP_DTYPES, AMP_TYPES, __name__)


@dataclass(frozen=True)
class SpeedSettings:
    amp_dtype: torch.dtype | None  # autocast dtype; None: fp32 throughout
    channels_last: bool
    attack_schedule: str  # a row of choices.SCHEDULES: auto until the trainer has measured the candidates
    schedule_candidates: tuple[str, ...]  # what auto measures: choices.schedule_candidates of --attack
    cuda_graphs: bool
    compile: bool
    fp32_first_conv: bool  # only under autocast
    ieee_fp32_convs: bool  # fp32 convolutions (all without autocast, the first under it) in IEEE fp32, not TF32
    input_grad_only: bool
    fused_optimizer: bool

    @property
    def precision(self) -> str:
        """fp32, bf16 or fp16: what the forward and backward passes compute in."""
        names = {dtype: name for name, dtype in AMP_DTYPES.items()}
        return names.get(self.amp_dtype, "fp32")

    def autocast(self, device: torch.device, cache_enabled: bool = True):
        """Autocast to the AMP dtype, or nothing in fp32. The attacks keep their perturbation in fp32."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device.type, dtype=self.amp_dtype, cache_enabled=cache_enabled)


def wants_channels_last(config: TrainConfig, device: torch.device) -> bool:
    """channels_last unless the config says otherwise: on for CUDA (tensor cores), off for CPU."""
    return device.type == "cuda" if config.channels_last is None else config.channels_last


def resolve_speed(config: TrainConfig, device: torch.device | str) -> SpeedSettings:
    device = torch.device(device)
    cuda = device.type == "cuda"

    def on_for_cuda(value: bool | None) -> bool:
        return cuda if value is None else bool(value)

    if config.cuda_graphs and not cuda:
        raise UserError(f"--cuda-graphs needs a CUDA device (this run is on {device}); use --no-cuda-graphs")
    amp = on_for_cuda(config.amp)
    candidates = schedule_candidates(config.attack)
    schedule = config.attack_schedule
    if SCHEDULES[schedule].one_batch and not ATTACKS[config.attack].shares_batch:
        # e.g. APGD's per-sample step-size schedule has no joint in+out form: the attacks stay separate.
        sharing = " or ".join(name for name, row in ATTACKS.items() if row.shares_batch)
        raise UserError(f"--attack-schedule {schedule} works with --attack {sharing} only; use "
                        f"{' or '.join(candidates + (SEQUENTIAL,))}")
    if SCHEDULES[schedule].picks and len(candidates) == 1:
        schedule = candidates[0]  # nothing to measure
    if not cuda and SCHEDULES[schedule].concurrent:
        schedule = SEQUENTIAL  # a CPU has one stream; this computes the same thing
    return SpeedSettings(
        amp_dtype=AMP_DTYPES[config.amp_dtype] if amp else None,
        channels_last=wants_channels_last(config, device),
        attack_schedule=schedule,
        schedule_candidates=candidates,
        cuda_graphs=on_for_cuda(config.cuda_graphs),
        compile=on_for_cuda(config.compile),
        fp32_first_conv=config.fp32_first_conv and amp,
        ieee_fp32_convs=not amp or config.fp32_first_conv,
        input_grad_only=config.input_grad_only,
        fused_optimizer=config.fused_optimizer,
    )
