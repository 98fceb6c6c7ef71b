"""Preference margin: chosen score minus rejected score."""
# imported as a module: evaluate.load takes the first Metric class in this namespace
from harness.eval.metrics import base


class ScoreMargin(base.HarnessMetric):
    """Mean of chosen minus rejected score over the pairs (reward units, or nats of
    log-probability under a causal LM)."""
    features = base.PAIR_SCORES
    binary = False

    def score_examples(self, chosen_scores, rejected_scores):
        return [c - r for c, r in zip(chosen_scores, rejected_scores)]
