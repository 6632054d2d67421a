"""The Triton kernels compiled ahead of time for Hopper (sm_90) and Ampere (sm_80), without a GPU.

The variants are the launches the ops make, not a list kept here: `launch_requests` runs the
public ops on CPU tensors in every norm (`ratio_fast.ops.NORMS`), for every gradient dtype the kernels
take (`native.DTYPE_CODES`), with and without a velocity buffer, on the SAMPLE_SIZES below. A stand-in driver names the target and
Triton's JIT cache hook records each compile request (argument types and their specialization,
constexprs, options such as num_warps) and skips the launch, so each request is what the JIT
would compile on that GPU. `compile_request` compiles it with `triton.compile` and Triton's
bundled ptxas, whose report gives the registers and spill bytes; `blocks_per_sm` is the
occupancy they allow. The PTX is also searched for float min/max instructions that drop NaN,
which the NaN rule of `pgd_step` forbids and the interpreter cannot show.

    python3 bench/kernels_aot.py            # print the table
    python3 bench/kernels_aot.py --write    # regenerate TABLE_PATH (variants and the tuning sweep)
    python3 bench/kernels_aot.py --check    # compare a fresh compile with it (tests/test_kernels_aot.py)

Triton must compile, not interpret: run with TRITON_INTERPRET unset or 0.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import io
import json
import math
import re
import sys
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

from ratio_fast.ops import native
from ratio_fast.ops import NORMS
from ratio_fast.ops.pgd_step import _pgd_step_multi_tile_kernel, _pgd_step_single_tile_kernel, pgd_step
from ratio_fast.ops.random_start import random_start
from ratio_fast.ops.tiles import MAX_SINGLE_TILE

TABLE_PATH = Path(__file__).resolve().parent / "results" / "triton-kernels-sm90-sm80.md"

# Elements per sample the launchers are driven with: CIFAR's 3x32x32 (the project's images), the
# largest sample kept in one tile (most elements per thread on the single-tile path), and
# ImageNet's 3x224x224 on the multi-tile path. Samples in between compile smaller tiles with at
# most as many elements per thread. All are multiples of 16, as the project's images are; other
# sizes compile a further variant of each without that alignment specialization.
SAMPLE_SIZES = (3 * 32 * 32, MAX_SINGLE_TILE, 3 * 224 * 224)


@dataclasses.dataclass(frozen=True)
class Sm:
    """What limits resident blocks on one streaming multiprocessor."""

    capability: int
    shared_bytes: int
    registers: int = 65536
    register_unit: int = 256  # registers are allocated per warp in units of this many
    warps: int = 64
    blocks: int = 32
    shared_reserved_per_block: int = 1024  # by the CUDA runtime, on sm_80 and newer


TARGETS = {
    "sm_90": Sm(90, shared_bytes=228 * 1024),
    "sm_80": Sm(80, shared_bytes=164 * 1024),
}

# The tuning sweep: (BLOCK, num_warps) candidates for the multi-tile path and the largest single
# tile, and what the launcher picked for each before the occupancy tuning (the "before" mark).
SWEEPS = {
    "multi-tile": [(block, warps) for block in (1024, 2048, 4096, 8192) for warps in (4, 8, 16)],
    "single-tile": [(MAX_SINGLE_TILE, warps) for warps in (8, 16, 32)],
}
BEFORE_TUNING = {"multi-tile": (MAX_SINGLE_TILE, 8), "single-tile": (MAX_SINGLE_TILE, 8)}


@dataclasses.dataclass
class Request:
    """One compile request of the JIT, as its cache hook sees it."""

    fn: JITFunction
    signature: dict
    constants: dict
    attrs: dict
    options: dict
    sample_sizes: list[int]  # the SAMPLE_SIZES that make this request

    def constexprs(self) -> dict:
        return {self.fn.arg_names[key[0]]: getattr(value, "value", value) for key, value in self.constants.items()}

    def row_key(self) -> tuple[str, str, str, int]:
        """(kernel, constexprs, non-fp32 pointer types, num_warps): what the table shows of a variant."""
        kernel = self.fn.__name__.strip("_").removesuffix("_kernel")
        constexprs = " ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in self.constexprs().items())
        types = ", ".join(f"{name.removesuffix('_ptr')} {t[1:]}" for name, t in self.signature.items()
                          if t.startswith("*") and t != "*fp32") or "all fp32"
        return kernel, constexprs, types, self.options["num_warps"]

    def with_tile(self, block: int, num_warps: int) -> Request:
        constants = {k: (block if self.fn.arg_names[k[0]] == "BLOCK" else v) for k, v in self.constants.items()}
        return dataclasses.replace(self, constants=constants, options={**self.options, "num_warps": num_warps})


# PTX float min/max without .NaN: they return the other operand for a NaN one.
NAN_DROPPING_MIN_MAX = re.compile(r"\b(?:min|max)(?:\.ftz)?\.(?:f16|bf16|f32|f64)(?:x2)?\b")


@dataclasses.dataclass
class Compiled:
    registers: int
    spill_stores: int
    spill_loads: int
    shared: int
    threads: int
    nan_dropping_min_max: int


class _TargetOnlyDriver:
    """Stands in for the CUDA driver: names the target, owns no device; nothing is launched."""

    def __init__(self, target: GPUTarget):
        self.target = target

    def get_current_device(self):
        return self.target.arch  # one JIT binder cache per target

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


@contextlib.contextmanager
def _recording(target: GPUTarget):
    """Launches inside record their compile request for `target` and run nothing."""
    if not isinstance(_pgd_step_single_tile_kernel, JITFunction):
        raise SystemExit("Triton is interpreting (TRITON_INTERPRET=1): run this with TRITON_INTERPRET=0")
    requests = []

    def hook(*, fn, compile, **_):
        requests.append((fn.jit_function, compile))
        return True  # skip compiling and launching

    # Put back as found: reset_active() would look for a real driver, which a CPU machine lacks.
    previous_driver, previous_hook = getattr(driver, "_active", None), triton.knobs.runtime.jit_cache_hook
    driver.set_active(_TargetOnlyDriver(target))
    triton.knobs.runtime.jit_cache_hook = hook
    try:
        yield requests
    finally:
        triton.knobs.runtime.jit_cache_hook = previous_hook
        driver.set_active(previous_driver)


def _tuples(value):
    """JSON lists back to the tuples Triton's options hold."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def launch_requests(target: GPUTarget) -> list[Request]:
    """Every compile request the ops make for `target` on SAMPLE_SIZES, one per distinct variant.

    A variant is told apart by its row_key; two requests with one row_key but different argument
    types or specialization would need another column, and raise.
    """
    found: dict[tuple, Request] = {}
    with _recording(target) as raw:
        for size in SAMPLE_SIZES:
            x = torch.rand(2, size)
            for norm in NORMS:
                for grad_dtype in native.DTYPE_CODES:
                    grad = torch.randn(2, size).to(grad_dtype)
                    for velocity in (None, torch.zeros(2, size)):
                        momentum = 0.9 if velocity is not None else 0.0
                        pgd_step(x, x, grad, 0.5, 0.1, velocity, momentum, backend="triton", norm=norm)
                random_start(x, torch.randn(2, size), 1.0, 0.5, backend="triton", norm=norm)
            for fn, request in raw:
                options = {k: _tuples(v) for k, v in json.loads(request["specialization_data"])["options"].items()}
                new = Request(fn, request["signature"], request["constants"], request["configs"][0], options, [size])
                same = found.setdefault(new.row_key(), new)
                if (same.signature, same.attrs) != (new.signature, new.attrs):
                    raise RuntimeError(f"two variants show as {new.row_key()}: {same.signature, same.attrs} "
                                       f"and {new.signature, new.attrs}")
                if same is not new and size not in same.sample_sizes:
                    same.sample_sizes.append(size)
            raw.clear()
    return list(found.values())


