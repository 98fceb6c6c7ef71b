"""The reference answer appears in the prediction (for chatty short answers)."""
# imported as a module: evaluate.load takes the first Metric class in this namespace
from harness.eval import textnorm
from harness.eval.metrics import base


class ContainsAnswer(base.HarnessMetric):
    """Share of predictions that contain the normalized reference as whole words ('The capital
    is Paris.' contains 'Paris')."""

    def score_examples(self, predictions, references):
        out = []
        for p, r in zip(predictions, references):
            p, r = f" {textnorm.squad(p)} ", f" {textnorm.squad(r)} "
            out.append(float(r.strip() != "" and r in p))
        return out
