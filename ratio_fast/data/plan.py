"""What each batch holds: which images, which crop offsets, which flips, for which rank.

Every loader kind (gpu, torch, dali) asks this module, so they all produce the same batches,
and a batch is a pure function of (seed, epoch, index): a resumed run, a loader rebuilt
mid-epoch and a worker process all agree without sharing state.

- Order: position p of an epoch holds image ``permute(p)``, where ``permute`` is a
  pseudo-random bijection of [0, N) keyed by (seed, epoch): a 4-round Feistel network on the
  next even number of bits, with cycle walking back into [0, N). It is evaluated per position,
  so a batch costs O(batch) work and no O(N) table, even for the 79 million Tiny Images rows.
- Augmentation: the crop shift (dy, dx), each uniform over the 2*PAD+1 integer offsets, and the
  flip bit belong to the position, drawn from a hash of (seed, epoch, position). With cutout,
  so does the cutout centre (cy, cx), uniform over the image's pixels, from a second hash of
  the same inputs: turning cutout on or off leaves the order, crops and flips as they were.
- Sharding: global batch ``index`` holds positions [index*B, (index+1)*B); rank r of W gets the
  r-th of W equal slices. An N-rank run therefore sees exactly the batches of a 1-rank run with
  the same global batch, with the same crops and flips.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ratio_fast.errors import UserError

PAD = 4  # random-crop padding in pixels (zeros), as in the RATIO and standard CIFAR recipes
NUM_SHIFTS = 2 * PAD + 1  # integer crop offsets per axis: 0..2*PAD, i.e. a shift of -PAD..PAD

_FEISTEL_ROUNDS = 4
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # splitmix64 increment: spreads consecutive inputs
_CUTOUT_SALT = np.uint64(0x5C0FFEE5A17C0DE5)  # separates the cutout hash from the crop/flip hash


@dataclass(frozen=True)
class BatchPlan:
    """One rank's part of one batch: source rows, crop shifts (dy, dx) in [0, 2*PAD], flips 0/1,
    and cutout centres (cy, cx) when cutout is on."""

    indices: np.ndarray  # int64 (b,)
    shift: np.ndarray  # int64 (b, 2)
    flip: np.ndarray  # int64 (b,)
    cutout: np.ndarray | None = None  # int64 (b, 2), cy in [0, H), cx in [0, W); None: no cutout

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

    def augmentation(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shift (b, 2) with each axis uniform in [0, 2*PAD], flip (b,) in {0, 1}) per position."""
        h = self._position_hash(positions)
        shift = np.stack([h % np.uint64(NUM_SHIFTS), (h >> np.uint64(20)) % np.uint64(NUM_SHIFTS)], axis=1)
        flip = h >> np.uint64(63)
        return shift.astype(np.int64), flip.astype(np.int64)

    def cutout_centres(self, positions: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
        """Cutout centre (cy, cx) per position, (b, 2), uniform over an image of size ``image_hw``."""
        h = _mix(self._position_hash(positions) ^ _CUTOUT_SALT)
        height, width = (np.uint64(n) for n in image_hw)
        return np.stack([h % height, (h >> np.uint64(32)) % width], axis=1).astype(np.int64)

    def _position_hash(self, positions: np.ndarray) -> np.ndarray:
        return _mix(np.asarray(positions, dtype=np.uint64) * _GOLDEN ^ self.augment_key)


def plan_batch(seed: int, epoch: int, index: int, *, batch_size: int, num_samples: int,
               shuffle: bool, rank: int = 0, world_size: int = 1,
               cutout_hw: tuple[int, int] | None = None) -> BatchPlan:
    """The rows, crops, flips (and cutout centres within ``cutout_hw``, the image's (height,
    width), if given) that ``rank`` loads for global batch ``index`` of ``epoch``."""
    positions = shard_positions(index, batch_size, num_samples, rank, world_size)
    return _plan_positions(EpochKeys(seed, epoch), positions, num_samples, shuffle, cutout_hw)


def plan_epoch(seed: int, epoch: int, num_samples: int, shuffle: bool,
               cutout_hw: tuple[int, int] | None = None) -> BatchPlan:
    """The plan of every position of an epoch at once (the gpu loader keeps it on the device)."""
    positions = np.arange(num_samples, dtype=np.int64)
    return _plan_positions(EpochKeys(seed, epoch), positions, num_samples, shuffle, cutout_hw)


def _plan_positions(keys: EpochKeys, positions: np.ndarray, num_samples: int, shuffle: bool,
                    cutout_hw: tuple[int, int] | None) -> BatchPlan:
    shift, flip = keys.augmentation(positions)
    cutout = None if cutout_hw is None else keys.cutout_centres(positions, cutout_hw)
    return BatchPlan(keys.order(positions, num_samples, shuffle), shift, flip, cutout)


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
