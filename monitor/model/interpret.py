"""What a trained model gets wrong: confusion matrix, top losses and metrics on the validation set.

fastai's ``ClassificationInterpretation`` runs the learner over the validation set once;
from its probabilities, targets and losses this module writes, into the bundle folder:

* ``confusion_matrix.png`` - actual vs predicted counts (fastai's plot);
* ``top_losses.png`` - the highest-loss validation images titled
  predicted/actual/loss/probability (fastai's plot), the photos to look at first when
  cleaning the data;
* ``metrics.json`` - accuracy, error rate, per-class precision/recall/support, the
  confusion matrix as numbers and the top-loss files by name.

Plots use matplotlib's Agg backend (no display needed). fastai is imported inside the
functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

TOP_LOSSES = 9


def classification_metrics(probabilities: np.ndarray, targets: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Accuracy, error rate and per-class precision/recall from predicted probabilities.

    Args:
        probabilities: (N, C) class probabilities.
        targets: (N,) true class indices.
        labels: the C class names.

    Returns:
        {"accuracy", "error_rate", "valid_images", "per_class": {label: {precision, recall,
        support}}, "confusion_matrix": {"labels", "rows" (actual) x columns (predicted)}}.
        Precision of a class never predicted is reported as None, not 0.
    """
    predicted = np.asarray(probabilities).argmax(axis=1)
    targets = np.asarray(targets).astype(int)
    count = len(labels)
    matrix = np.zeros((count, count), dtype=int)
    np.add.at(matrix, (targets, predicted), 1)
    total = int(matrix.sum())
    correct = int(np.trace(matrix))
    per_class = {}
    for index, label in enumerate(labels):
        predicted_as = int(matrix[:, index].sum())
        actual = int(matrix[index, :].sum())
        hits = int(matrix[index, index])
        per_class[label] = {
            "precision": round(hits / predicted_as, 4) if predicted_as else None,
            "recall": round(hits / actual, 4) if actual else None,
            "support": actual,
        }
    accuracy = correct / total if total else 0.0
    return {
        "accuracy": round(accuracy, 4),
        "error_rate": round(1.0 - accuracy, 4),
        "valid_images": total,
        "per_class": per_class,
        "confusion_matrix": {"labels": list(labels), "rows": matrix.tolist()},
    }


def write_reports(learn: Any, out_dir: Path, *, root: Path | None = None, top_k: int = TOP_LOSSES) -> dict[str, Any]:
    """Write confusion_matrix.png, top_losses.png and metrics.json for a trained learner.

    Args:
        learn: a fastai Learner with a validation set.
        out_dir: where to write the three files.
        root: the data folder, to name top-loss files relative to it.
        top_k: how many top losses to plot and list.

    Returns:
        The metrics written to metrics.json.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must be chosen before pyplot is imported
    import matplotlib.pyplot as plt

    from monitor.model.train import import_fastai

    import_fastai()
    from fastai.interpret import ClassificationInterpretation

    out_dir = Path(out_dir)
    labels = [str(v) for v in learn.dls.vocab]
    dl = learn.dls.valid.new(shuffle=False, drop_last=False)
    with learn.no_bar():
        # One pass gives probabilities, targets and losses; the interpretation reuses the losses.
        preds, targs, all_losses = learn.get_preds(dl=dl, with_loss=True)
        interp = ClassificationInterpretation(learn, dl, all_losses)
        probabilities = preds.float().numpy()
        targets = targs.numpy()
        metrics = classification_metrics(probabilities, targets, labels)

        interp.plot_confusion_matrix(figsize=(6, 6), dpi=100)
        plt.gcf().savefig(out_dir / "confusion_matrix.png", bbox_inches="tight")
        plt.close("all")

        k = min(top_k, len(targets))
        losses, indices = interp.top_losses(k)
        interp.plot_top_losses(k, nrows=int(np.ceil(np.sqrt(k))), figsize=(9, 9))
        plt.gcf().savefig(out_dir / "top_losses.png", bbox_inches="tight")
        plt.close("all")

    items = list(getattr(dl, "items", []))
    top = []
    for loss, index in zip(losses.tolist(), indices.tolist(), strict=True):
        row = probabilities[index]
        item = Path(items[index]) if index < len(items) else None
        name = str(item.relative_to(root)) if item is not None and root is not None else (str(item) if item else str(index))
        top.append({
            "file": name,
            "actual": labels[int(targets[index])],
            "predicted": labels[int(row.argmax())],
            "loss": round(float(loss), 4),
            "probability": round(float(row.max()), 4),
        })
    metrics["top_losses"] = top
    # The validation photos by name, so anyone can re-check the numbers on the same split.
    metrics["valid_files"] = [str(Path(i).relative_to(root)) if root is not None else str(i) for i in items]
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics
