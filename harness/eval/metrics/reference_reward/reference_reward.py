"""Mean reward a reward model gives the golden set's reference answers."""
import datasets

# imported as a module: evaluate.load takes the first Metric class in this namespace
from harness.eval.metrics import base


class ReferenceReward(base.HarnessMetric):
    """Mean reward of the reference answers (a reward model's view of known-good answers)."""
    features = datasets.Features({"reward_scores": datasets.Value("float64")})
    binary = False

    def score_examples(self, reward_scores):
        return list(reward_scores)
