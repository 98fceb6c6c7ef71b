"""What every shipped metric adds to `evaluate.Metric`: per-example scores for paired tests."""
from __future__ import annotations

import datasets
import evaluate

STRINGS = datasets.Features({"predictions": datasets.Value("string"),
                             "references": datasets.Value("string")})
PAIR_SCORES = datasets.Features({"chosen_scores": datasets.Value("float64"),
                                 "rejected_scores": datasets.Value("float64")})
#: a benchmark's documents (harness.eval.lm_eval_tasks); their scores come as `sample_scores`, an
#: argument
DOC_IDS = datasets.Features({"doc_ids": datasets.Value("int64")})


class HarnessMetric(evaluate.Metric):
    """`compute(..., per_example=True)` adds the list of per-example scores under 'scores'."""
    features = STRINGS
    higher_is_better = True
    #: per-example scores are 0/1 (McNemar) rather than continuous (Wilcoxon)
    binary = True
    #: the value is computed over the whole corpus, not a mean of per-example scores
    #: (tested by paired bootstrap)
    corpus = False

    def _info(self):
        return evaluate.MetricInfo(description=(self.__doc__ or "").strip(), citation="",
                                   inputs_description="", features=self.features)

    def score_examples(self, **columns) -> list[float]:
        raise NotImplementedError

    def aggregate(self, scores: list[float], **columns) -> float:
        return sum(scores) / len(scores) if scores else float("nan")

    def _compute(self, per_example: bool = False, **columns):
        """Extra keyword arguments (normalization options, labels...) reach both methods."""
        scores = self.score_examples(**columns)
        out = {self.name: self.aggregate(scores, **columns)}
        if per_example:
            out["scores"] = scores
        return out
