"""Pictures of a run and of an evaluation, drawn with matplotlib (the optional extra `plots`):

- `curves.png` in a run directory, redrawn after every epoch from metrics.jsonl: the loss (per
  epoch, and per --log-every interval when logged), the accuracies, the out-distribution
  confidence and the learning rate;
- `ood.png` beside eval.json: per OOD set the ROC curve (in-distribution test images against the
  set, scored by max confidence) and the histograms of max confidence, clean and worst case;
- `robust_vs_radius.png` beside it when eval measured several radii (--radii): robust accuracy
  against the radius.

Without matplotlib nothing is drawn and `missing` says so in one line. Files are written
atomically (files.py); figures are made without pyplot, so no display or global state is used.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .files import atomic_write

CURVES = "curves.png"
OOD_PICTURE = "ood.png"
RADIUS_CURVE = "robust_vs_radius.png"


def missing(what: str) -> str | None:
    """None when matplotlib is importable, else the line that says `what` is not drawn."""
    if importlib.util.find_spec("matplotlib") is not None:
        return None
    return f'note: no {what}: matplotlib is not installed (pip install "ratio-fast[plots]")'


def _save(figure, path: Path) -> None:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=80))


def training_curves(rows: list[dict], path: Path) -> None:
    """curves.png of a run's metrics rows (epoch rows; step rows, when there are any, for the loss)."""
    from matplotlib.figure import Figure

    epochs = [r for r in rows if r.get("kind", "epoch") == "epoch"]
    steps = [r for r in rows if r.get("kind") == "step"]
    figure = Figure(figsize=(10, 6.5), layout="constrained")
    loss, accuracy, confidence, lr = figure.subplots(2, 2).flat
    if steps:
        loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], color="0.6", lw=1, label="per interval")
    loss.plot([r["step"] for r in epochs], [r["loss"] for r in epochs], "o-", label="per epoch")
    for key, label in (("clean_acc", "train clean"), ("adv_acc", "train adversarial"),
                       ("test_clean_acc", "test clean"), ("test_robust_acc", "test robust")):
        points = [(r["step"], r[key]) for r in epochs if key in r]
        if points:
            accuracy.plot(*zip(*points), "o-", label=label)
    points = [(r["step"], r["out_conf"]) for r in epochs if "out_conf" in r]
    if points:
        confidence.plot(*zip(*points), "o-", color="C3")
    source = steps or epochs
    lr.plot([r["step"] for r in source], [r["lr"] for r in source], color="C2")
    for axes, title in ((loss, "loss"), (accuracy, "accuracy"), (confidence, "mean max confidence, out-distribution"),
                        (lr, "learning rate")):
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
    loss.legend()
    accuracy.legend()
    accuracy.set_ylim(0, 1)
    _save(figure, path)


def ood_pictures(in_conf, sets: dict[str, dict], path: Path) -> None:
    """ood.png: one row per OOD set, its ROC curve and its confidence histograms. sets: {name:
    {"clean": confidences, "worst": confidences or absent}}; in_conf: the test images' confidences."""
    import numpy as np
    from matplotlib.figure import Figure

    in_conf = np.asarray(in_conf, dtype=np.float64)
    figure = Figure(figsize=(10, 3.2 * len(sets)), layout="constrained")
    grid = figure.subplots(len(sets), 2, squeeze=False)
    bins = np.linspace(0, 1, 41)
    for (name, scores), (roc, histogram) in zip(sets.items(), grid):
        histogram.hist(in_conf, bins=bins, alpha=0.5, density=True, label="in-distribution")
        for kind, style in (("clean", "C1"), ("worst", "C3")):
            if scores.get(kind) is None:
                continue
            out = np.asarray(scores[kind], dtype=np.float64)
            fpr, tpr = roc_curve(in_conf, out)
            area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
            roc.plot(fpr, tpr, color=style, label=f"{kind} (AUROC {area:.3f})")
            histogram.hist(out, bins=bins, alpha=0.5, density=True, color=style, label=f"{name}, {kind}")
        roc.plot([0, 1], [0, 1], ":", color="0.5")
        roc.set(title=f"ROC: test set vs {name}", xlabel="false positive rate (OOD taken as in)",
                ylabel="true positive rate")
        histogram.set(title="max confidence", xlabel="max softmax confidence", ylabel="density")
        roc.legend(loc="lower right")
        histogram.legend(loc="upper center")
    _save(figure, path)


def radius_curve(curve: dict, clean_accuracy: float, path: Path) -> None:
    """robust_vs_radius.png of eval.json's robust_curve: accuracy at radius 0 (clean) and at each radius."""
    from matplotlib.figure import Figure

    from .choices import NORMS

    radii, accuracies = zip(*([[0.0, clean_accuracy]] + curve["points"]))
    figure = Figure(figsize=(5.5, 4), layout="constrained")
    axes = figure.subplots()
    axes.plot(radii, [100 * a for a in accuracies], "o-")
    axes.set(title=f"robust accuracy ({' + '.join(curve['attacks'])}, {curve['samples']} images)",
             xlabel=f"{NORMS[curve['norm']].title} radius", ylabel="accuracy (%)", ylim=(0, 100))
    axes.grid(alpha=0.3)
    _save(figure, path)


def roc_curve(positive, negative):
    """(false positive rates, true positive rates) of scoring `positive` above `negative`, every
    threshold (ties at a threshold taken together)."""
    import numpy as np

    scores = np.concatenate([positive, negative])
    is_positive = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))])
    order = np.argsort(-scores, kind="stable")
    scores, is_positive = scores[order], is_positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tpr = np.r_[0, np.cumsum(is_positive)[last_of_tie] / max(len(positive), 1)]
    fpr = np.r_[0, np.cumsum(1 - is_positive)[last_of_tie] / max(len(negative), 1)]
    return fpr, tpr
