"""The out-distribution test sets of `ratio-fast eval`: built-in sets, SVHN's .mat, the choice of defaults."""

import numpy as np
import pytest
import scipy.io
import scipy.ndimage

from ratio_fast.config import TrainConfig
from ratio_fast.errors import UserError
from ratio_fast.evaluation.ood_sets import (BUILT_IN, _gaussian_blur, choose_ood_sets, is_training_set, load_ood_set,
                                 permuted_pixels, read_svhn_mat, smooth_noise, training_out_distribution,
                                 uniform_noise)


def neighbour_difference(images):
    """Mean absolute difference of horizontally adjacent pixels: high for white noise, low for smooth images."""
    return np.abs(np.diff(images.astype(np.float64), axis=2)).mean()


def test_built_in_sets_are_uint8_images_fixed_by_the_seed():
    for make in (uniform_noise, smooth_noise):
        a = make(20, seed=3)
        assert a.shape == (20, 32, 32, 3) and a.dtype == np.uint8
        assert np.array_equal(a, make(20, seed=3)) and not np.array_equal(a, make(20, seed=4))
    assert abs(uniform_noise(50).mean() - 127.5) < 2


def test_smooth_noise_is_low_frequency_and_stretched_to_the_full_range():
    smooth, uniform = smooth_noise(40), uniform_noise(40)
    assert neighbour_difference(smooth) < neighbour_difference(uniform) / 4
    assert (smooth.reshape(40, -1).min(1) == 0).all() and (smooth.reshape(40, -1).max(1) == 255).all()


def test_blur_is_a_gaussian_filter():
    image = np.random.default_rng(0).random((32, 32, 3))
    for sigma in (1.0, 1.7, 2.5):
        expected = scipy.ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0), mode="reflect", truncate=3.0)
        assert np.allclose(_gaussian_blur(image, sigma), expected, atol=1e-12)


def test_permuted_pixels_keep_each_images_pixels_but_not_their_places():
    images = np.random.default_rng(1).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    permuted = permuted_pixels(images, 5, seed=0)
    assert permuted.shape == (5, 32, 32, 3)
    for original, shuffled in zip(images, permuted):
        as_rows = lambda a: np.sort(a.reshape(-1, 3).view([("", np.uint8)] * 3), axis=0)  # noqa: E731
        assert np.array_equal(as_rows(original), as_rows(shuffled))  # the same RGB triples
        assert (original != shuffled).any(axis=-1).mean() > 0.9


def test_svhn_mat_is_read_as_nhwc(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, (32, 32, 3, 7), dtype=np.uint8)
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": images, "y": np.arange(7)[:, None]})
    read = read_svhn_mat(tmp_path / "test_32x32.mat")
    assert read.shape == (7, 32, 32, 3) and np.array_equal(read[4], images[..., 4])
    assert np.array_equal(load_ood_set("svhn", dataset="cifar10", test_images=None, data_dir=tmp_path, samples=0,
                                       seed=0), read)
    scipy.io.savemat(tmp_path / "other.mat", {"X": np.zeros((8, 8), np.uint8)})
    with pytest.raises(UserError, match="expected SVHN's X"):
        read_svhn_mat(tmp_path / "other.mat")
    with pytest.raises(UserError, match="no such file.*housenumbers"):
        read_svhn_mat(tmp_path / "missing.mat")


def test_npy_and_folder_sets_come_from_the_data_package(tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "ood.npy", images)
    source = load_ood_set(str(tmp_path / "ood.npy"), dataset="cifar10", test_images=None, data_dir=tmp_path,
                          samples=0, seed=0)
    assert np.array_equal(source.read(np.arange(9)), images)
    with pytest.raises(UserError, match="--ood: 'nope'.*uniform-noise"):
        load_ood_set("nope", dataset="cifar10", test_images=None, data_dir=tmp_path, samples=0, seed=0)
    with pytest.raises(UserError, match="in-distribution"):
        load_ood_set("cifar10", dataset="cifar10", test_images=None, data_dir=tmp_path, samples=0, seed=0)


def config(mode="ratio", dataset="cifar10", out_data=None):
    return TrainConfig(mode=mode, dataset=dataset, out_data=out_data)


def test_defaults_leave_out_the_training_out_distribution():
    trained = training_out_distribution(config())  # CIFAR-10 runs train on CIFAR-100 by default
    assert trained == "cifar100"
    sets, notes = choose_ood_sets(None, "cifar10", trained)
    assert sets == list(BUILT_IN) and len(notes) == 1 and "leave out cifar100" in notes[0]
    sets, notes = choose_ood_sets(None, "cifar10", "/data/300K_random_images.npy")
    assert sets == ["cifar100", *BUILT_IN] and notes == []
    assert training_out_distribution(config(mode="at")) is None
    assert choose_ood_sets(None, "cifar100", None) == (["cifar10", *BUILT_IN], [])


def test_asking_for_the_training_out_distribution_warns(tmp_path):
    sets, warnings = choose_ood_sets(["cifar100", "uniform-noise"], "cifar10", "cifar100")
    assert sets == ["cifar100", "uniform-noise"]
    assert len(warnings) == 1 and warnings[0].startswith("warning: --ood cifar100 is the training out-distribution")
    path = tmp_path / "tiny.npy"
    path.write_bytes(b"")
    assert is_training_set(str(tmp_path / "." / "tiny.npy"), str(path))  # the same file by another spelling
    assert not is_training_set("uniform-noise", str(path))
