"""cli/run.py's Run: the attacks it builds follow --attack and --norm (the rest of the run is tested through
the command line in test_cli_main.py, test_run_integrity.py and test_faults.py)."""
import io

import pytest

from ratio_fast import APGD, PGD, TrainConfig
from ratio_fast.cli.run import Run


@pytest.mark.parametrize("attack, kind, norm", [("pgd", PGD, "l2"), ("apgd", APGD, "l2"), ("pgd", PGD, "linf")])
def test_the_per_epoch_robust_accuracy_uses_the_attack_that_attack_names(tmp_path, attack, kind, norm):
    config = TrainConfig(arch="tiny", dataset="synthetic", synthetic_size=64, batch_size=32, device="cpu",
                         loader="gpu", augment="none", attack=attack, epochs=1, steps_in=2, steps_out=1,
                         eps_in=0.25, eval_samples=32, norm=norm)
    run = Run(config, tmp_path / "run", log=io.StringIO())
    try:
        assert type(run.eval_attack) is kind and type(run.trainer.attack_in) is kind
        assert (run.eval_attack.eps, run.eval_attack.steps) == (0.25, 2)  # the in-distribution attack's settings
        assert run.eval_attack.norm == run.trainer.attack_in.norm == run.trainer.attack_out.norm == norm
    finally:
        run._lock.release(clean=True)
