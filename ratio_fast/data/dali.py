"""The "dali" loader: NVIDIA DALI augments, parallel workers read the planned rows.

The pipeline's input is an external source running in DALI's Python worker processes: for each
global step it reads the planned rows (``streaming.PlannedReader``; memmap slices, or pillow
decoding for image folders) and passes them with their plan. DALI then augments on the GPU (or
on the CPU with ``device_id=None`` on a machine without one):

- crop and flip: ``fn.slice`` at the planned anchor, padding with the row's fill colour
  (``augment.padding_colour``), and ``fn.flip``: bit-identical to ``augment.crop_flip``;
- AutoAugment: DALI's automatic-augmentation support (``nvidia.dali.auto_aug``: ``@augmentation``,
  ``signed_bin``, ``select``, conditional execution) applies, per sample and stage, the
  operation, magnitude bin and sign the plan drew (codes decoded by
  ``autoaugment.decode_autoaugment``, magnitudes from ``autoaugment.MAGNITUDES``, affine matrices
  from ``autoaugment_geometry.affine_matrix``): the same plan,
  but DALI's kernels, so not the same bits. DALI has no bicubic warp (shear runs bilinear), it
  rounds where PIL truncates, and its equalize, autocontrast, contrast and sharpness follow
  OpenCV-style formulas; invert, solarize, posterize, translate and rotate are exact up to
  float32 coordinates. tests/test_data_dali.py bounds the difference to the torch loaders, and
  ``choices.LOADERS`` says so (``exact_autoaugment``): ``--loader auto`` never picks DALI then.
- Cutout and the model-input format: ``augment.Augmenter.model_input``, the other loaders' own
  last step, on the planned centres passed through the pipeline untouched.

DALI is imported only when a pipeline is built: importing ratio_fast never needs it.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator

import numpy as np
import torch

from ratio_fast.choices import LOADERS
from ratio_fast.data.augment import fill_colour, padding_colour
from ratio_fast.data.autoaugment import (GEOMETRIC, MAGNITUDES, NUM_AUTOAUGMENT_CODES, OPERATIONS, ROTATE_GREY, SIGNED,
                                         STAGES, decode_autoaugment)
from ratio_fast.data.autoaugment_geometry import affine_matrix
from ratio_fast.data.batches import BatchSpec, installed
from ratio_fast.data.plan import PAD
from ratio_fast.data.streaming import PlannedReader, StreamingLoader, raise_user_error_behind
from ratio_fast.errors import UserError

PREFETCH_DEPTH = 2  # batches DALI and its workers run ahead of the trainer
# The operations DALI selects from, per sample and stage: index 0 does nothing.
SELECTED = ("identity", *OPERATIONS)


class DaliLoader(StreamingLoader):
    """Batches from a DALI pipeline on ``device`` (CUDA: DALI on that GPU; CPU: CPU operators).

    Arguments and output: see ``batches.Loader``. ``workers``: DALI Python worker processes for
    the external source (0: read in the calling thread, no processes; handy for tests).
    """

    def __init__(self, *args, **kwargs) -> None:
        if not installed(LOADERS["dali"]):
            raise UserError(f"--loader dali: NVIDIA DALI is not installed (pip install {LOADERS['dali'].install}); "
                            "or choose --loader gpu or torch")
        super().__init__(*args, **kwargs)
        if self.device.type not in ("cuda", "cpu"):
            raise ValueError(f"the dali loader runs on cuda or cpu devices, not {self.device}")

    def _open_stream(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        feed = _DaliFeed(self.reader, step)
        pipeline = _build_pipeline(feed, self.spec, self.image_hw, self.device, self.workers)
        return _batches(pipeline, feed, self.device, self.augmenter)


def _batches(pipeline, feed: "_DaliFeed", device: torch.device, augmenter):
    """The pipeline's outputs from the feed's first step on, as model input on ``device``.

    A plain function, not a method: a generator holding the loader would make a reference
    cycle, and the pipeline's workers would then only stop when the garbage collector runs.
    """
    step = feed.start
    while True:
        try:
            outputs = pipeline.run()
        except Exception as e:  # DALI wraps a worker's exception in a plain Exception
            # Stop the workers now: drop every reference to the pipeline, ours and those in the
            # frames of the exception's traceback (which a test or a log may keep alive).
            traceback.clear_frames(e.__traceback__)
            del pipeline
            # The failure may be in any batch the workers were preparing, not only this one.
            raise_user_error_behind(e, feed.reader, range(step, step + PREFETCH_DEPTH + 2))
            raise
        images = _to_torch(outputs[0], device)
        passed = {name: _to_torch(output, torch.device("cpu")).to(device, non_blocking=True)
                  for name, output in zip(feed.passed_through, outputs[1:])}
        yield augmenter.model_input(images, feed.reader.spec.channels_last, passed.get("cutout")), passed.get("labels")
        step += 1


class _DaliFeed:
    """The external source callback: batch ``info.iteration`` of the stream is global step
    ``start + info.iteration``. Returns the images, then (with crops) the crop anchors and flips,
    then (with AutoAugment) per stage the operation (index into ``SELECTED``), magnitude bin and
    negative-sign flag, then what ``passed_through`` names."""

    def __init__(self, reader: PlannedReader, start: int) -> None:
        self.reader = reader
        self.start = start
        draws = reader.spec.draws
        self.crops, self.autoaugment = draws.crop_flip, draws.autoaugment
        self.passed_through = ("labels",) * (reader.labels is not None) + ("cutout",) * draws.cutout
        # Per plan code: (operation index, magnitude bin, negative), one row each (code 0: identity).
        rows = [(0, 0, 0)] + [(SELECTED.index(name), magnitude_bin, int(sign < 0))
                              for name, magnitude_bin, sign in map(decode_autoaugment, range(1, NUM_AUTOAUGMENT_CODES))]
        self.code_table = np.array(rows, dtype=np.int32)

    @property
    def num_outputs(self) -> int:
        return 1 + 2 * self.crops + 3 * STAGES * self.autoaugment + len(self.passed_through)

    def __call__(self, info) -> tuple[np.ndarray, ...]:
        batch = self.reader.read(self.start + info.iteration)
        plan = batch.plan
        outputs = [batch.images]
        if self.crops:
            outputs += [(plan.shift - PAD).astype(np.int32), plan.flip.astype(np.int32)]
        if self.autoaugment:
            for stage in range(STAGES):
                decoded = self.code_table[plan.autoaugment[:, stage]]
                outputs += [decoded[:, 0].copy(), decoded[:, 1].copy(), decoded[:, 2].copy()]
        named = {"labels": batch.labels, "cutout": plan.cutout}
        return (*outputs, *(named[name] for name in self.passed_through))


def _build_pipeline(feed: _DaliFeed, spec: BatchSpec, image_hw: tuple[int, int], device: torch.device, workers: int):
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.auto_aug.core import select, signed_bin

    device_id = (device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else None
    colour, pad = fill_colour(spec.mean), padding_colour(spec.augmentation, spec.mean)
    operations = _operations(image_hw) if feed.autoaugment else None
    # Forked workers start in milliseconds, spawned ones re-import torch (seconds); but children
    # forked from a process that uses CUDA inherit a CUDA context they must not use.
    start_method = "fork" if device_id is None and not torch.cuda.is_initialized() else "spawn"

    @pipeline_def(enable_conditionals=True)
    def pipeline():
        parallel = dict(parallel=True, prefetch_queue_depth=PREFETCH_DEPTH) if workers > 0 else {}
        outputs = list(fn.external_source(source=feed, num_outputs=feed.num_outputs, batch=True, batch_info=True,
                                          layout=["HWC"] + [""] * (feed.num_outputs - 1), **parallel))
        images = outputs.pop(0)
        if device_id is not None:
            images = images.gpu()
        if feed.crops:
            anchor, flip = outputs.pop(0), outputs.pop(0)
            crop = types.Constant(np.array(image_hw, dtype=np.int32))
            images = fn.slice(images, anchor, crop, axes=[0, 1], out_of_bounds_policy="pad", fill_values=list(pad))
            images = fn.flip(images, horizontal=flip)
        if feed.autoaugment:
            fills = dict(fill=types.Constant(np.array(colour, np.uint8)),
                         rotate_fill=types.Constant(np.full(3, ROTATE_GREY, np.uint8)))
            for _stage in range(STAGES):
                operation, magnitude_bin, negative = outputs.pop(0), outputs.pop(0), outputs.pop(0)
                images = select(operations, operation, images, magnitude_bin=signed_bin(magnitude_bin, negative),
                                num_magnitude_bins=len(MAGNITUDES["shearX"]), **fills)
        return (images, *outputs)

    built = pipeline(batch_size=feed.reader.spec.local_batch_size, num_threads=max(1, workers), device_id=device_id,
                     prefetch_queue_depth=PREFETCH_DEPTH, py_num_workers=max(1, workers),
                     py_start_method=start_method)
    built.build()
    return built


def _operations(image_hw: tuple[int, int]) -> list:
    """DALI augmentations for ``SELECTED``, each over the magnitude grid of ``autoaugment.MAGNITUDES``."""
    from nvidia.dali.auto_aug import augmentations as stock
    from nvidia.dali.auto_aug.core import augmentation

    height, width = image_hw

    def grid(name: str) -> dict:
        return dict(mag_range=np.asarray(MAGNITUDES[name], dtype=np.float64), randomly_negate=name in SIGNED)

    def enhance_factor(m: float) -> np.ndarray:  # PIL's enhance factor: 1 + magnitude
        return np.float32(1.0 + m)

    built = {
        "identity": stock.identity,
        "invert": stock.invert,
        "equalize": augmentation(_equalize),
        "autocontrast": stock.auto_contrast,
        "solarize": stock.solarize.augmentation(**grid("solarize"), mag_to_param=np.float32),
        "posterize": stock.posterize.augmentation(
            **grid("posterize"), mag_to_param=lambda bits: np.uint8(255 ^ (2 ** (8 - int(bits)) - 1))),
        "brightness": stock.brightness.augmentation(**grid("brightness"), mag_to_param=enhance_factor),
        "contrast": stock.contrast.augmentation(**grid("contrast"), mag_to_param=enhance_factor),
        "sharpness": augmentation(_sharpness(image_hw), **grid("sharpness"), mag_to_param=stock.sharpness_kernel,
                                  name="sharpness"),
        "color": augmentation(_color, **grid("color"), mag_to_param=enhance_factor),
    }
    for name in GEOMETRIC:
        def matrix(m: float, name: str = name) -> np.ndarray:
            return np.array(affine_matrix(name, m, height, width), dtype=np.float32).reshape(2, 3)

        built[name] = augmentation(_WARPS[name], **grid(name), mag_to_param=matrix, name=name)
    return [built[name] for name in SELECTED]


def _equalize(data, _):
    """DALI's histogram equalization (OpenCV's formula, not PIL's: see the module)."""
    from nvidia.dali import fn

    return fn.equalize(data)


