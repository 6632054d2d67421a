"""Visual counterfactuals: how an image must change, within growing radii, to become a target class.

For each image and radius, APGD maximizes log p(target) inside the ball of the norm around the
image (the authors use L2, 500 steps and radii 0.5 ... 3.0, and start at a random point of the
ball; L-infinity's radii are ours). A robust model's counterfactuals show features of the target
class; a non-robust one's show noise. All radii of an image run in one batch, with per-sample
eps. Output: a PNG grid (rows = images; columns = the original, then each radius; the target's
confidence under every tile) and the raw tensors (both files written by
cli/checkpoint_commands.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..attacks.apgd import apgd_run
from ..choices import COUNTERFACTUAL_STARTS, COUNTERFACTUAL_TARGETS, NORMS, check_builders
from ..config import CounterfactualsConfig
from ..models import eval_mode

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


# --target's rules (choices.COUNTERFACTUAL_TARGETS): (model, x, labels) -> the target class of each image
TARGET_RULES = {"runner-up": runner_up, "true": lambda model, x, labels: labels, "predicted": predicted}
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
    images, confidence = [], []
    for lo in range(0, n, per_call):
        xs = x[lo:lo + per_call].repeat_interleave(r, dim=0)
        ts = targets[lo:lo + per_call].repeat_interleave(r)
        adv = apgd_run(model, xs, ts, eps=radius.repeat(xs.shape[0] // r), steps=steps, objective="target_ce",
                       random_start=random_start, generator=generator, backend=backend, norm=norm).best
        images.append(adv.view(-1, r, *x.shape[1:]))
        confidence.append(target_probability(model, adv, ts).view(-1, r))
    return torch.cat(images), torch.cat(confidence)


def target_probability(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with eval_mode(model), torch.no_grad():
        return model(x).float().softmax(1).gather(1, targets[:, None]).squeeze(1)


def save_grid(
    path: str | Path,
    original: torch.Tensor,
    adversarial: torch.Tensor,
    confidence: torch.Tensor,
    original_confidence: torch.Tensor,
    radii: Sequence[float],
    labels: torch.Tensor,
    targets: torch.Tensor,
    class_names: Sequence[str] | None = None,
    scale: int = 4,
    norm: str = "l2",
) -> None:
    """Write the PNG grid: a title row, then per image the original and one tile per radius.

    Tiles are upscaled `scale` times with nearest-neighbour (32x32 becomes readable, pixels stay
    pixels). Under the original: "label -> target"; under every tile: p(target) at that image.
    """
    from PIL import Image, ImageDraw, ImageFont

    n, r = adversarial.shape[:2]
    h, w = original.shape[-2] * scale, original.shape[-1] * scale
    gap, header, caption = 6, 22, 34
    font = ImageFont.load_default()
    grid = Image.new("RGB", (gap + (r + 1) * (w + gap), header + n * (h + caption + gap)), "white")
    draw = ImageDraw.Draw(grid)

    def name(c: int) -> str:
        return class_names[c] if class_names is not None and c < len(class_names) else f"class {c}"

    titles = ["original"] + [f"{NORMS[norm].title} radius {float(v):.3g}" for v in radii]
    for col, title in enumerate(titles):
        draw.text((gap + col * (w + gap), 5), title, fill="black", font=font)
    for row in range(n):
        top = header + row * (h + caption + gap)
        tiles = [original[row]] + [adversarial[row, j] for j in range(r)]
        t = int(targets[row])
        confidences = [float(original_confidence[row])] + [float(confidence[row, j]) for j in range(r)]
        for col, (tile, p) in enumerate(zip(tiles, confidences)):
            left = gap + col * (w + gap)
            grid.paste(_to_pil(tile).resize((w, h), Image.NEAREST), (left, top))
            if col == 0:
                draw.text((left, top + h + 3), f"{name(int(labels[row]))} -> {name(t)}", fill="black", font=font)
            draw.text((left, top + h + 17), f"p({name(t)}) = {p:.3f}", fill=(170, 0, 0), font=font)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, format="PNG")  # by name, not by suffix: callers may write to a temporary file


def _to_pil(image: torch.Tensor):
    """(3, H, W) float in [0,1] -> PIL RGB image."""
    from PIL import Image

    pixels = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy(), "RGB")
