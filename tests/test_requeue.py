"""A job script that may be requeued needs one command line: `--resume auto` starts the run when
--out has no checkpoint and continues it when it has one; --checkpoint-epochs / --keep-last keep
a history of checkpoints, the oldest pruned."""
import torch

from ratio_fast.cli.main import main
from ratio_fast.training.checkpoint import load_checkpoint

FAST = ["train", "--dataset", "synthetic", "--arch", "tiny", "--device", "cpu", "--synthetic-size", "256",
        "--batch-size", "32", "--steps-in", "1", "--steps-out", "1", "--eval-samples", "16"]


def test_resume_auto_starts_then_continues_and_keeps_the_last_checkpoints(tmp_path, capsys):
    out = tmp_path / "run"
    line = FAST + ["--epochs", "3", "--out", str(out), "--resume", "auto", "--checkpoint-epochs", "1",
                   "--keep-last", "2"]
    assert main(line + ["--max-steps", "8"]) == 0  # 8 steps: the first epoch, then "preempted"
    first = capsys.readouterr().out
    assert "starting:" in first and "resuming" not in first
    assert sorted(p.name for p in out.glob("checkpoint-epoch-*.pt")) == ["checkpoint-epoch-1.pt"]

    assert main(line) == 0  # the same line again continues the run
    second = capsys.readouterr().out
    assert "resuming at step 8" in second
    assert load_checkpoint(out / "checkpoint.pt")["trainer"]["steps_done"] == 24
    # three epochs, the newest two kept; each a complete, checksummed checkpoint of its epoch
    kept = sorted(p.name for p in out.glob("checkpoint-epoch-*.pt"))
    assert kept == ["checkpoint-epoch-2.pt", "checkpoint-epoch-3.pt"]
    assert load_checkpoint(out / "checkpoint-epoch-2.pt")["trainer"]["steps_done"] == 16
    assert (out / "checkpoint-epoch-3.pt").read_bytes() == (out / "checkpoint.pt").read_bytes()

    assert main(line) == 0  # finished: a third requeue writes nothing
    assert "nothing to do" in capsys.readouterr().out


def test_history_every_k_epochs_without_pruning(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(FAST + ["--epochs", "3", "--out", str(out), "--checkpoint-epochs", "2"]) == 0
    assert [p.name for p in out.glob("checkpoint-epoch-*.pt")] == ["checkpoint-epoch-2.pt"]
    state = torch.load(out / "checkpoint-epoch-2.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["steps_done"] == 16
