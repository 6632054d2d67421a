"""What each batch holds: which images, and every random draw of their augmentation, for which rank.

Every loader kind (gpu, torch, dali) asks this module, so they all load the same images with the
same draws, and a batch is a pure function of (seed, epoch, index): a resumed run, a loader rebuilt
mid-epoch and a worker process all agree without sharing state.

- Order: position p of an epoch holds image ``permute(p)``, where ``permute`` is a
  pseudo-random bijection of [0, N) keyed by (seed, epoch): a 4-round Feistel network on the
  next even number of bits, with cycle walking back into [0, N). It is evaluated per position,
  so a batch costs O(batch) work and no O(N) table, even for the 79 million Tiny Images rows.
- Draws belong to the position, each from its own salted hash of (seed, epoch, position), so
  turning one augmentation on or off leaves the others as they were: the crop shift (dy, dx),
  each uniform over the 2*PAD+1 integer offsets, and the flip bit; the AutoAugment draws (which
  of the policy's sub-policies, whether each of its two operations fires, each one's sign); the
  Cutout centre (cy, cx), uniform over the image's pixels.
- Sharding: global batch ``index`` holds positions [index*B, (index+1)*B); rank r of W gets the
  r-th of W equal slices. An N-rank run therefore sees exactly the batches of a 1-rank run with
  the same global batch, with the same draws.

The AutoAugment draws follow the policy's table (``autoaugment.CIFAR10_POLICY``); each drawn
operation is one code (``autoaugment.autoaugment_code``), which every loader decodes the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ratio_fast.choices import Augmentation
from ratio_fast.data.autoaugment import CIFAR10_POLICY, STAGES, autoaugment_code
from ratio_fast.datasets import IMAGE_HW
from ratio_fast.errors import UserError

PAD = 4  # random-crop padding in pixels, as in the RATIO and standard CIFAR recipes
NUM_SHIFTS = 2 * PAD + 1  # integer crop offsets per axis: 0..2*PAD, i.e. a shift of -PAD..PAD

_FEISTEL_ROUNDS = 4
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # splitmix64 increment: spreads consecutive inputs
# Salts separate the hashes of the draws from the crop/flip hash (and from each other).
_CUTOUT_SALT = np.uint64(0x5C0FFEE5A17C0DE5)
_AUTOAUGMENT_SALT = np.uint64(0xA07A0C1F4B25D3E7)
_PROBABILITY_BITS = 24  # a stage fires when a 24-bit uniform fraction is below its probability


@dataclass(frozen=True)
class Draws:
    """Which random draws a plan makes (besides the order)."""

    crop_flip: bool = True
    autoaugment: bool = False
    cutout: bool = False

    @classmethod
    def of(cls, augmentation: Augmentation) -> "Draws":
        """The draws an --augment row needs."""
        return cls(crop_flip=augmentation.crop_fill is not None, autoaugment=augmentation.autoaugment,
                   cutout=augmentation.cutout_size > 0)


@dataclass(frozen=True)
class BatchPlan:
    """One rank's part of one batch: source rows, and the draws the ``Draws`` asked for."""

    indices: np.ndarray  # int64 (b,)
    shift: np.ndarray | None = None  # int64 (b, 2), (dy, dx) crop offsets in [0, 2*PAD]
    flip: np.ndarray | None = None  # int64 (b,), 0/1
    autoaugment: np.ndarray | None = None  # int64 (b, STAGES) codes (``autoaugment_code``); 0: no op
    cutout: np.ndarray | None = None  # int64 (b, 2), centres cy in [0, H), cx in [0, W)

    def __len__(self) -> int:
        return len(self.indices)


def batches_per_epoch(num_samples: int, batch_size: int, drop_last: bool) -> int:
    """Global batches in an epoch: the last partial batch counts only without ``drop_last``."""
    return num_samples // batch_size if drop_last else -(-num_samples // batch_size)


