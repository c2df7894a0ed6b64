"""Fitting the cascade on the calibration fold (fold 1: rows neither stage was trained on).

Per head, from each calibration row's n-gram logit `zn` and MiniLM logit `ze`:
- the ensemble: p = sigmoid(a * ze + b * zn + c), a small logistic regression (L2-regularised towards a = 1,
  b = 0, c = 0, so a head with few positives stays close to the MiniLM head alone), fitted by Newton's method;
  with fewer than `MIN_POSITIVES` positives b stays 0. p is then a calibrated probability (Platt scaling) and
  the harm categories' severity is floor(8 p): "medium" (4) means more likely harmful than not, on this mix;
- the n-gram-only calibration: p = sigmoid(a' * zn + c'), the score a text gets when it is not escalated;
- the gate: the n-gram logit above which a window goes to MiniLM, the `DEFAULT_QUANTILE` quantile of the
  positives' n-gram logits (`GATE_QUANTILE` for jailbreak, `FEW_QUANTILE` for a head with few positives; never
  below the logit of a featureless text), so that share of positives is decided by the n-gram stage alone. The
  jailbreak gate sits at 12%: at 2% it sent 97% of the windows of a list of everyday instructions to MiniLM (the
  n-gram head cannot tell a long instruction from an attack). The others at 5%: with threats, insults and
  look-alikes in training (n-gram heads with wider positives), 2% (jailbreak 10%) sent 42% of 500-token
  instruction lists to MiniLM, 5% (12%) sends 5%, for held-out jailbreak recall 0.946 -> 0.927 and harmful
  requests caught 0.84 -> 0.79 (XSTest) and 1.00 -> 0.94 (harmful questions) through the cascade. Sexual, violence and self-harm have no gate of their own: every positive of theirs is a `flagged`
  positive, so flagged's gate escalates them, and their own n-gram heads, from a few dozen rows, sent 84% of
  the windows of harmless forum text to MiniLM for nothing (their figures did not move without them);
- the threshold: 0.5 for the harm heads and flagged; for jailbreak and harmful_request, the lowest probability
  that flags at most `BENIGN_FPR` of the benign rows (instruction-like text included), and never below 0.5
  (jailbreak: 0.2%, since attacks are far rarer in real traffic than the 6% of the calibration mix, and a
  long document's windows each get a chance to be taken for one); for
  harmful_request also at most `LOOKALIKE_FPR` of the look-alikes (XSTest's safe prompts in the calibration
  fold: "how do I kill someone in a video game"), the line this head finds hardest.
"""

from __future__ import annotations

import numpy as np

MIN_POSITIVES = 30
GATE_QUANTILE = {"jailbreak": 0.12}   # every other head: DEFAULT_QUANTILE
DEFAULT_QUANTILE = 0.05
GATED_BY_FLAGGED = ("sexual", "violence", "self_harm")  # no gate of their own (None): see below
BENIGN_FPR = {"jailbreak": 0.002, "harmful_request": 0.03}
LOOKALIKE_FPR = 0.10
FEW_QUANTILE = 0.10   # a head with fewer than MIN_POSITIVES positives: its lowest one would set the gate alone
FLOOR_MARGIN = 0.25
PRIOR = 1.0  # L2 strength pulling the ensemble towards the MiniLM head alone


def fit_logistic(x: np.ndarray, y: np.ndarray, prior_mean: np.ndarray, prior: float = PRIOR,
                 iterations: int = 50) -> np.ndarray:
    """Weights (with the intercept last) maximising the log-likelihood minus prior/2 * |w - prior_mean|^2."""
    x1 = np.hstack([x, np.ones((len(x), 1))])
    w = prior_mean.astype(np.float64).copy()
    for _ in range(iterations):
        p = sigmoid(x1 @ w)
        grad = x1.T @ (p - y) + prior * (w - prior_mean)
        hess = (x1 * (p * (1 - p))[:, None]).T @ x1 + prior * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def sigmoid(z):
    return 0.5 * (1 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))  # no overflow for large |z|


def _cut(scores: np.ndarray, share: float) -> float:
    """The lowest score that flags at most `share` of these."""
    ordered = np.sort(scores)
    return float(min(1.0, ordered[int(np.ceil((1 - share) * len(ordered))) - 1] + 1e-6))


def fit(heads: tuple[str, ...], zn: np.ndarray, ze: np.ndarray, targets: list[dict], benign: np.ndarray,
        lookalikes: np.ndarray = np.zeros(0, dtype=np.int64), floor: np.ndarray | None = None,
        zn_any: np.ndarray | None = None) -> dict:
    """`zn`, `ze`: rows x heads logits (of the same window: MiniLM's highest); `targets`: each row's labels;
    `benign`: rows labelled harmless in every way; `lookalikes`: benign rows that read like harmful requests;
    `floor`: each head's n-gram logit of a text without features (its bias): no gate goes below it, or empty text
    and emoji would escalate; `zn_any`: each row's highest n-gram logit of any window (default `zn`), what the
    gates and the n-gram-only probability are fitted on."""
    zn_any = zn if zn_any is None else zn_any
    out = {"heads": {}}
    for h, head in enumerate(heads):
        idx = np.array([i for i, t in enumerate(targets) if head in t], dtype=np.int64)
        y = np.array([targets[i][head] for i in idx], dtype=np.float64)
        positives = int(y.sum())
        both = positives >= MIN_POSITIVES and len(y) - positives >= MIN_POSITIVES
        if both:
            w = fit_logistic(np.c_[ze[idx, h], zn[idx, h]], y, np.array([1.0, 0.0, 0.0]))
            a, b, c = w
        else:
            a, c = fit_logistic(ze[idx, h][:, None], y, np.array([1.0, 0.0]))
            b = 0.0
        an, cn = fit_logistic(zn_any[idx, h][:, None], y, np.array([1.0, 0.0]))
        quantile = GATE_QUANTILE.get(head, DEFAULT_QUANTILE) if positives >= MIN_POSITIVES else FEW_QUANTILE
        gate = float(np.quantile(zn_any[idx[y == 1], h], quantile)) if positives else 0.0
        if floor is not None:
            gate = max(gate, float(floor[h]) + FLOOR_MARGIN)
        if head in GATED_BY_FLAGGED and "flagged" in heads:
            gate = None
        threshold = 0.5
        if head in BENIGN_FPR and len(benign):
            threshold = max(0.5, _cut(sigmoid(a * ze[benign, h] + b * zn[benign, h] + c), BENIGN_FPR[head]))
        if head == "harmful_request" and len(lookalikes):
            threshold = max(threshold, _cut(sigmoid(a * ze[lookalikes, h] + b * zn[lookalikes, h] + c), LOOKALIKE_FPR))
        out["heads"][head] = {"ensemble": [float(a), float(b), float(c)], "ngram": [float(an), float(cn)],
                              "gate": gate, "threshold": threshold, "rows": int(len(y)), "positive": positives}
    return out