def _color(data, factor):
    """PIL's ImageEnhance.Color: blend with the image's grey (ITU-R 601 luma), factor as given."""
    from nvidia.dali import fn, types

    weights = types.Constant(np.array([0.299, 0.587, 0.114], dtype=np.float32))
    grey = fn.reductions.sum(data * weights, axis_names="C", keep_dims=True)
    return fn.cast_like(grey + (data - grey) * factor, data)


def _sharpness(image_hw: tuple[int, int]):
    """PIL's ImageEnhance.Sharpness as one 3x3 filter (blend with the smoothed image folded into
    the kernel, as DALI's own augmentation does); PIL leaves the 1-pixel border as it was."""
    from nvidia.dali import fn, types

    border = np.ones((*image_hw, 1), np.uint8)
    border[1:-1, 1:-1] = 0

    def sharpness(data, kernel):
        keep = types.Constant(border)
        return keep * data + (types.Constant(1, dtype=types.UINT8) - keep) * fn.filter(data, kernel)

    return sharpness


def _warp(data, matrix, colour, interp_type):
    """PIL's affine transform: sample where the pixel centre lands (taps clamped at the border),
    fill where it lands outside the image. DALI fills a single value, so the inside mask is
    warped separately and the per-channel fill colour composited."""
    from nvidia.dali import fn, types

    one = types.Constant(1, dtype=types.UINT8)
    warped = fn.warp_affine(data, matrix=matrix, inverse_map=True, interp_type=interp_type)
    inside = fn.warp_affine(data * types.Constant(0, dtype=types.UINT8) + one, matrix=matrix, inverse_map=True,
                            interp_type=types.INTERP_NN, fill_value=0)
    return inside * warped + (one - inside) * colour


def _shear(data, matrix, fill):
    from nvidia.dali import types

    return _warp(data, matrix, fill, types.INTERP_LINEAR)  # DALI warps have no bicubic filter


def _nearest(data, matrix, fill):
    from nvidia.dali import types

    return _warp(data, matrix, fill, types.INTERP_NN)


def _rotate(data, matrix, rotate_fill):
    from nvidia.dali import types

    return _warp(data, matrix, rotate_fill, types.INTERP_NN)


_WARPS = {"shearX": _shear, "shearY": _shear, "translateX": _nearest, "translateY": _nearest, "rotate": _rotate}


def _to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    """Copy a dense DALI TensorList into a new torch tensor on ``device`` (on torch's stream)."""
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

    tensor = tensor_list.as_tensor()
    out = torch.empty(tensor.shape(), dtype=to_torch_type[tensor.dtype], device=device)
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    return feed_ndarray(tensor, out, cuda_stream=stream)
