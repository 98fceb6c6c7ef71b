"""Compiled scoring with float32 matmuls on TF32 (what `scoring.compiled_precision` sets)
against IEEE float32, on a GPU: each way in a process of its own (a compile is cached per
process), then the greedy agreement of the outputs and each metric both ways, and the warnings
each way printed (inductor warns when it compiles float32 matmuls with TF32 off).

    python bench/tf32.py --way ieee --out a.json && python bench/tf32.py --way tf32 --out b.json
    python bench/tf32.py --compare a.json b.json
        [--model embedded:smollm2-135m-instruct | --config DIR]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import warnings


def score(args) -> None:
    import torch

    from common import scoring_model

    from harness.eval import scoring, goldensets
    model, tok, _ = scoring_model(args.model, args.config)
    sets = [goldensets.load(p) for p in args.goldensets]
    torch.set_float32_matmul_precision("highest")  # torch's default, IEEE
    if args.way == "ieee":  # the harness's choice left out: the precision as it was
        scoring.compiled_precision = contextlib.nullcontext
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        res = scoring.evaluate_model(model, tok, sets, 256, None, compiled=True)
    tf32 = sorted({str(w.message)[:100] for w in seen if "TensorFloat32" in str(w.message)})
    json.dump({"way": args.way, "tf32_warnings": tf32,
               "outputs": {n: [e["prediction"] for e in r.examples] for n, r in res.items()},
               "metrics": {n: r.metrics for n, r in res.items()}}, open(args.out, "w"))
    print(f"{args.way}: TF32 warnings {tf32}", flush=True)


def compare(a: str, b: str) -> None:
    x, y = json.load(open(a)), json.load(open(b))
    for n in x["outputs"]:
        p, q = x["outputs"][n], y["outputs"][n]
        same = sum(s == t for s, t in zip(p, q))
        print(f"{n}: greedy agreement {same}/{len(p)}; {x['way']} {x['metrics'][n]}; "
              f"{y['way']} {y['metrics'][n]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--config", help="a config folder: random weights of that shape instead")
    ap.add_argument("--goldensets", nargs="+", default=["builtin:math",
                                                        "builtin:general_knowledge"])
    ap.add_argument("--way", choices=["ieee", "tf32"])
    ap.add_argument("--out")
    ap.add_argument("--compare", nargs=2)
    args = ap.parse_args()
    if args.compare:
        compare(*args.compare)
    else:
        score(args)


if __name__ == "__main__":
    main()
