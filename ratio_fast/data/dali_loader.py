"""The "dali" loader: NVIDIA DALI pads, crops and flips; parallel workers read the planned rows.

The pipeline's input is an external source running in DALI's Python worker processes: for
each global step it reads the planned rows (``streaming.PlannedReader``; memmap slices, or
pillow decoding for image folders) and passes them with their planned crop anchors and flip
flags. DALI then does the augmentation on the GPU (or on the CPU with ``device_id=None`` on a
machine without one): ``fn.slice`` with a zero-padding out-of-bounds policy at the planned
integer anchor, and ``fn.flip``. The uint8 result is copied to a torch tensor on the loader's
device and converted by ``augment.to_model_input``, the gpu loader's own last step (cutout
included: the planned centres pass through the pipeline untouched), so the three loaders agree
bit for bit (tests/test_dali.py checks it on CPU).

DALI is imported only when a pipeline is built: importing ratio_fast never needs it.
"""

from __future__ import annotations

import importlib.util
import traceback
from collections.abc import Iterator

import numpy as np
import torch

from ratio_fast.data.augment import to_model_input
from ratio_fast.data.image_source import IMAGE_SHAPE
from ratio_fast.data.plan import PAD
from ratio_fast.data.streaming import PlannedReader, StreamingLoader, raise_user_error_behind
from ratio_fast.errors import UserError

PREFETCH_DEPTH = 2  # batches DALI and its workers run ahead of the trainer


def dali_available() -> bool:
    """Whether nvidia-dali (the ``nvidia-dali-cuda130`` wheel) is installed; imports nothing."""
    return importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None


class DaliLoader(StreamingLoader):
    """Batches from a DALI pipeline on ``device`` (CUDA: DALI on that GPU; CPU: CPU operators).

    Arguments and output: see ``loader.Loader``; ``images`` is an array, memmap or ImageSource.
    ``workers``: DALI Python worker processes for the external source (0: read in the calling
    thread, no processes; handy for tests).
    """

    def __init__(self, *args, **kwargs) -> None:
        if not dali_available():
            raise UserError("--loader dali: NVIDIA DALI is not installed (pip install nvidia-dali-cuda130); "
                            "or choose --loader gpu or torch")
        super().__init__(*args, **kwargs)
        if self.device.type not in ("cuda", "cpu"):
            raise ValueError(f"the dali loader runs on cuda or cpu devices, not {self.device}")

    def _open_stream(self, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        pipeline = _build_pipeline(_DaliFeed(self.reader, step), self.local_batch_size, self.device,
                                   self.workers, num_passed=len(_passed_through(self.reader)))
        return _batches(pipeline, self.reader, step, self.device, self.channels_last)

    def _close_stream(self, stream: Iterator) -> None:
        stream.close()  # drops the pipeline: DALI stops its worker processes


def _batches(pipeline, reader: PlannedReader, step: int, device: torch.device, channels_last: bool):
    """The pipeline's outputs from global step ``step`` on, as model input on ``device``.

    A plain function, not a method: a generator holding the loader would make a reference
    cycle, and the pipeline's workers would then only stop when the garbage collector runs.
    """
    while True:
        try:
            outputs = pipeline.run()
        except Exception as e:  # DALI wraps a worker's exception in a plain Exception
            # Stop the workers now: drop every reference to the pipeline, ours and those in the
            # frames of the exception's traceback (which a test or a log may keep alive).
            traceback.clear_frames(e.__traceback__)
            del pipeline
            # The failure may be in any batch the workers were preparing, not only this one.
            raise_user_error_behind(e, reader, range(step, step + PREFETCH_DEPTH + 2))
            raise
        images = _to_torch(outputs[0], device)
        passed = {name: _to_torch(output, torch.device("cpu")).to(device, non_blocking=True)
                  for name, output in zip(_passed_through(reader), outputs[1:])}
        yield to_model_input(images, channels_last, passed.get("cutout")), passed.get("labels")
        step += 1


def _passed_through(reader: PlannedReader) -> tuple[str, ...]:
    """What the pipeline passes from the feed to its outputs untouched, after the images."""
    return ("labels",) * (reader.labels is not None) + ("cutout",) * (reader.cutout_hw is not None)


class _DaliFeed:
    """The external source callback: batch ``info.iteration`` of the stream is global step
    ``start + info.iteration``. Returns (images HWC, crop anchors (dy-PAD, dx-PAD), flips,
    *what ``_passed_through`` names)."""

    def __init__(self, reader: PlannedReader, start: int) -> None:
        self.reader = reader
        self.start = start

    def __call__(self, info) -> tuple[np.ndarray, ...]:
        batch = self.reader.read(self.start + info.iteration)
        outputs = (batch.images, (batch.shift - PAD).astype(np.int32), batch.flip.astype(np.int32))
        return (*outputs, *(getattr(batch, name) for name in _passed_through(self.reader)))


def _build_pipeline(feed: _DaliFeed, batch_size: int, device: torch.device, workers: int, *, num_passed: int):
    from nvidia.dali import Pipeline, fn, types

    device_id = (device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else None
    num_outputs = 3 + num_passed
    # Forked workers start in milliseconds, spawned ones re-import torch (seconds); but children
    # forked from a process that uses CUDA inherit a CUDA context they must not use.
    start_method = "fork" if device_id is None and not torch.cuda.is_initialized() else "spawn"
    pipeline = Pipeline(batch_size=batch_size, num_threads=max(1, workers), device_id=device_id,
                        prefetch_queue_depth=PREFETCH_DEPTH, py_num_workers=max(1, workers),
                        py_start_method=start_method)
    with pipeline:
        parallel = dict(parallel=True, prefetch_queue_depth=PREFETCH_DEPTH) if workers > 0 else {}
        outputs = fn.external_source(source=feed, num_outputs=num_outputs, batch=True, batch_info=True,
                                     layout=["HWC"] + [""] * (num_outputs - 1), **parallel)
        images, anchor, flip = outputs[:3]
        if device_id is not None:
            images = images.gpu()
        crop = types.Constant(np.array(IMAGE_SHAPE[:2], dtype=np.int32))
        images = fn.slice(images, anchor, crop, axes=[0, 1], out_of_bounds_policy="pad", fill_values=0)
        images = fn.flip(images, horizontal=flip)
        pipeline.set_outputs(images, *outputs[3:])
    pipeline.build()
    return pipeline


def _to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    """Copy a dense DALI TensorList into a new torch tensor on ``device`` (on torch's stream)."""
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

    tensor = tensor_list.as_tensor()
    out = torch.empty(tensor.shape(), dtype=to_torch_type[tensor.dtype], device=device)
    stream = torch.cuda.current_stream(device) if device.type == "cuda" else None
    return feed_ndarray(tensor, out, cuda_stream=stream)
