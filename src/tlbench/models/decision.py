"""Two-class decisions: the positive class where its probability reaches a threshold (chosen on validation
by Youden's J, or fixed by data.threshold), and the words that say so wherever an answer is shown."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchmetrics.classification import BinaryROC


def decide(probabilities: torch.Tensor, threshold: float | None, positive_class: int = 1) -> torch.Tensor:
    """Each row's class: the most probable, or (two classes) positive where its probability ≥ `threshold`."""
    if threshold is None or probabilities.shape[1] != 2:
        return probabilities.argmax(dim=1)
    positive = probabilities[:, positive_class] >= threshold
    return torch.where(positive, positive_class, 1 - positive_class)


@dataclass(frozen=True)
class BinaryDecision:
    """How a two-class model names its answer, shown wherever an answer is (predict, figures, results.json,
    export): the positive class where its probability reaches the threshold, else the other one."""

    threshold: float
    positive: str
    negative: str
    positive_class: int  # its index in the model's classes
    rule: str | float  # data.threshold: "youden" (chosen on validation) or a fixed probability

    @property
    def origin(self) -> str:
        if self.rule == "youden":
            return "chosen on the validation split by Youden's J at this checkpoint's epoch"
        return "fixed by data.threshold"

    @property
    def text(self) -> str:
        rule = f"{self.positive} when P({self.positive}) ≥ {self.threshold:.3f}, else {self.negative}"
        return f"{rule} (threshold {self.origin})"

    def predict(self, probabilities: torch.Tensor) -> torch.Tensor:
        return decide(probabilities, self.threshold, self.positive_class)

    def explain(self, probabilities: torch.Tensor) -> str:
        """One image's answer and why, from its two class probabilities."""
        p = float(probabilities[self.positive_class])
        answer, side = (self.positive, "≥") if p >= self.threshold else (self.negative, "<")
        return f"{answer} (P({self.positive}) {p:.1%} {side} threshold {self.threshold:.1%}, {self.origin})"


def youden_threshold(roc: BinaryROC) -> float:
    """The threshold that maximises Youden's J = sensitivity + specificity - 1 on the collected ROC (the
    highest such threshold on a tie); 0.5 where no threshold beats chance (e.g. a split with one class)."""
    fpr, tpr, thresholds = roc.compute()
    j = torch.nan_to_num(tpr - fpr, nan=-1.0)
    if j.max() <= 0:
        return 0.5
    return float(thresholds[int(j.argmax())].clamp(0.0, 1.0))


def check_threshold_rule(rule: str | float) -> str | float:
    """data.threshold: `youden` or a probability."""
    if rule == "youden":
        return rule
    try:
        value = float(rule)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"data.threshold must be youden or a probability between 0 and 1, got {rule!r}")
    return value
