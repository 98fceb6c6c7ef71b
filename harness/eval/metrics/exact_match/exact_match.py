"""Exact match with normalization options."""
# imported as a module: evaluate.load takes the first Metric class in this namespace
from harness.eval import textnorm
from harness.eval.metrics import base


class ExactMatch(base.HarnessMetric):
    """Share of predictions equal to their reference after normalization: `ignore_case`
    (default true), `ignore_punctuation` (default false), or `normalize: squad` (lower case,
    no punctuation or articles, single spaces)."""

    def score_examples(self, predictions, references, ignore_case=True, ignore_punctuation=False,
                       normalize="plain"):
        norm = lambda t: textnorm.normalize(t, ignore_case=ignore_case,  # noqa: E731
                                            ignore_punctuation=ignore_punctuation, mode=normalize)
        return [float(norm(p) == norm(r)) for p, r in zip(predictions, references)]
