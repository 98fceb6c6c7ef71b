"""Format adherence: the prediction ends its solution with '#### <number>'."""
from harness.eval.answers import FINAL
# imported as a module: evaluate.load takes the first Metric class in this namespace
from harness.eval.metrics import base


class AnswerFormat(base.HarnessMetric):
    """Share of predictions that state their final answer as '#### <number>'."""

    def score_examples(self, predictions, references):
        return [float(bool(FINAL.search(p))) for p in predictions]
