"""What each training type buys: every --mode trained on the synthetic set with one budget, then
evaluated by `ratio-fast eval`, as one table.

    python3 bench/training_types_table.py      # -> bench/results/<date>-training-types.jsonl, a markdown table

Every row of ratio_fast.choices.MODES is trained and evaluated through the command line users
run (`python3 -m ratio_fast.cli train` / `eval`, from this checkout), so the numbers are the
product's. The budget (Budget below, the flags of this script) is the same for every type: the
training flags differ in --mode alone, the evaluation flags not at all. The evaluation is
`ratio-fast eval`'s: clean accuracy on the whole synthetic test split, robust accuracy after
APGD-CE + APGD-T (L2 0.5, 100 steps, 9 targets) on the first --robust-samples test images with
its 95 % Wilson interval, and OOD detection by max confidence on the built-in sets (uniform
noise, smooth noise, permuted pixels), clean and worst case (100-step APGD in an L2 ball of 1.0
maximizing the confidence). The table gives the AUROC averaged over those sets (each set's is in
the JSON line). The OOD sets are given explicitly: eval's default leaves out the training
out-distribution, which only the types with an out-distribution term have, so the defaults
would differ between rows; the synthetic out-distribution is left out of every row.

Each type's run lies in <work>/<training key>/<mode>, its evaluation in eval-<eval key> inside it
(digests of the budget's training and evaluation settings, so another evaluation budget reuses
the trained runs): a type whose evaluation holds an eval.json is not run again, and a killed run
continues (train --resume, eval resumes on its own). One JSON line per type goes to the results file as soon as it is done.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout whose ratio_fast is measured
sys.path.insert(0, str(ROOT))  # this checkout's ratio_fast here too, as in the commands it runs (cwd=ROOT)

from gpu_check import append_rows, machine  # noqa: E402  (bench/ is on sys.path: the script's folder)
from ratio_fast.choices import MODES  # noqa: E402
from ratio_fast.config import TrainConfig  # noqa: E402
from ratio_fast.evaluation.evaluate import wilson_interval  # noqa: E402
from ratio_fast.evaluation.ood_sets import BUILT_IN  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
WORK = ROOT / "runs" / "training-types"
EVAL_RESULTS, CHECKPOINT = "eval.json", "checkpoint.pt"
LOG_TAIL = 3000  # characters of a failed command's log shown


@dataclasses.dataclass(frozen=True)
class Budget:
    """What every type gets, training and evaluation alike. On the 2-core development machine a type
    took well under 2 minutes with the CPUs to itself and up to 20 when other jobs shared them (the
    README gives the whole measured run)."""

    arch: str = "tiny"
    epochs: int = 1
    batch_size: int = 128  # in-distribution; the out-distribution batch is as large
    seed: int = 0  # training: data order, augmentation, initialization, attack starts; eval: attack starts
    synthetic_size: int = 10240  # training images: 80 steps per epoch at batch 128
    robust_samples: int = 100  # first test images under APGD-CE + APGD-T (each: 100 + 9 x 100 steps)
    ood_samples: int = 100  # images per OOD set, clean and worst case (100 steps)
    ood: tuple[str, ...] = BUILT_IN  # the same sets for every type (see the module's docstring)
    device: str = "auto"

    def training_key(self) -> str:
        """A short digest of what the training runs depend on: it names their directory."""
        return _digest({name: getattr(self, name) for name in TRAINING_FIELDS})

    def eval_key(self) -> str:
        """A short digest of what the evaluation depends on: it names its directory in each run."""
        return _digest({name: getattr(self, name) for name in EVAL_FIELDS})

    def describe(self) -> str:
        d = TrainConfig
        return (f"--arch {self.arch}, {self.epochs} epoch(s) of {self.synthetic_size} synthetic images at batch "
                f"{self.batch_size} + {self.batch_size} ({self.synthetic_size // self.batch_size} steps per epoch), "
                f"seed {self.seed}, every other training setting at its default (attacks: {d.steps_in} steps at L2 "
                f"{d.eps_in} in, {d.steps_out} at {d.eps_out} out); eval: robust accuracy on the first "
                f"{self.robust_samples} test images, OOD sets {', '.join(self.ood)} with {self.ood_samples} images each")


TRAINING_FIELDS = ("arch", "epochs", "batch_size", "seed", "synthetic_size", "device")
EVAL_FIELDS = ("robust_samples", "ood_samples", "ood", "seed", "device")


def _digest(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]


def eval_dir(budget: Budget, run_dir: Path) -> Path:
    return run_dir / f"eval-{budget.eval_key()}"


def training_types() -> list[str]:
    """Every training type, in the table's order: the rows of choices.MODES."""
    return list(MODES)


