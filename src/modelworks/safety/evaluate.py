"""`modelworks safety eval FILE.jsonl`: how well the classifiers do on labelled rows.

For every head a row has a label for: precision, recall and F1 at the head's operating threshold, the area under
the precision-recall curve (average precision, as sklearn computes it), and the share of benign rows (harmless
in every label they carry) that the policy would flag. XSTest rows (`unsafe` 0/1) are scored as the default
policy sees them: flagged when any harm category reaches medium or the prompt is a jailbreak. By default only the
held-out fifth of the rows is used (`labels.is_holdout`), so the figures are for text training never saw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modelworks.safety import labels
from modelworks.safety.classifier import HARM_HEADS, TextSafetyModel, default_model


def average_precision(y: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (sklearn's definition: sum over thresholds of precision x recall step)."""
    order = np.argsort(-scores, kind="mergesort")
    y, scores = y[order], scores[order]
    distinct = np.where(np.diff(scores))[0]
    ends = np.r_[distinct, len(y) - 1]
    tp = np.cumsum(y)[ends]
    fp = (1 + ends) - tp
    if tp[-1] == 0:
        return float("nan")
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0, recall]) * precision))


def policy_flags(values: dict[str, float], thresholds: dict[str, float]) -> bool:
    harm = any(values[h] >= thresholds[h] for h in HARM_HEADS)
    return harm or values.get("jailbreak", 0.0) >= thresholds.get("jailbreak", 1.0)


def evaluate(path: Path, model: TextSafetyModel | None = None, holdout_only: bool = True) -> dict:
    model = model or default_model()
    rows = [r for r in labels.read(path) if not holdout_only or labels.is_holdout(r["text"])]
    scored = [(labels.targets(r), model.score(r["text"]).values, labels.is_benign(r)) for r in rows]
    report: dict = {"file": str(path), "rows": len(rows), "holdout_only": holdout_only, "heads": {}}
    for head in (*model.heads, "unsafe"):
        pairs = [(t[head], (policy_flags(v, model.thresholds) if head == "unsafe" else v[head]))
                 for t, v, _ in scored if t.get(head) is not None]
        if not pairs:
            continue
        y = np.array([p[0] for p in pairs], dtype=np.float64)
        s = np.array([float(p[1]) for p in pairs])
        flagged = s >= (0.5 if head == "unsafe" else model.thresholds[head])
        tp = int(np.sum(flagged & (y == 1)))
        fp = int(np.sum(flagged & (y == 0)))
        fn = int(np.sum(~flagged & (y == 1)))
        precision = tp / (tp + fp) if tp + fp else float("nan")
        recall = tp / (tp + fn) if tp + fn else float("nan")
        f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
        negatives = int(np.sum(y == 0))
        report["heads"][head] = {
            "rows": len(y), "positive": int(y.sum()), "precision": precision, "recall": recall, "f1": f1,
            "auprc": average_precision(y, s) if head != "unsafe" else float("nan"),
            "false_positive_rate": fp / negatives if negatives else float("nan")}
    benign = [v for _, v, b in scored if b]
    report["benign_rows"] = len(benign)
    report["benign_flagged"] = (sum(policy_flags(v, model.thresholds) for v in benign) / len(benign)
                                if benign else float("nan"))
    return report


def format_report(report: dict) -> str:
    lines = [f"{report['file']}: {report['rows']} rows" + (" (the held-out fifth)" if report["holdout_only"] else ""),
             f"{'head':<12}{'rows':>6}{'pos':>6}{'precision':>11}{'recall':>8}{'F1':>7}{'AUPRC':>8}{'FPR':>7}"]
    for head, m in report["heads"].items():
        lines.append(f"{head:<12}{m['rows']:>6}{m['positive']:>6}{m['precision']:>11.3f}{m['recall']:>8.3f}"
                     f"{m['f1']:>7.3f}{m['auprc']:>8.3f}{m['false_positive_rate']:>7.3f}")
    lines.append(f"benign rows flagged by the default policy: {report['benign_flagged']:.3f} "
                 f"of {report['benign_rows']}")
    return "\n".join(lines)
