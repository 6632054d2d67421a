"""The Triton kernels compiled ahead of time for sm_90 and sm_80 on a machine without a GPU.

`python3 bench/kernels_aot.py --check` runs in a subprocess, because this process runs Triton's
interpreter (tests/conftest.py) and the compiler needs TRITON_INTERPRET=0 from the start. It
records the variants the launchers produce, compiles them for both targets, and compares them
with the committed table bench/results/triton-kernels-sm90-sm80.md: same variants, no spills,
no min/max that drops NaN (registers too, when the table was made with this triton version).
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from triton.backends.compiler import GPUTarget

from ratio_fast.ops import native

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("kernels_aot", ROOT / "bench" / "kernels_aot.py")
aot = sys.modules["kernels_aot"] = importlib.util.module_from_spec(_spec)  # bench/ is no package
_spec.loader.exec_module(aot)

TABLE = aot.TABLE_PATH.read_text()
VARIANTS = [dict(zip(aot.VARIANT_HEADER, row)) for row in aot.parse_table(TABLE, aot.VARIANTS_TITLE)]


@pytest.mark.slow
def test_every_variant_compiles_for_sm90_and_sm80_without_spills_as_the_table_says(tmp_path):
    # A fresh Triton cache: every variant really goes through the compiler and ptxas.
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "kernels_aot.py"), "--check"], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-6000:]
    assert f"{len(VARIANTS)} variants, no spills" in done.stdout


def test_table_covers_every_norm_gradient_dtype_velocity_and_path():
    triton_names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    grads = {"all fp32" if triton_names[t] == "fp32" else f"grad {triton_names[t]}" for t in native.DTYPE_CODES}
    kernels = [f"pgd_step{norm}_{path}_tile" for norm in ("", "_linf") for path in ("single", "multi")]
    expected = {(kernel, grad, f"HAS_VELOCITY={v}") for kernel in kernels for grad in grads for v in (0, 1)}
    steps = {(row["kernel"], row["pointer dtypes"], row["constexprs"].split(" BLOCK")[0]) for row in VARIANTS
             if row["kernel"].startswith("pgd_step")}
    assert steps == expected
    starts = {row["constexprs"].split(" BLOCK")[0] for row in VARIANTS if row["kernel"] == "random_start"}
    assert starts == {"LINF=0", "LINF=1"}


def test_no_variant_starves_an_sm90():
    # At least a quarter of an SM's 64 warps resident: before tuning, the multi-tile path and the
    # largest single tile held one block of 8 warps (180-220 registers per thread).
    for row in VARIANTS:
        assert int(row["sm_90 blocks/SM"]) * int(row["warps"]) >= 16, row


def test_blocks_per_sm_follows_registers_warps_shared_memory_and_the_block_limit():
    hopper = aot.TARGETS["sm_90"]
    assert aot.blocks_per_sm(hopper, registers=180, threads=256, shared=0) == 1  # 46080 of 65536 registers
    assert aot.blocks_per_sm(hopper, registers=58, threads=512, shared=0) == 2  # 64 per thread after rounding
    assert aot.blocks_per_sm(hopper, registers=32, threads=512, shared=0) == 4  # 64 warps: the warp limit
    assert aot.blocks_per_sm(hopper, registers=16, threads=32, shared=0) == 32  # the block limit
    assert aot.blocks_per_sm(hopper, registers=32, threads=128, shared=100 * 1024) == 2  # shared memory
    assert aot.blocks_per_sm(aot.TARGETS["sm_80"], registers=32, threads=128, shared=100 * 1024) == 1


def test_recording_refuses_the_interpreter():
    assert os.environ["TRITON_INTERPRET"] == "1"  # tests/conftest.py
    with pytest.raises(SystemExit, match="TRITON_INTERPRET=0"):
        aot.launch_requests(GPUTarget("cuda", 90, 32))


def test_check_reports_a_stale_table_spills_and_nan_dropping_min_max():
    fresh = aot.parse_table(TABLE, aot.VARIANTS_TITLE)
    assert aot.check(TABLE, fresh) == []
    assert "variants differ" in aot.check(TABLE, fresh[1:])[0]
    spilling = [row[:6] + ["8"] + row[7:] for row in fresh]
    assert sum(problem.startswith("spills") for problem in aot.check(TABLE, spilling)) == len(fresh)
    nan_dropping = [row[:-1] + ["2"] for row in fresh]
    assert any("drop NaN" in problem for problem in aot.check(TABLE, nan_dropping))
