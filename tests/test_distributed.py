"""torch.distributed on CPU with gloo and 2 real processes launched by torchrun."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ratio_fast.cli.main import EXIT_PREEMPTED, main
from ratio_fast.training.distributed import context_from_env
from ratio_fast.errors import UserError
from ratio_fast.cli.torchrun import exit_code

WORKER = Path(__file__).with_name("dist_worker.py")
REPO = Path(__file__).resolve().parents[1]


def torchrun(args, nproc=2, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_context_from_torchrun_variables():
    assert context_from_env({}).world_size == 1
    ctx = context_from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main, ctx.is_distributed) == (1, 4, 1, False, True)
    with pytest.raises(UserError, match="WORLD_SIZE"):
        context_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(UserError, match="RANK"):
        context_from_env({"RANK": "one"})


@pytest.mark.slow
def test_all_reduce_batchnorm_matches_batchnorm_on_the_whole_batch(tmp_path):
    torchrun([str(WORKER), "sync_batchnorm", str(tmp_path)])
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    torch.manual_seed(0)
    full = (torch.randn(8, 3, 5, 5) * 3 + 1).requires_grad_(True)
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, -1.0, 0.3]))
    y = bn(full)
    (y * torch.cat([torch.arange(y.numel() // 2).float().sin()] * 2).view_as(y)).sum().backward()

    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]), full.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ranks[0]["param_grads"], torch.stack([bn.weight.grad, bn.bias.grad]), atol=1e-4, rtol=1e-5)
    for r in ranks:
        torch.testing.assert_close(r["running_mean"], bn.running_mean)
        torch.testing.assert_close(r["running_var"], bn.running_var)


@pytest.mark.slow
def test_a_signal_on_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    torchrun([str(WORKER), "stop_agreement", str(tmp_path)])
    stopped = [torch.load(tmp_path / f"rank{r}.pt")["stopped_after"] for r in range(2)]
    assert stopped[0] == stopped[1] and stopped[0] in (3, 4)  # the agreement costs at most one step


# Global batch 32 (16 per rank under torchrun), 8 steps of the tiny model with short attacks.
RUN = ["train", "--dataset", "synthetic", "--arch", "tiny", "--device", "cpu", "--synthetic-size", "256",
       "--batch-size", "32", "--steps-in", "2", "--steps-out", "2", "--eval-samples", "32", "--epochs", "1",
       "--sync-bn"]


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    torchrun(["-m", "ratio_fast.cli", *RUN, "--out", str(tmp_path / "two")])
    threads = torch.get_num_threads()
    # One thread, as each torchrun rank runs (OMP_NUM_THREADS=1): CPU kernels split their sums by
    # thread count, and 8 steps grow that last-bit difference past the tolerance on some data.
    torch.set_num_threads(1)
    try:
        assert main(RUN + ["--out", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)

    one, two = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=True) for run in ("one", "two"))
    assert one["trainer"]["steps_done"] == two["trainer"]["steps_done"] == 8
    assert two["world_size"] == 2 and len(two["rng"]) == 2
    for key, value in one["trainer"]["model"].items():
        torch.testing.assert_close(two["trainer"]["model"][key], value, atol=2e-4, rtol=1e-3, msg=key)
    # rank 0 alone writes the logs: one metrics line per epoch, with the same numbers as one process
    (m_one,), (m_two,) = ([json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
                          for run in ("one", "two"))
    assert m_two["loss"] == pytest.approx(m_one["loss"], rel=1e-3)
    assert m_two["test_clean_acc"] == pytest.approx(m_one["test_clean_acc"], abs=0.02)


def train_one_process(args):
    """`ratio-fast train ARGS` in this process on one thread, as each torchrun rank runs
    (OMP_NUM_THREADS=1): CPU kernels split their sums by thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_bn_groups_on_one_process_train_like_processes_without_sync_bn(tmp_path):
    """--bn-groups 2 on one process is the authors' nn.DataParallel on 2 GPUs, and so is a 2-process
    run without --sync-bn: each rank normalizes its slice, DDP keeps rank 0's running statistics.
    One step: after it, DDP's other ranks attack with their own running statistics until the next
    train forward hands them rank 0's (DataParallel's replicas always get the first device's)."""
    run = [a for a in RUN if a != "--sync-bn"] + ["--max-steps", "1"]
    torchrun(["-m", "ratio_fast.cli", *run, "--out", str(tmp_path / "two")])
    train_one_process(run + ["--bn-groups", "2", "--out", str(tmp_path / "grouped")])
    train_one_process(run + ["--out", str(tmp_path / "whole")])

    two, grouped, whole = (torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["trainer"]
                           for name in ("two", "grouped", "whole"))
    assert two["steps_done"] == grouped["steps_done"] == 1
    for key, value in grouped["model"].items():  # weights and the running statistics of rank 0's slice
        torch.testing.assert_close(two["model"][key], value, atol=1e-6, rtol=1e-5, msg=key)
    # after one step SGD's momentum buffer is the gradient plus weight decay
    for (index, state), other in zip(grouped["optimizer"]["state"].items(), two["optimizer"]["state"].values()):
        torch.testing.assert_close(other["momentum_buffer"], state["momentum_buffer"], atol=1e-6, rtol=1e-5,
                                   msg=f"gradient of parameter {index}")
    loss = {name: json.loads((tmp_path / name / "metrics.jsonl").read_text())["loss"] for name in ("two", "grouped")}
    assert loss["two"] == pytest.approx(loss["grouped"], rel=1e-5)
    # the comparison can fail: normalizing over the whole batch trains other weights
    differs = [key for key, value in whole["model"].items() if value.is_floating_point()
               and not torch.allclose(value, grouped["model"][key], atol=1e-4, rtol=1e-3)]
    assert any(key.endswith("running_mean") for key in differs) and any(key.endswith("weight") for key in differs)