def train_args(mode: str, budget: Budget, run_dir: Path) -> list[str]:
    """`ratio-fast train`'s arguments for one type: the budget's flags, the same for every type, and --mode."""
    return ["train", "--dataset", "synthetic", "--arch", budget.arch, "--mode", mode, "--epochs", str(budget.epochs),
            "--batch-size", str(budget.batch_size), "--seed", str(budget.seed), "--synthetic-size",
            str(budget.synthetic_size), "--device", budget.device, "--out", str(run_dir)]


def eval_args(budget: Budget, run_dir: Path) -> list[str]:
    """`ratio-fast eval`'s arguments for one type's run: the same flags for every type."""
    return ["eval", str(run_dir), "--robust-samples", str(budget.robust_samples), "--ood", ",".join(budget.ood),
            "--ood-samples", str(budget.ood_samples), "--seed", str(budget.seed), "--device", budget.device,
            "--out", str(eval_dir(budget, run_dir))]


def summary(results: dict) -> dict:
    """The table's numbers from one eval.json: clean accuracy, robust accuracy after every attack with its
    95 % Wilson interval, and the OOD AUROC, clean and worst case, averaged over the sets (and per set)."""
    robust = results["robust"]
    n = robust["samples"]
    low, high = wilson_interval(round(robust["all"] * n), n)
    ood = results["ood"]
    per_set = {name: {"auroc": m["auroc"], "worst_case_auroc": m["worst_case_auroc"]} for name, m in ood.items()}
    return {
        "clean_accuracy": results["clean_accuracy"], "test_images": results["samples"],
        "robust_accuracy": robust["all"], "robust_interval_95": [low, high], "robust_samples": n,
        "robust_attacks": robust["attacks"], "robust_eps": robust["eps"], "robust_steps": robust["steps"],
        "auroc": _mean(m["auroc"] for m in per_set.values()),
        "worst_case_auroc": _mean(m["worst_case_auroc"] for m in per_set.values()),
        "ood": per_set,
    }


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


TABLE_HEADER = ("| type | clean acc | robust acc (95 % interval) | AUROC clean | AUROC worst case |\n"
                "|---|---|---|---|---|")


def table_line(mode: str, s: dict) -> str:
    """One markdown row of the table from summary()'s numbers."""
    low, high = s["robust_interval_95"]
    return (f"| `{mode}` | {_percent(s['clean_accuracy'])} | {_percent(s['robust_accuracy'])} "
            f"[{100 * low:.1f}, {100 * high:.1f}] | {_percent(s['auroc'])} | {_percent(s['worst_case_auroc'])} |")


def _percent(value: float) -> str:
    return f"{100 * value:.1f} %"


