"""Math accuracy: the prediction's final number equals the reference's."""
import math

from harness.eval.answers import extract_number
# imported as a module: evaluate.load takes the first Metric class in this namespace
from harness.eval.metrics import base


class NumericAccuracy(base.HarnessMetric):
    """Share of predictions whose final number ('#### N', else the last number) equals the
    reference's final number."""

    def score_examples(self, predictions, references):
        out = []
        for p, r in zip(predictions, references):
            pv, rv = extract_number(p), extract_number(r)
            out.append(float(pv is not None and rv is not None and math.isclose(pv, rv, abs_tol=1e-6)))
        return out
