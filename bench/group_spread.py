"""Before spending GRPO's steps on a pool of prompts: how often would a group of completions
disagree on them? GRPO learns only from a group whose rewards differ (TRL logs the share of
groups rewarded alike as `frac_reward_zero_std`); a pool the starting model never or always
solves gives it nothing, however many distinct prompts it has.

For the first N prompts of a file, read as GRPO reads `data.train` (any prompt format; shuffled
with the recipe's seed), G completions each, sampled as GRPO samples them (the recipe's
temperature, top-p and max_completion_length; the chat template; no top-k cut), scored by the
`math_answer` reward; it prints the per-completion accuracy and the share of groups all wrong,
mixed and all right.

    python bench/group_spread.py --prompts goldensets/math.jsonl --n 48 \\
        [--init RUN_OR_FOLDER | --work W] [--recipe recipes/grpo_math.yaml] [--set K=V ...]

--init: what model.init_from takes (an MLflow run id, in the recipe's tracking store or
--set tracking.uri=..., or an adapter or model folder); --work: a bench/quality.py folder, whose
SFT trial it starts from, as bench/grpo_arms.py does. Neither: the recipe's model.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def spread(accuracies: list[float]) -> dict[str, float]:
    n = len(accuracies)
    return {"accuracy": sum(accuracies) / n,
            "all_wrong": sum(a == 0 for a in accuracies) / n,
            "mixed": sum(0 < a < 1 for a in accuracies) / n,
            "all_right": sum(a == 1 for a in accuracies) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", required=True, help="GRPO's data.train: a file of prompts "
                    "with reference answers (question/answer rows, say)")
    ap.add_argument("--n", type=int, default=48, help="prompts taken (after the shuffle)")
    ap.add_argument("--generations", type=int, default=8, help="completions a prompt (G)")
    ap.add_argument("--batch", type=int, default=8, help="prompts decoded together")
    ap.add_argument("--recipe", default="recipes/grpo_math.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="K=V")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--init", help="a run id or an adapter or model folder to start from")
    where.add_argument("--work", help="a bench/quality.py folder: its SFT trial")
    args = ap.parse_args()
    import torch

    from harness.data import trainset
    from harness import models
    from harness.pipeline import prepared
    from harness.config import recipe
    from harness.train import rewards
    from harness.tracking import tracker
    sets = [f"data.train={Path(args.prompts).resolve()}", *args.set]
    if args.work:
        work = Path(args.work).resolve()
        run_id = json.loads((work / "state.json").read_text())["sft"]["run_id"]
        sets += [f"model.init_from={run_id}", f"tracking.uri=sqlite:///{work}/mlflow.db",
                 f"output_dir={work}/outputs"]
    elif args.init:
        folder = Path(args.init).expanduser()
        sets.append(f"model.init_from={folder.resolve() if folder.is_dir() else args.init}")
    rec = recipe.load(args.recipe, sets)
    by_run = rec.model.init_from and not Path(rec.model.init_from).is_dir()
    init = prepared.resolve_init(rec, tracker.Tracker(rec) if by_run else None)
    plan = models.device_plan(rec.model)
    tok = models.load_tokenizer(rec.model)
    tok.padding_side = "left"  # decoder-only batches are padded on the left
    adapter = init if init and models.is_adapter(init) else None
    model = models.load_model(rec.model, plan, path=None if adapter else init,
                              adapter=adapter).eval()
    (reward,), _, _ = rewards.build([recipe.RewardSpec(name="math_answer")])
    rows = trainset.load_train(rec.data, rec.seed, kind="prompt")[0]
    rows, g, t = rows.select(range(min(args.n, len(rows)))), args.generations, rec.trainer
    torch.manual_seed(0)
    accuracies, start = [], time.perf_counter()
    for i in range(0, len(rows), args.batch):
        batch = rows.select(range(i, min(i + args.batch, len(rows))))
        texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                 for p in batch["prompt"]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc.to(plan.device), do_sample=True, top_k=0,
                                 temperature=t.get("temperature", 1.0), top_p=t.get("top_p", 1.0),
                                 max_new_tokens=t.get("max_completion_length", 256),
                                 num_return_sequences=g, pad_token_id=tok.pad_token_id)
        done = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        scores = reward(None, done, answer=[a for a in batch["answer"] for _ in range(g)])
        accuracies += [sum(scores[j * g:(j + 1) * g]) / g for j in range(len(batch))]
    s = spread(accuracies)
    print(f"{args.prompts}: {len(accuracies)} prompts x {g} completions from "
          f"{init or rec.model.name}: accuracy {s['accuracy']:.3f}; groups all wrong "
          f"{s['all_wrong']:.3f}, mixed {s['mixed']:.3f}, all right {s['all_right']:.3f} "
          f"({time.perf_counter() - start:.0f} s, {plan.device})", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
