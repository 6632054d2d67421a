"""Tests of ratio_fast.datasets, the one table of data sets: each row is complete, unknown names are
refused in one line, and the run, eval and export read their per-data-set facts from it."""

from __future__ import annotations

import math

import pytest
import torch

from ratio_fast.training.checkpoint import save_checkpoint
from ratio_fast.config import TrainConfig
from ratio_fast.data import load_in_distribution
from ratio_fast.datasets import CIFAR_NAMES, DATASETS, IMAGE_BYTES, IMAGE_HW, IMAGE_SHAPE, get_dataset
from ratio_fast.errors import UserError
from ratio_fast.evaluation.export import model_from_checkpoint
from ratio_fast.models import create_model
from ratio_fast.evaluation.ood_sets import BUILT_IN, choose_ood_sets, training_out_distribution


@pytest.mark.parametrize("name", DATASETS)
def test_every_row_is_complete(name):
    row = DATASETS[name]
    assert row.name == name and row.title
    assert len(row.mean) == len(row.std) == IMAGE_SHAPE[2]
    assert all(0 < v < 1 and math.isfinite(v) for v in row.mean + row.std)
    assert row.num_classes >= 2 and len(row.class_names) in (0, row.num_classes)
    assert row.out_data in DATASETS
    assert row.out_data != name or row.files is None  # synthetic's is the generated out-distribution
    assert all(spec in DATASETS for spec in row.ood_sets)
    assert (row.files is not None) == (name in CIFAR_NAMES)


def test_the_image_shape_is_stated_once():
    assert IMAGE_HW == IMAGE_SHAPE[:2] and IMAGE_BYTES == math.prod(IMAGE_SHAPE)


def test_an_unknown_data_set_is_refused_in_one_line_naming_the_choices(tmp_path):
    expected = "--dataset: unknown data set 'mnist'; choose one of cifar10, cifar100, synthetic"
    with pytest.raises(UserError) as info:
        get_dataset("mnist")
    assert str(info.value) == expected
    with pytest.raises(UserError) as info:
        load_in_distribution("mnist", tmp_path, train=True)
    assert str(info.value) == expected


@pytest.mark.parametrize("name", DATASETS)
def test_the_default_out_distribution_and_ood_sets_come_from_the_row(name):
    row = DATASETS[name]
    run = TrainConfig(mode="ratio", dataset=name)
    assert training_out_distribution(run) == row.out_data
    sets, _notes = choose_ood_sets(None, name, None)
    assert sets == [*row.ood_sets, *BUILT_IN]


@pytest.mark.parametrize("name", DATASETS)
def test_an_exported_model_has_its_data_sets_classes_and_statistics(tmp_path, name):
    row = DATASETS[name]
    trained = create_model("tiny", num_classes=row.num_classes, mean=row.mean, std=row.std)
    config = TrainConfig(arch="tiny", dataset=name).to_dict()
    save_checkpoint(tmp_path / "checkpoint.pt", {"config": config, "trainer": {"ema": {"model": trained.state_dict()}}})
    model, _config = model_from_checkpoint(tmp_path / "checkpoint.pt")
    assert model(torch.rand(2, 3, *IMAGE_HW)).shape == (2, row.num_classes)
    torch.testing.assert_close(model.mu.flatten(), torch.tensor(row.mean))
    torch.testing.assert_close(model.sigma.flatten(), torch.tensor(row.std))
