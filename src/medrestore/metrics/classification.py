"""Binary grading scores (MTMed3D: high-grade vs low-grade glioma; positive = 1 = HGG).

Accuracy, sensitivity (recall of the positive class) and specificity (recall of the negative
class) at a probability threshold (0.5 by default), and AUROC (torchmetrics, threshold-free).
The authors' code reports the first three; AUROC is ours. Labels below 0 (grade unknown) are
left out. A score whose denominator is empty (no positive case for sensitivity, no negative case
for specificity, a single class for AUROC) is NaN rather than a misleading 0 or 1.
"""

from __future__ import annotations

from typing import Any

import torch

from medrestore.errors import MedrestoreError


def classification_metrics(probs_pos: Any, labels: Any, threshold: float = 0.5) -> dict[str, float]:
    """``{"accuracy", "sensitivity", "specificity", "auroc", "n"}`` of the positive-class
    probabilities ``probs_pos`` (``N``) against ``labels`` (``N``, 1 / 0, negative = unknown,
    ignored). ``n`` is the number of cases scored."""
    p = torch.as_tensor(probs_pos).detach().cpu().float().reshape(-1)
    y = torch.as_tensor(labels).detach().cpu().long().reshape(-1)
    if p.shape != y.shape:
        raise MedrestoreError(f"classification_metrics: {p.numel()} probabilities for {y.numel()} labels")
    if not 0.0 < float(threshold) < 1.0:
        raise MedrestoreError(f"classification_metrics: threshold must be in (0, 1), got {threshold}")
    keep = y >= 0
    p, y = p[keep], y[keep]
    if bool((y > 1).any()):
        raise MedrestoreError("classification_metrics: labels must be 0, 1 (or negative for unknown)")
    if p.numel() and (bool(p.isnan().any()) or float(p.min()) < 0 or float(p.max()) > 1):
        raise MedrestoreError("classification_metrics: probs_pos must be probabilities in [0, 1]")
    nan = float("nan")
    n = int(y.numel())
    if n == 0:
        return {"accuracy": nan, "sensitivity": nan, "specificity": nan, "auroc": nan, "n": 0}
    hat = (p >= threshold).long()
    pos, neg = y == 1, y == 0
    tp = int((hat[pos] == 1).sum())
    tn = int((hat[neg] == 0).sum())
    out = {
        "accuracy": (tp + tn) / n,
        "sensitivity": tp / int(pos.sum()) if bool(pos.any()) else nan,
        "specificity": tn / int(neg.sum()) if bool(neg.any()) else nan,
        "auroc": nan,
        "n": n,
    }
    if bool(pos.any()) and bool(neg.any()):
        from torchmetrics.functional.classification import binary_auroc

        out["auroc"] = float(binary_auroc(p, y))
    return out