def compile_request(request: Request, target: GPUTarget) -> Compiled:
    """Compile for `target` (never from Triton's cache, so ptxas runs and reports)."""
    knobs = triton.knobs
    log = io.StringIO()
    with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True  # ptxas -v, printed
        knobs.compilation.always_compile = True
        kernel = triton.compile(ASTSource(request.fn, request.signature, request.constants, request.attrs),
                                target=target, options=request.options)
    report = log.getvalue()
    registers = re.search(r"Used (\d+) registers", report)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    if registers is None or spills is None:
        raise RuntimeError(f"no ptxas report for {request.row_key()}:\n{report}")
    return Compiled(int(registers[1]), int(spills[1]), int(spills[2]), kernel.metadata.shared,
                    32 * kernel.metadata.num_warps, len(NAN_DROPPING_MIN_MAX.findall(kernel.asm["ptx"])))


def blocks_per_sm(sm: Sm, registers: int, threads: int, shared: int) -> int:
    """Resident blocks per SM: the least of what registers, warps, shared memory and blocks allow."""
    warps = math.ceil(threads / 32)
    registers_per_warp = math.ceil(registers * 32 / sm.register_unit) * sm.register_unit
    by_registers = (sm.registers // registers_per_warp) // warps
    by_shared = sm.shared_bytes // (shared + sm.shared_reserved_per_block)
    return min(by_registers, sm.warps // warps, by_shared, sm.blocks)


def variant_rows() -> list[list[str]]:
    """The table's rows: one per variant, with registers, spill bytes and blocks/SM per target,
    and the NaN-dropping min/max instructions of all targets."""
    rows: dict[tuple, list[str]] = {}
    nan_dropping: dict[tuple, int] = {}
    for name, sm in TARGETS.items():
        target = GPUTarget("cuda", sm.capability, 32)
        for request in launch_requests(target):
            compiled = compile_request(request, target)
            key = request.row_key()
            row = rows.setdefault(key, [*map(str, key), ", ".join(map(str, request.sample_sizes))])
            row += [str(compiled.registers), str(compiled.spill_stores + compiled.spill_loads),
                    str(blocks_per_sm(sm, compiled.registers, compiled.threads, compiled.shared))]
            nan_dropping[key] = nan_dropping.get(key, 0) + compiled.nan_dropping_min_max
    return sorted(row + [str(nan_dropping[key])] for key, row in rows.items())


def tuning_rows() -> list[list[str]]:
    """Each SWEEPS candidate on sm_90, for the L2 step's fp32-gradient, with-velocity variant of its
    path (the largest tile on the single-tile path): registers, spills and the occupancy they allow."""
    sm = TARGETS["sm_90"]
    target = GPUTarget("cuda", sm.capability, 32)
    requests = [r for r in launch_requests(target) if r.constexprs().get("HAS_VELOCITY")
                and r.signature.get("grad_ptr") == "*fp32"]
    rows = []
    for path, candidates in SWEEPS.items():
        single = path == "single-tile"
        kernel = _pgd_step_single_tile_kernel if single else _pgd_step_multi_tile_kernel
        base = [r for r in requests if r.fn is kernel and (not single or r.constexprs()["BLOCK"] == MAX_SINGLE_TILE)]
        assert len(base) == 1, f"expected one {path} request, got {len(base)}"
        now = (base[0].constexprs()["BLOCK"], base[0].options["num_warps"])
        for block, warps in candidates:
            compiled = compile_request(base[0].with_tile(block, warps), target)
            blocks = blocks_per_sm(sm, compiled.registers, compiled.threads, compiled.shared)
            marks = [m for m, tile in (("before", BEFORE_TUNING[path]), ("now", now)) if tile == (block, warps)]
            rows.append([path, str(block), str(warps), str(block // compiled.threads), str(compiled.registers),
                         str(compiled.spill_stores + compiled.spill_loads),
                         f"{compiled.registers} x {compiled.threads} = {compiled.registers * compiled.threads}",
                         str(blocks), str(blocks * warps), ", ".join(marks)])
    return rows


VARIANT_HEADER = ["kernel", "constexprs", "pointer dtypes", "warps", "elements per sample",
                  "sm_90 regs", "sm_90 spill B", "sm_90 blocks/SM", "sm_80 regs", "sm_80 spill B", "sm_80 blocks/SM",
                  "NaN-dropping min/max"]
TUNING_HEADER = ["path", "BLOCK", "warps", "elements/thread/tile", "regs", "spill B", "regs x threads",
                 "blocks/SM", "warps/SM", "tile"]
VARIANTS_TITLE = "## Variants"
TUNING_TITLE = "## Tuning: tile and warps of the largest samples (sm_90)"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def render(variants: list[list[str]], tuning: list[list[str]]) -> str:
    return f"""# Triton kernels compiled for sm_90 and sm_80

Every variant the launchers of `ratio_fast/ops` produce, compiled ahead of time without a GPU by
`python3 bench/kernels_aot.py --write` (triton {triton.__version__} and its bundled ptxas; register
counts can change with the triton version). tests/test_kernels_aot.py checks that the variants
are current, that none spills and that none has a float min/max that drops NaN (PTX `min`/`max`
without `.NaN`, on either target). Blocks/SM: resident blocks per SM that the registers (65536
per SM, allocated per warp in units of 256), warps (64), shared memory and the block limit (32)
allow. Each program handles one sample.

{VARIANTS_TITLE}

{markdown_table(VARIANT_HEADER, variants)}

{TUNING_TITLE}

The fp32-gradient, with-velocity L2 step for each candidate tile (the L-infinity step takes the
same tiles, and its variants above fit as many blocks per SM or more): on the multi-tile path (samples
over {MAX_SINGLE_TILE} elements, e.g. 3x224x224) and on the single-tile path at its largest tile
(samples of 4097 to {MAX_SINGLE_TILE} elements, e.g. 3x48x48). "before": what the launcher picked
before tuning; "now": what it picks. One program per sample, so when a batch has fewer samples
than there are SMs (132 on an H200), warps per block is all a sample gets; with more, blocks/SM
is how many share an SM. Occupancy from registers only: not measured on a GPU here.

{markdown_table(TUNING_HEADER, tuning)}
"""


def parse_table(text: str, title: str) -> list[list[str]]:
    section = text.split(title, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def check(committed: str, fresh: list[list[str]]) -> list[str]:
    """What is wrong with the committed table against a fresh compile (empty: it is current)."""
    problems = [f"spills: {row}" for row in fresh if row[6] != "0" or row[9] != "0"]
    problems += [f"min/max that drop NaN (the NaN rule of pgd_step): {row}" for row in fresh if row[11] != "0"]
    version = re.search(r"triton (\S+) and its bundled ptxas", committed)
    same_triton = version is not None and version[1] == triton.__version__
    width = len(fresh[0]) if same_triton else 5  # registers only count with the same ptxas
    old = [" | ".join(row[:width]) for row in parse_table(committed, VARIANTS_TITLE)]
    new = [" | ".join(row[:width]) for row in fresh]
    if old != new:
        problems.append("variants differ from the committed table (regenerate it with "
                        "`python3 bench/kernels_aot.py --write`):\n" + "\n".join(difflib.unified_diff(old, new, lineterm="")))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 bench/kernels_aot.py", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"regenerate {TABLE_PATH.name}")
    mode.add_argument("--check", action="store_true", help=f"compare a fresh compile with {TABLE_PATH.name}")
    args = parser.parse_args(argv)
    variants = variant_rows()
    if args.check:
        problems = check(TABLE_PATH.read_text(), variants)
        print("\n".join(problems) or f"{TABLE_PATH.name} is current: {len(variants)} variants, no spills")
        return 1 if problems else 0
    text = render(variants, tuning_rows())
    if args.write:
        TABLE_PATH.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