# --- exit codes under torchrun ------------------------------------------------------------------

def test_the_launcher_exits_with_the_code_the_workers_chose():
    assert exit_code({1: 75, 0: -signal.SIGTERM}) == 75  # rank 0 stopped by the agent after rank 1 exited
    assert exit_code({0: 75, 1: 75}) == 75
    assert exit_code({0: 2, 1: -signal.SIGTERM}) == 2
    assert exit_code({0: 75, 1: 2}) == 1  # ranks that disagree: cannot usefully continue
    assert exit_code({0: -signal.SIGKILL}) == 128 + signal.SIGKILL


def worker_of_rank(launcher: subprocess.Popen, rank: int) -> int:
    """The PID of the torchrun worker of `rank` under `launcher` (Linux: /proc)."""
    children, environ = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
                environ[int(entry.name)] = (entry / "environ").read_bytes().split(b"\0")
            except OSError:  # gone meanwhile
                continue
    todo, mine = [launcher.pid], []
    while todo:  # every descendant of the launcher
        below = children.get(todo.pop(), [])
        mine += below
        todo += below
    for pid in mine:
        if f"RANK={rank}".encode() in environ.get(pid, []):
            return pid
    raise AssertionError(f"no worker of rank {rank} under {launcher.pid}")


def launch_and_preempt(tmp_path, whom) -> tuple[subprocess.Popen, str, str]:
    """A 2-process run of 320 steps under ratio_fast.torchrun; once both ranks train (rank 0's
    first epoch line), SIGTERM goes to the process whom(launcher) names.

    It waits for that line however slow the machine is: a signal sent before the ranks have
    installed their handlers would test nothing (a loaded CI machine once took over the old
    300 s limit, and the test then killed a rank that was still starting)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "ratio_fast.torchrun", "--standalone", "--nproc_per_node=2", "-m", "ratio_fast.cli",
           *[a for a in RUN if a not in ("--epochs", "1")], "--epochs", "40", "--out", str(tmp_path / "run")]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        for line in launcher.stdout:
            if line.startswith("epoch 1/40 |"):
                break
        else:
            launcher.wait(timeout=60)
            pytest.fail(f"the run ended before its first epoch line: exit {launcher.returncode}\n"
                        + launcher.stderr.read()[-3000:])
        os.kill(whom(launcher), signal.SIGTERM)
        out, err = launcher.communicate(timeout=300)
    finally:
        launcher.kill()
    return launcher, out, err


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through /proc")
def test_a_preempted_rank_makes_the_launcher_exit_75(tmp_path):
    launcher, out, err = launch_and_preempt(tmp_path, lambda launcher: worker_of_rank(launcher, 1))
    assert launcher.returncode == EXIT_PREEMPTED, err[-3000:]
    assert "stopped by a signal to another rank" in out
    last = err.strip().splitlines()[-1]
    # Both ranks stop after the same step and exit 75; the one that exits second may be stopped
    # by torchrun's agent first (a SIGTERM to the rest once one worker has exited), which the
    # launcher does not count (ratio_fast/cli/torchrun.py).
    ranks = last.removeprefix("ratio-fast: workers ended (").split(")", 1)[0].split(", ")
    assert {r.split(": ")[0] for r in ranks} == {"rank 0", "rank 1"}, last
    assert {r.split(": ")[1] for r in ranks} <= {"exit 75", "killed by SIGTERM"} and "exit 75" in last, last
    assert last.endswith("exit 75 (preempted (SIGTERM/SIGINT): checkpoint saved at a step boundary; requeue with "
                         "--resume)")
    assert "Traceback" not in err
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert 8 <= state["trainer"]["steps_done"] < 320 and state["world_size"] == 2


@pytest.mark.slow
def test_a_preempted_launcher_passes_the_signal_on_and_exits_75(tmp_path):
    launcher, out, err = launch_and_preempt(tmp_path, lambda launcher: launcher.pid)
    assert launcher.returncode == EXIT_PREEMPTED, err[-3000:]
    assert "stopped by SIGTERM after step" in out  # the workers checkpointed at a step boundary
    assert err.strip().splitlines()[-1].startswith("ratio-fast: the launcher got SIGTERM: exit 75 (preempted")
    assert 8 <= torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["trainer"]["steps_done"] < 320
