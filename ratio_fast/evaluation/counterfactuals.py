"""Visual counterfactuals: how an image must change, within growing radii, to become a target class.

For each image and radius, APGD maximizes log p(target) inside the ball of the norm around the
image (the authors use L2, 500 steps and radii 0.5 ... 3.0, and start at a random point of the
ball; L-infinity's radii are ours). A robust model's counterfactuals show features of the target
class; a non-robust one's show noise. All radii of an image run in one batch, with per-sample
eps. Output: a PNG grid (rows = images; columns = the original, then each radius; under every
tile the predicted class and the target's confidence; optionally a row of differences) and the
raw tensors (both files written by cli/checkpoint_commands.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..attacks.apgd import apgd_run
from ..choices import COUNTERFACTUAL_STARTS, COUNTERFACTUAL_TARGETS, NORMS, check_builders
from ..config import CounterfactualsConfig
from ..models import eval_mode
from ..progress import Progress

# The defaults of `counterfactuals`: the settings of `ratio-fast counterfactuals`, declared once.
DEFAULTS = CounterfactualsConfig()


def runner_up(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per image, the most likely class other than its label: the default counterfactual target."""
    with eval_mode(model), torch.no_grad():
        logits = model(x).float()
    return logits.scatter(1, labels[:, None], float("-inf")).argmax(1)


