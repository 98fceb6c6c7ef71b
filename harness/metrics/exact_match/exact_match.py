"""Exact match after stripping whitespace and lower-casing."""
# imported as a module: evaluate.load takes the first Metric class in this namespace
from harness.metrics import base


class ExactMatch(base.HarnessMetric):
    """Share of predictions equal to their reference, ignoring case and surrounding space."""

    def score_examples(self, predictions, references):
        return [float(p.strip().lower() == r.strip().lower()) for p, r in zip(predictions, references)]