def run_logged(args: list[str], log: Path) -> float:
    """Runs `python3 -m ratio_fast.cli ARGS` from the checkout, its output appended to `log`; its seconds.
    A failure stops the script with the log's tail."""
    began = time.perf_counter()
    with open(log, "a") as out:
        done = subprocess.run([sys.executable, "-m", "ratio_fast.cli", *args], cwd=ROOT, stdout=out,
                              stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text()[-LOG_TAIL:]
        raise SystemExit(f"ratio-fast {args[0]} exited with {done.returncode}; {log} ends:\n{tail}")
    return time.perf_counter() - began


def measure(mode: str, budget: Budget, run_dir: Path) -> tuple[dict, dict]:
    """(eval.json, what was run) of one type: trained and evaluated, or continued, or read as it is."""
    results_path = eval_dir(budget, run_dir) / EVAL_RESULTS
    train, evaluate = train_args(mode, budget, run_dir), eval_args(budget, run_dir)
    ran = {"train_command": "ratio-fast " + shlex.join(train), "eval_command": "ratio-fast " + shlex.join(evaluate),
           "run_dir": str(run_dir), "reused": results_path.is_file()}
    if not ran["reused"]:
        run_dir.mkdir(parents=True, exist_ok=True)
        resume = ["--resume"] if (run_dir / CHECKPOINT).is_file() else []  # a killed run continues
        ran["train_s"] = round(run_logged(train + resume, run_dir / "train.log"), 1)
        results_path.parent.mkdir(exist_ok=True)
        ran["eval_s"] = round(run_logged(evaluate, results_path.parent / "eval.log"), 1)  # resumes from its eval_state.pt
    return json.loads(results_path.read_text()), ran


def main(argv=None) -> int:
    d = Budget()
    p = argparse.ArgumentParser(
        description="Trains every training type (--mode, the rows of ratio_fast.choices.MODES) on the synthetic "
                    "set with one budget and evaluates each with `ratio-fast eval`; prints a markdown table and "
                    "writes one JSON line per type. Default budget: " + d.describe() + ".",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", default=d.arch)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--synthetic-size", type=int, default=d.synthetic_size, help="training images")
    p.add_argument("--robust-samples", type=int, default=d.robust_samples)
    p.add_argument("--ood-samples", type=int, default=d.ood_samples)
    p.add_argument("--device", default=d.device)
    p.add_argument("--work", default=str(WORK), help="runs go to WORK/<training key>/<mode>")
    p.add_argument("--out", default=str(RESULTS), help="folder for <date>-training-types.jsonl")
    p.add_argument("--commit", default=None, help="commit of the code measured (default: git HEAD)")
    args = p.parse_args(argv)
    budget = Budget(arch=args.arch, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                    synthetic_size=args.synthetic_size, robust_samples=args.robust_samples,
                    ood_samples=args.ood_samples, device=args.device)

    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                           cwd=ROOT).stdout.strip() or "unknown"
    date = datetime.datetime.now(datetime.timezone.utc).isoformat()
    common = {**machine(), "cpus": os.cpu_count(), "commit": commit, "date": date,
              "command": shlex.join(["python3", "bench/training_types_table.py", *sys.argv[1:]]),
              "budget": dataclasses.asdict(budget)}
    path = Path(args.out) / f"{date[:10]}-training-types.jsonl"
    path.unlink(missing_ok=True)  # this invocation's rows only (a type done before is read back, not rerun)
    work = Path(args.work) / budget.training_key()
    types = training_types()
    print(f"budget: {budget.describe()}; runs in {work}", flush=True)
    lines = []
    for k, mode in enumerate(types, 1):
        print(f"[{k}/{len(types)}] {mode}: training and evaluating", flush=True)
        results, ran = measure(mode, budget, work / mode)
        s = summary(results)
        row = {"case": f"training_types::{mode}", "mode": mode, **common, **s, **ran,
               "load_average_5min": round(os.getloadavg()[1], 1)}
        append_rows(path, [row])
        took = "eval.json found, not rerun" if ran["reused"] else f"train {ran['train_s']} s, eval {ran['eval_s']} s"
        print(f"[{k}/{len(types)}] {mode}: done ({took}): {table_line(mode, s)}", flush=True)
        lines.append(table_line(mode, s))
    print(f"\n{budget.describe()}; {common['gpu']}, torch {common['torch']}, commit {commit}\n")
    print("\n".join([TABLE_HEADER, *lines]))
    print(f"\nrows: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
