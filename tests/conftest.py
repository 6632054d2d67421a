import os

# Triton's interpreter runs the kernels on CPU tensors; it must be chosen before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import contextlib  # noqa: E402
import importlib  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="session")
def bench_module():
    """bench_module(name) imports bench/<name>.py. bench/ is no package: its files import each
    other by plain name, as pytest (for bench/) and `python3 bench/<file>.py` put it on sys.path."""
    def load(name: str):
        with pytest.MonkeyPatch.context() as patch:
            patch.syspath_prepend(str(BENCH))
            return importlib.import_module(name)
    return load


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    """A test that reaches Triton's interpreter where the installed triton and numpy break it
    (ratio_fast/ops/interpreter.py) skips with that reason instead of failing."""
    from ratio_fast.ops.interpreter import InterpreterUnusable

    try:
        return (yield)
    except InterpreterUnusable as error:
        pytest.skip(str(error))


def to_float_nchw(images_uint8):
    """uint8 (N,H,W,C) numpy images -> float (N,C,H,W) in [0,1]."""
    return torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div(255).contiguous()


@pytest.fixture(scope="session")
def synthetic_split():
    """A small synthetic train/test split and out-distribution set as float tensors."""
    from ratio_fast.data.synthetic import make_synthetic, make_synthetic_out

    train_x, train_y = make_synthetic(1024, seed=0)
    test_x, test_y = make_synthetic(256, seed=1)
    out_x = make_synthetic_out(256, seed=2)
    return {
        "train": (to_float_nchw(train_x), torch.from_numpy(train_y)),
        "test": (to_float_nchw(test_x), torch.from_numpy(test_y)),
        "out": to_float_nchw(out_x),
    }


@pytest.fixture(scope="session")
def trained_tiny(synthetic_split):
    """The tiny model trained cleanly on the synthetic set until it classifies the test split well."""
    from ratio_fast.models import create_model

    torch.manual_seed(0)
    model = create_model("tiny")
    x, y = synthetic_split["train"]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for idx in torch.randperm(len(y), generator=g).split(64):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


class Recording(torch.nn.Module):
    """The model, remembering every input it sees (what an attack evaluated it at)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.inputs = model, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.model(x)


@contextlib.contextmanager
def no_host_sync():
    """The check of the tests that say something "never synchronizes with the host": inside, a
    CUDA operation that would make the host wait for the GPU raises instead of waiting."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)