def check_sharding(batch_size: int, rank: int, world_size: int) -> int:
    """Validate the sharding arguments; return the per-rank batch size."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if batch_size % world_size:
        raise UserError(f"--batch-size {batch_size} (the global batch) must be divisible by the "
                        f"number of processes ({world_size})")
    return batch_size // world_size


def shard_positions(index: int, batch_size: int, num_samples: int, rank: int,
                    world_size: int) -> np.ndarray:
    """Epoch positions of global batch ``index`` that belong to ``rank`` (clipped to the epoch).

    A last partial batch (no drop_last) is split the same way, so late ranks may get fewer
    positions or none.
    """
    per_rank = batch_size // world_size
    lo = index * batch_size + rank * per_rank
    return np.arange(lo, min(lo + per_rank, num_samples), dtype=np.int64)


class EpochKeys:
    """The random keys of one epoch, derived from (seed, epoch); cheap to rebuild anywhere."""

    def __init__(self, seed: int, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        state = np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, epoch]).generate_state(
            _FEISTEL_ROUNDS + 1, np.uint64)
        self.round_keys = state[:_FEISTEL_ROUNDS]
        self.augment_key = state[_FEISTEL_ROUNDS]

    def order(self, positions: np.ndarray, num_samples: int, shuffle: bool) -> np.ndarray:
        """Image index at each epoch position (a bijection of [0, num_samples) when shuffled)."""
        positions = np.asarray(positions, dtype=np.int64)
        if not shuffle or num_samples == 1:
            return positions
        half_bits = max(1, (int(num_samples - 1).bit_length() + 1) // 2)
        values = positions.astype(np.uint64)
        outside = np.ones(len(values), dtype=bool)
        # Cycle walking: re-encrypt the values that land outside [0, N) until none do. The
        # domain is below 4N, so this takes a few rounds, and it stays a bijection of [0, N).
        while outside.any():
            values[outside] = _feistel(values[outside], self.round_keys, half_bits)
            outside = values >= np.uint64(num_samples)
        return values.astype(np.int64)

    def crop_flip(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shift (b, 2) with each axis uniform in [0, 2*PAD], flip (b,) in {0, 1}) per position."""
        h = self._position_hash(positions)
        shift = np.stack([h % np.uint64(NUM_SHIFTS), (h >> np.uint64(20)) % np.uint64(NUM_SHIFTS)], axis=1)
        flip = h >> np.uint64(63)
        return shift.astype(np.int64), flip.astype(np.int64)

    def autoaugment(self, positions: np.ndarray) -> np.ndarray:
        """AutoAugment codes (b, STAGES) per position: a uniform sub-policy, and per stage
        whether it fires (with the policy's probability) and its sign (uniform)."""
        h = _mix(self._position_hash(positions) ^ _AUTOAUGMENT_SALT)
        fractions = _mix(h)  # a second word of bits: the firing draws
        # Multiply-shift maps the 32 high bits to [0, 25) with a bias below 25 / 2**32.
        sub_policy = (((h >> np.uint64(32)) * np.uint64(len(CIFAR10_POLICY))) >> np.uint64(32)).astype(np.int64)
        probabilities = np.array([[stage[1] for stage in sub] for sub in CIFAR10_POLICY])  # (25, STAGES)
        unit = np.uint64((1 << _PROBABILITY_BITS) - 1)
        codes = np.zeros((len(h), STAGES), dtype=np.int64)
        for stage in range(STAGES):
            fraction = ((fractions >> np.uint64(32 * stage)) & unit) / float(1 << _PROBABILITY_BITS)
            fires = fraction < probabilities[sub_policy, stage]
            negative = ((h >> np.uint64(stage)) & np.uint64(1)).astype(np.int64)  # low bits: the signs
            codes[:, stage] = np.where(fires, autoaugment_code(sub_policy, stage, negative), 0)
        return codes

    def cutout_centres(self, positions: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
        """Cutout centre (cy, cx) per position, (b, 2), uniform over an image of size ``image_hw``."""
        h = _mix(self._position_hash(positions) ^ _CUTOUT_SALT)
        height, width = (np.uint64(n) for n in image_hw)
        return np.stack([h % height, (h >> np.uint64(32)) % width], axis=1).astype(np.int64)

    def _position_hash(self, positions: np.ndarray) -> np.ndarray:
        return _mix(np.asarray(positions, dtype=np.uint64) * _GOLDEN ^ self.augment_key)


def plan_batch(seed: int, epoch: int, index: int, *, batch_size: int, num_samples: int, shuffle: bool,
               draws: Draws = Draws(), image_hw: tuple[int, int] = IMAGE_HW, rank: int = 0,
               world_size: int = 1) -> BatchPlan:
    """The rows and draws that ``rank`` loads for global batch ``index`` of ``epoch``;
    ``image_hw`` (height, width) bounds the Cutout centres."""
    positions = shard_positions(index, batch_size, num_samples, rank, world_size)
    return plan_positions(EpochKeys(seed, epoch), positions, num_samples, shuffle, draws, image_hw)


def plan_epoch(seed: int, epoch: int, num_samples: int, shuffle: bool, draws: Draws = Draws(),
               image_hw: tuple[int, int] = IMAGE_HW) -> BatchPlan:
    """The plan of every position of an epoch at once (the gpu loader keeps it on the device)."""
    positions = np.arange(num_samples, dtype=np.int64)
    return plan_positions(EpochKeys(seed, epoch), positions, num_samples, shuffle, draws, image_hw)


def plan_positions(keys: EpochKeys, positions: np.ndarray, num_samples: int, shuffle: bool, draws: Draws,
                   image_hw: tuple[int, int]) -> BatchPlan:
    shift, flip = keys.crop_flip(positions) if draws.crop_flip else (None, None)
    return BatchPlan(
        keys.order(positions, num_samples, shuffle), shift, flip,
        autoaugment=keys.autoaugment(positions) if draws.autoaugment else None,
        cutout=keys.cutout_centres(positions, image_hw) if draws.cutout else None,
    )


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijective 64-bit hash whose output bits all look independent."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _feistel(values: np.ndarray, round_keys: np.ndarray, half_bits: int) -> np.ndarray:
    """A keyed bijection of [0, 2**(2*half_bits)): balanced Feistel rounds on two halves."""
    mask = np.uint64((1 << half_bits) - 1)
    shift = np.uint64(half_bits)
    left, right = values >> shift, values & mask
    for key in round_keys:
        left, right = right, left ^ (_mix(right ^ key) & mask)
    return (left << shift) | right