def predicted(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with eval_mode(model), torch.no_grad():
        return model(x).float().argmax(1)


def spread(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The i-th image towards (label + 1 + i mod (classes - 1)) mod classes: never its own class,
    and targets across the classes even where one class is every image's runner-up."""
    with eval_mode(model), torch.no_grad():
        classes = model(x[:1]).shape[1]
    shift = 1 + torch.arange(len(labels), device=labels.device) % (classes - 1)
    return (labels + shift) % classes


# --target's rules (choices.COUNTERFACTUAL_TARGETS): (model, x, labels) -> the target class of each image
TARGET_RULES = {"runner-up": runner_up, "true": lambda model, x, labels: labels, "predicted": predicted,
                "spread": spread}
check_builders(TARGET_RULES, COUNTERFACTUAL_TARGETS, "counterfactuals.TARGET_RULES")


def choose_targets(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, target: str) -> torch.Tensor:
    """The target class of each image: `target` names a rule of TARGET_RULES or is one class for all."""
    if target in TARGET_RULES:
        return TARGET_RULES[target](model, x, labels)
    return torch.full_like(labels, int(target))


def counterfactuals(
    model: torch.nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    radii: Sequence[float] | None = None,
    steps: int = DEFAULTS.steps,
    backend: str = DEFAULTS.backend,
    batch_size: int = DEFAULTS.batch_size,
    start: str = DEFAULTS.start,
    seed: int = DEFAULTS.seed,
    norm: str = "l2",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Counterfactuals (N, R, C, H, W) of x (N, C, H, W) towards `targets` (N,) at each radius, and p(target) (N, R).

    radii: in `norm` (choices.NORMS); default: the norm's. start: a row of
    choices.COUNTERFACTUAL_STARTS. A random one, as the authors' APGD, begins at a random point on
    the sphere of each radius (in L-infinity AutoAttack's point of the box's surface; clipped to
    [0,1]), drawn from `seed` (the same call gives the same result); "image" begins at the image,
    so no radius ends less confident in the target than the original. `batch_size` bounds
    images x radii per APGD call.
    """
    if start not in COUNTERFACTUAL_STARTS:
        raise ValueError(f"start must be one of {', '.join(COUNTERFACTUAL_STARTS)}, got {start!r}")
    radii = NORMS[norm].radii if radii is None else radii
    random_start = COUNTERFACTUAL_STARTS[start].random
    generator = torch.Generator(x.device).manual_seed(seed) if random_start else None
    n, r = x.shape[0], len(radii)
    radius = torch.tensor([float(v) for v in radii], device=x.device)
    per_call = max(1, batch_size // r)
    calls = range(0, n, per_call)
    progress = Progress(len(calls) * steps, desc="counterfactuals", unit="step")  # every APGD step of every call
    images, confidence = [], []
    for lo in calls:
        xs = x[lo:lo + per_call].repeat_interleave(r, dim=0)
        ts = targets[lo:lo + per_call].repeat_interleave(r)
        adv = apgd_run(model, xs, ts, eps=radius.repeat(xs.shape[0] // r), steps=steps, objective="target_ce",
                       random_start=random_start, generator=generator, backend=backend, norm=norm,
                       on_step=progress.update).best
        images.append(adv.view(-1, r, *x.shape[1:]))
        confidence.append(target_probability(model, adv, ts).view(-1, r))
    progress.close()
    return torch.cat(images), torch.cat(confidence)


def target_probability(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with eval_mode(model), torch.no_grad():
        return model(x).float().softmax(1).gather(1, targets[:, None]).squeeze(1)


def prediction(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class, its probability) of each image of x (..., C, H, W), shaped as x's leading dims."""
    with eval_mode(model), torch.no_grad():
        p = model(x.flatten(0, -4)).float().softmax(1).max(1)
    return p.indices.view(x.shape[:-3]), p.values.view(x.shape[:-3])


def tile_captions(label: int, target: int, predicted: Sequence[int], predicted_confidence: Sequence[float],
                  target_confidence: Sequence[float], name) -> list[list[str]]:
    """The caption lines under each tile of one row (the original first, then each radius)."""
    captions = []
    for col, (c, p_c, p_t) in enumerate(zip(predicted, predicted_confidence, target_confidence)):
        lines = [f"{name(label)} -> {name(target)}"] if col == 0 else []
        captions.append(lines + [f"pred {name(int(c))} {float(p_c):.2f}", f"p({name(target)}) = {float(p_t):.3f}"])
    return captions


def save_grid(
    path: str | Path,
    original: torch.Tensor,
    adversarial: torch.Tensor,
    confidence: torch.Tensor,
    original_confidence: torch.Tensor,
    radii: Sequence[float],
    labels: torch.Tensor,
    targets: torch.Tensor,
    predicted: torch.Tensor,
    predicted_confidence: torch.Tensor,
    class_names: Sequence[str] | None = None,
    differences: bool = False,
    scale: int = 4,
    norm: str = "l2",
) -> None:
    """Write the PNG grid: a title row, then per image the original and one tile per radius.

    Tiles are upscaled `scale` times with nearest-neighbour (32x32 becomes readable, pixels stay
    pixels). Under the original: "label -> target"; under every tile: the predicted class with
    its probability and p(target). predicted / predicted_confidence: (N, R + 1), the original
    first. differences: under each row, |counterfactual - original| per tile, each stretched to
    its own maximum (printed under it), so that small changes show.
    """
    from PIL import Image, ImageDraw, ImageFont

    n, r = adversarial.shape[:2]
    h, w = original.shape[-2] * scale, original.shape[-1] * scale
    gap, header, line = 6, 22, 14
    caption = 3 * line + 4
    rows_per_image = 2 if differences else 1
    font = ImageFont.load_default()
    grid = Image.new("RGB", (gap + (r + 1) * (w + gap), header + n * rows_per_image * (h + caption + gap)), "white")
    draw = ImageDraw.Draw(grid)

    def name(c: int) -> str:
        return class_names[c] if class_names is not None and c < len(class_names) else f"class {c}"

    def tile(image: torch.Tensor, left: int, top: int, lines: list[str], target_last: bool = True) -> None:
        """Paste a tile with its caption lines; the last one, p(target), in the target's red."""
        grid.paste(_to_pil(image).resize((w, h), Image.NEAREST), (left, top))
        for k, text in enumerate(lines):
            red = target_last and k == len(lines) - 1
            draw.text((left, top + h + 3 + k * line), text, fill=(170, 0, 0) if red else "black", font=font)

    titles = ["original"] + [f"{NORMS[norm].title} radius {float(v):.3g}" for v in radii]
    for col, title in enumerate(titles):
        draw.text((gap + col * (w + gap), 5), title, fill="black", font=font)
    for row in range(n):
        top = header + row * rows_per_image * (h + caption + gap)
        tiles = [original[row]] + [adversarial[row, j] for j in range(r)]
        captions = tile_captions(int(labels[row]), int(targets[row]), predicted[row].tolist(),
                                 predicted_confidence[row].tolist(),
                                 [float(original_confidence[row])] + confidence[row].tolist(), name)
        for col, (image, lines) in enumerate(zip(tiles, captions)):
            tile(image, gap + col * (w + gap), top, lines)
        if differences:
            top += h + caption + gap
            for k, text in enumerate(("|difference|, each", "tile stretched to", "its own maximum")):
                draw.text((gap, top + 3 + k * line), text, fill="black", font=font)
            for j in range(r):
                change = (adversarial[row, j] - original[row]).abs()
                peak = float(change.max())
                tile(change / max(peak, 1e-12), gap + (j + 1) * (w + gap), top, [f"max {peak:.3f}"], target_last=False)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, format="PNG")  # by name, not by suffix: callers may write to a temporary file


def _to_pil(image: torch.Tensor):
    """(3, H, W) float in [0,1] -> PIL RGB image."""
    from PIL import Image

    pixels = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy(), "RGB")
