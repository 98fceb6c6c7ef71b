"""Classification accuracy of free-text answers."""
# imported as a module: evaluate.load takes the first Metric class in this namespace
from harness.eval import textnorm
from harness.eval.metrics import base


class Accuracy(base.HarnessMetric):
    """Share of predictions whose first named label (of `labels`) is the reference label."""

    def score_examples(self, predictions, references, labels=()):
        return [float(textnorm.first_label(p, list(labels)) == r)
                for p, r in zip(predictions, references)]
