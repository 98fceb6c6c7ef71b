"""Perplexity of reference continuations, from NLL the evaluator measured under the model."""
import math

import datasets

# imported as a module: evaluate.load takes the first Metric class in this namespace
from harness.eval.metrics import base


class Perplexity(base.HarnessMetric):
    """exp(total NLL / total tokens) over the reference continuations; inputs are each example's
    summed negative log-likelihood (nats) and its token count. Per-example: exp(nll / tokens)."""
    corpus = True
    features = datasets.Features({"nll": datasets.Value("float64"), "tokens": datasets.Value("int64")})
    higher_is_better = False
    binary = False

    def score_examples(self, nll, tokens):
        return [math.exp(n / max(t, 1)) for n, t in zip(nll, tokens)]

    def aggregate(self, scores, nll, tokens):
        return math.exp(sum(nll) / max(sum(tokens), 1))
