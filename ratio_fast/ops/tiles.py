"""How the Triton kernels of the fused ops are tiled: elements per tile and warps per program.

One program handles one sample. Registers, spills and blocks per SM of every variant these
choices produce, and the sweep behind the PGD step's multi-tile choice, are in
bench/results/triton-kernels-sm90-sm80.md (`python3 bench/kernels_aot.py --write`).
"""
from __future__ import annotations

THREADS_PER_WARP = 32

# At most this many elements per thread in one tile: 32 took up to 220 registers (one block per SM).
MAX_ELEMENTS_PER_THREAD = 16
# Warps of a single tile: Triton's default of 4 for small samples, at most 16 (the tuning table
# compares 8, 16 and 32 for the largest tile); a forced bigger tile gets more elements per thread.
MIN_WARPS, MAX_WARPS = 4, 16
# Largest sample (C*H*W) the PGD step keeps in registers in one tile, 8192 (3x48x48 included):
# what MAX_WARPS warps hold at MAX_ELEMENTS_PER_THREAD each. Bigger samples loop over tiles.
MAX_SINGLE_TILE = MAX_WARPS * THREADS_PER_WARP * MAX_ELEMENTS_PER_THREAD

# The tile of a kernel that loops over a sample: the PGD step's multi-tile path, and the random
# start beyond this size. On the step, 4096 elements in 16 warps (8 per thread) take about 60
# registers, so two blocks of 512 threads fit an SM; the single-tile maximum in 8 warps, used
# before, took up to 219 registers: one block of 256 threads per SM.
LOOP_TILE = 4096
PGD_LOOP_WARPS = 16
# The random start runs once per attack, not per iteration, so it keeps Triton's default warps.
RANDOM_START_WARPS = 4


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): tile sizes are powers of two in Triton."""
    return 1 << max(n - 1, 0).bit_length()


def pgd_step_tile(d_elems: int, block: int = 0) -> tuple[int, int]:
    """(BLOCK, num_warps) of the PGD step (either norm) for samples of d_elems elements: one tile if
    the sample fits (BLOCK >= d_elems), else the multi-tile path's. block > 0 forces BLOCK (tests)."""
    if block <= 0 and d_elems > MAX_SINGLE_TILE:
        return LOOP_TILE, PGD_LOOP_WARPS
    if block <= 0:
        block = next_power_of_2(d_elems)
    return block, min(max(block // (THREADS_PER_WARP * MAX_ELEMENTS_PER_THREAD), MIN_WARPS), MAX_WARPS)


def random_start_tile(d_elems: int, block: int = 0) -> tuple[int, int]:
    """(BLOCK, num_warps) of the random start: the whole sample up to LOOP_TILE, then loops.
    block > 0 forces BLOCK (tests)."""
    if block <= 0:
        block = min(next_power_of_2(d_elems), LOOP_TILE)
    return block, RANDOM_START_WARPS
