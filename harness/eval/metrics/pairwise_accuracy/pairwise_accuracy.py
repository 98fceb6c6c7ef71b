"""Preference accuracy: the chosen response scores above the rejected one."""
# imported as a module: evaluate.load takes the first Metric class in this namespace
from harness.eval.metrics import base


class PairwiseAccuracy(base.HarnessMetric):
    """Share of pairs whose chosen response outscores the rejected one (reward-model score, or
    summed log-probability under a causal LM)."""
    features = base.PAIR_SCORES

    def score_examples(self, chosen_scores, rejected_scores):
        return [float(c > r) for c, r in zip(chosen_scores, rejected_scores)]
