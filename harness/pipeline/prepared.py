"""What a command loads once and every trial of a sweep shares (`Prepared`): the recipe's checks,
the model's path and tokenizer, the golden sets, the training rows, the decoding choice, and the
starting model's scores. Built once, so a sweep loads and scores the base model once."""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

from harness.data import heldrows, trainset
from harness.eval import goldensets, objective, scoring
from harness import models
from harness.train import assistant_loss, rewards, trainers
from harness.config import shipped
from harness.core import context
from harness.core.errors import HarnessError, phase, say
from harness.config.recipe import ModelSpec, Recipe


@dataclass
class Prepared:
    """What every trial of a sweep shares: resolved model, tokenizer, data, golden sets, base
    scores. Built once, so a sweep loads and scores the base model once."""
    recipe: Recipe
    task: str  # causal-lm or seq-cls, from the trainer kind
    plan: models.DevicePlan
    model_path: str  # the base model (or init_from's full model)
    tok: object
    goldens: list
    init_adapter: str | None = None  # init_from's adapter, merged into the base
    train_ds: object = None
    eval_ds: object = None
    data_info: dict = field(default_factory=dict)
    before: dict = field(default_factory=dict)  # golden set -> SetResult
    base: dict = field(default_factory=dict)  # the original base, when init_from is set
    compiled: bool = False  # golden sets decoded compiled (scoring.compiled_decoding)
    # GRPO's reward models: reward index -> (base folder, adapter folder or None, device plan)
    reward_models: dict = field(default_factory=dict)
    held: heldrows.HeldRows | None = None  # eval.from_train's rows, left out of all training
    # what each trial's trainer leaves the next: the rows it prepared, the varlen kernel's ways
    handover: trainers.Handover = field(default_factory=trainers.Handover)

    def load_model(self, adapter: bool = True):
        """A fresh copy of the starting model (the base, or the base with init_from merged)."""
        with context.timed("model_load"):
            return models.load_model(self.recipe.model, self.plan, self.model_path, self.task,
                                     self.init_adapter if adapter else None)


def check(recipe: Recipe) -> list:
    """Everything `harness validate` checks without loading a model: schema (done by load),
    the TRL fields, the names of built-in data and embedded models, golden-set manifests and
    the objective."""
    trainers.check_trainer_fields(recipe)
    if recipe.data.train.startswith("builtin:"):
        trainset.BUILTIN_DATA.get(recipe.data.train, file=recipe.source, key="data.train")
    if recipe.model.name.startswith("embedded:"):
        models.EMBEDDED.get(recipe.model.name.split(":", 1)[1], file=recipe.source,
                            key="model.name")
    for i, reward in enumerate(recipe.rewards):
        rewards.REWARDS.get(reward.name, file=recipe.source, key=f"rewards.{i}.name")
    task = trainers.kind(recipe).task
    manifests = []
    for i, path in enumerate(recipe.all_goldensets):
        key = f"eval.goldensets.{i}" if i < len(recipe.eval.goldensets) else \
            "eval.forgetting_guard"
        try:
            found = shipped.locate(path, "goldensets")
        except HarnessError as e:
            raise HarnessError(e.message, file=recipe.source, key=key) from None
        if found is None:
            raise HarnessError(f"golden-set manifest {path!r} not found", file=recipe.source,
                               key=key)
        manifests.append(goldensets.load_manifest(found))
        scoring.check_fit(manifests[-1], found)
    own = own_manifest(recipe, manifests)
    keys = [f"{m.name}/{metric}" for m in manifests + ([own] if own else [])
            for metric in scoring.metric_names(m, task)]
    objective.check(recipe, keys)
    if recipe.eval.benchmarks:
        from harness.eval import lm_eval_tasks
        for i, b in enumerate(recipe.eval.benchmarks):
            lm_eval_tasks.check(b, recipe.source, f"eval.benchmarks.{i}")
    if recipe.sweep.space and not _sweep_file(recipe):
        raise HarnessError(f"sweep file {recipe.sweep.space!r} not found", file=recipe.source,
                           key="sweep.space")
    return manifests


def own_manifest(recipe: Recipe, manifests: list) -> goldensets.Manifest | None:
    """The manifest of eval.from_train's golden set (its rows come with the data), checked:
    a supervised method's rows, a name no other set has, metrics that fit a generation set."""
    spec = recipe.eval.from_train
    if spec is None:
        return None
    if trainers.kind(recipe).data_kind != "supervised":
        raise HarnessError(f"a golden set cut from the training data needs prompt/answer rows; "
                           f"method {recipe.method} trains on "
                           f"{trainers.kind(recipe).data_kind} rows", file=recipe.source,
                           key="eval.from_train")
    name = spec.set_name(recipe.data.train)
    if name in {m.name for m in manifests}:
        raise HarnessError(f"golden set {name!r} exists already: name this one "
                           "eval.from_train.name", file=recipe.source, key="eval.from_train.name")
    for i, metric in enumerate(spec.metrics):
        from harness.eval import metrics
        metrics.check(metric, file=recipe.source, key=f"eval.from_train.metrics.{i}")
    m = goldensets.from_train(name, recipe.data.train, [], [], spec.metrics,
                              spec.max_new_tokens).manifest
    try:
        scoring.check_fit(m, recipe.source)
    except HarnessError as e:
        raise HarnessError(e.message, file=recipe.source, key="eval.from_train.metrics") from None
    return m


def sizings(recipe: Recipe, manifests: list) -> list[objective.Sizing | str]:
    """What lift each golden set can detect (objective.Sizing), stated by `harness validate`
    before any GPU time: the objective's set in a sweep by its held-out part (what the report
    estimates the best trial on); a line instead where the size is known only once loaded."""
    from harness.data import heldrows
    sized = [(m.name, m.metrics, goldensets.count_rows(goldensets.locate(p), m,
                                                     recipe.eval.max_examples))
             for p, m in zip(recipe.all_goldensets, manifests)]
    spec = recipe.eval.from_train
    if spec:
        total = _data_rows(recipe)
        n = heldrows.count(spec.rows, total) if total or isinstance(spec.rows, int) else None
        if n and recipe.eval.max_examples:
            n = min(n, recipe.eval.max_examples)
        sized.append((spec.set_name(recipe.data.train), spec.metrics, n))
    split = recipe.sweep.objective.split("/", 1)[0] if recipe.sweep.space \
        and recipe.sweep.heldout else None
    out = []
    for name, metric_names, n in sized:
        if n is None:
            out.append(f"{name}: size known once loaded (not a local JSONL file)")
        elif name == split and n >= 2:
            held = objective.held_out_size(n, recipe.sweep.heldout)
            out.append(objective.planned(f"{name}{goldensets.HELDOUT}", held, metric_names,
                                         f"held out of selection (of {n})"))
        else:
            out.append(objective.planned(name, n, metric_names))
    return out


def _data_rows(recipe: Recipe) -> int | None:
    """Rows of data.train after skip_rows, where known without loading it."""
    if recipe.data.train.startswith("builtin:"):
        total = recipe.data.builtin_rows
    else:
        p = Path(recipe.data.train).expanduser()
        if p.suffix.lower() != ".jsonl" or not p.is_file():
            return None
        with p.open(encoding="utf-8") as f:
            total = sum(1 for line in f if line.strip())
    return max(0, total - recipe.data.skip_rows)


def _sweep_file(recipe: Recipe) -> str | None:
    try:
        return shipped.locate(recipe.sweep.space, "sweeps")
    except HarnessError as e:
        raise HarnessError(e.message, file=recipe.source, key="sweep.space") from None


def model_fields(ref: str, tracker) -> dict:
    """The recipe's `model:` section for a model reference: a Hub id, a local model folder,
    embedded:<name>, an adapter folder (its base from adapter_config.json), or an MLflow run id
    (`runs:/<id>` or the bare id; the run's base model and its adapter), or a LoggedModel id
    (m-...; the run that made it)."""
    p = Path(ref).expanduser()
    if (p / "adapter_config.json").is_file():
        import json
        base = json.loads((p / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise HarnessError("adapter_config.json names no base model", file=str(p))
        return {"name": base, "init_from": str(p)}
    if p.exists() or ref.startswith("embedded:") or (not ref.startswith("runs:/") and "/" in ref):
        return {"name": ref}
    run_id = ref.removeprefix("runs:/").strip("/")
    if run_id.startswith("m-"):  # a LoggedModel: the run that made it
        run_id = tracker.model_run(run_id) or run_id
    params = tracker.run_params(run_id)
    if params is None:
        raise HarnessError(f"{ref!r} is no model path, Hub id or MLflow run in {tracker.uri}",
                           key="model")
    return {"name": params.get("recipe.model.name", ""), "init_from": run_id}


def resolve_reward_model(recipe: Recipe, index: int, tracker) -> tuple[str, str | None]:
    """GRPO's reward `rewards.<index>` (name reward_model) as (base model folder, adapter folder
    or None), from any model reference (model_fields); a run must have trained a reward model."""
    key, ref = f"rewards.{index}.path", recipe.rewards[index].path
    if not ref:
        raise HarnessError("reward_model needs path: a reward run's id or a model folder",
                           file=recipe.source, key=key)
    try:
        fields = model_fields(ref, tracker)
    except HarnessError as e:
        raise HarnessError(e.message, file=recipe.source, key=key) from None
    init = fields.get("init_from")
    if init and not Path(init).is_dir():  # a run: it must be a reward run
        method = tracker.run_params(init).get("recipe.method")
        if method != "reward":
            raise HarnessError(f"MLflow run {init!r} is a {method} run, not a reward run (a "
                               "reward model comes from a `method: reward` recipe)",
                               file=recipe.source, key=key)
    base = models.resolve(ModelSpec(name=fields["name"]))
    return base, resolve_init(recipe, tracker, init, key) if init else None


def resolve_init(recipe: Recipe, tracker, ref: str | None = None,
                 key: str = "model.init_from") -> str | None:
    """init_from (or `ref`, at `key`) as a local folder: a path as given, or the adapter of an
    MLflow run or LoggedModel."""
    ref = recipe.model.init_from if ref is None else ref
    if ref is None:
        return None
    if Path(ref).expanduser().is_dir():
        return str(Path(ref).expanduser())
    if ref.startswith((".", "/", "~")):
        raise HarnessError(f"{key.split('.')[-1]} path {ref!r} does not exist",
                           file=recipe.source, key=key)
    run_id = ref.removeprefix("runs:/").strip("/")
    dest = Path(recipe.output_dir) / recipe.name / f"init-{run_id}"
    return tracker.fetch_adapter(run_id, str(dest))


def prepare(recipe: Recipe, tracker=None, with_data: bool = True, scorings: int = 2,
            select: bool = False) -> Prepared:
    """`scorings`: how many models this process will score (a sweep: the base and each trial),
    which decides whether decoding is compiled. `select`: a sweep, which holds part of the
    objective's golden set out of selection (sweep.heldout)."""
    from harness.core.errors import located
    with located(recipe.source), phase("loading the model, data and golden sets"), \
            context.timed("data"):
        prep = _prepare(recipe, tracker, with_data, scorings, select)
        # The CLI kept the collector off through set-up (harness.commands.cli.main). What is
        # alive now (libraries, tokenizer, rows, golden sets; no model yet) lives as long as
        # the command: frozen, the full collection after each trial scans only what came after.
        context.current().collector.resume_frozen()
    return prep


def _prepare(recipe: Recipe, tracker, with_data: bool, scorings: int, select: bool) -> Prepared:
    from harness.train import distributed
    check(recipe)
    distributed.setup()  # before CUDA starts: which GPU this process trains on
    k = trainers.kind(recipe)
    plan = models.device_plan(recipe.model)
    say(f"device {plan.device}, dtype {plan.dtype}; resolving model {recipe.model.name}")
    with context.timed("model_load"):
        path = models.resolve(recipe.model)
        if with_data and plan.device == "cuda":  # training: the memory plan, before loading
            plan = models.fit_memory(plan, recipe.model, path, *memory_workload(recipe, plan))
        tok = models.load_tokenizer(recipe.model, path)
    goldens = [goldensets.load(p, recipe.eval.max_examples) for p in recipe.all_goldensets]
    held = heldrows.HeldRows(recipe.eval.from_train.rows, recipe.seed) \
        if recipe.eval.from_train else None
    data = None
    if with_data or held:  # the golden set's rows are chosen as the data loads
        data = load_rows(recipe, tok, held)
    if held:
        goldens.append(own_goldenset(recipe, held))
    if recipe.eval.benchmarks:
        from harness.eval import lm_eval_tasks
        with context.timed("data"):
            goldens += [lm_eval_tasks.load(b, recipe.source, f"eval.benchmarks.{i}")
                        for i, b in enumerate(recipe.eval.benchmarks)]
    if select and recipe.sweep.heldout:
        goldens = held_out(recipe, goldens)
    trainers.check_device(recipe, plan)
    prep = Prepared(recipe, k.task, plan, path, tok, goldens, held=held)
    with context.timed("model_load"):
        init = resolve_init(recipe, tracker)
    if init and models.is_adapter(init):
        prep.init_adapter = init
    elif init:
        prep.model_path = init
    if init:
        say(f"starting from {recipe.model.init_from} ({init})")
    with context.timed("model_load"):
        prep.reward_models = {i: (*resolve_reward_model(recipe, i, tracker), plan)
                              for i, r in enumerate(recipe.rewards) if r.name == "reward_model"}
    scorings += bool(recipe.model.init_from)  # the original base is scored too
    steps = scorings * scoring.decode_steps(goldens, batch_size(prep),
                                               recipe.eval.max_new_tokens, k.task)
    prep.compiled = scoring.compiled_decoding(recipe.eval.decoding, plan.device, steps)
    if prep.compiled:  # kept across processes, past /tmp clean-ups; keyed by GPU inside
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(
            models.cache_dir() / "inductor" / f"torch-{version('torch')}"))
    if steps and plan.device == "cuda":
        say(f"decoding {'compiled' if prep.compiled else 'eager'}: at most {steps} steps over "
            f"{scorings} scorings (eval.decoding: {recipe.eval.decoding})")
    sets = ", ".join(f"{g.name} ({len(g.prompts)})" for g in goldens)
    if not with_data:
        say(f"golden sets: {sets}")
        return prep
    prep.train_ds, prep.eval_ds, prep.data_info = data
    max_length = recipe.trainer.get("max_length", trainers.default_field(recipe, "max_length"))
    longer = trainset.check_lengths(prep.train_ds, tok, max_length, recipe.data.train)
    if longer:
        say(f"warning: {longer} of the first rows are longer than max_length={max_length} and "
            "will be truncated")
    turn_mask = prep.data_info.get("turn_mask")
    say(f"data: {prep.data_info['rows_train']} training rows ({prep.data_info['format']}"
        f"{f'; every assistant turn trained: {turn_mask}' if turn_mask else ''})"
        + (f", {len(held.rows)} held out as golden set "
           f"{recipe.eval.from_train.set_name(recipe.data.train)}" if held else "")
        + f", golden sets: {sets}")
    return prep


def memory_workload(recipe: Recipe, plan: models.DevicePlan):
    """The training step as its TRL config will run it, and the keys the recipe pins, for the
    memory plan (harness.accel.memory): the config is built as training builds it, so its
    defaults (batch, max_length) are the trainer's own."""
    from harness.accel import graphs, memory
    from harness.core import fences
    k = trainers.kind(recipe)
    config = trainers.build_config(recipe, plan, recipe.output_dir)
    max_length = getattr(config, "max_length", None)  # GRPO: prompts are not cut
    why = graphs.blocker(config, plan, recipe, k.packs and trainers.padding_free(config))
    a = recipe.adapter
    targets = a.target_modules
    adapter_dtype = plan.adapter_dtype if a.dtype == "auto" else a.dtype
    work = memory.Workload(
        batch=config.per_device_train_batch_size,
        # DPO and reward models run the chosen and the rejected completion of a row
        row_tokens=(max_length or 0) * (2 if k.data_kind == "preference" else 1),
        lora_r=a.r if a.type == "lora" else 0,
        lora_targets=tuple(targets) if isinstance(targets, list) else memory.LINEARS,
        lora_dropout=a.dropout > 0, dtype_bytes=4 if plan.dtype == "float32" else 2,
        adapter_bytes=4 if adapter_dtype == "float32" else 2,
        quantized=recipe.model.quantization != "none",
        # TRL 1.16's trainers take the loss through its fused LM head
        fused_head=fences.why_not("fused_lm_head") is None,
        graphs_blocked=None if why == "off" else why, activations=bool(max_length))
    t = recipe.trainer
    pinned = memory.Pinned(
        checkpointing=t.get("gradient_checkpointing", t.get("activation_checkpointing")),
        batch=bool({"per_device_train_batch_size", "gradient_accumulation_steps"} & set(t)),
        graphs=recipe.model.cuda_graphs)
    return work, pinned


def own_goldenset(recipe: Recipe, held) -> goldensets.GoldenSet:
    """eval.from_train's golden set from the rows the data load held out (heldrows)."""
    spec = recipe.eval.from_train
    prompts, references = held.examples(recipe.data.train)
    cap = recipe.eval.max_examples or len(prompts)
    return goldensets.from_train(spec.set_name(recipe.data.train), recipe.data.train,
                                 prompts[:cap], references[:cap], spec.metrics,
                                 spec.max_new_tokens)


def held_out(recipe: Recipe, goldens: list) -> list:
    """The golden sets with the objective's cut into a selection part (its own name, which the
    objective and the pruner read) and a held-out part (<name>_heldout) that only reports read:
    the best of several trials, chosen and reported on the same examples, looks better than it
    is (the winner's curse)."""
    name = recipe.sweep.objective.split("/", 1)[0]
    out = []
    for g in goldens:
        if g.name != name:
            out.append(g)
        elif len(g.prompts) < 2:
            raise HarnessError(f"golden set {name!r} has {len(g.prompts)} example: too few to "
                               "hold any out of selection; set sweep.heldout: 0",
                               file=recipe.source, key="sweep.heldout")
        else:
            out += goldensets.split(g, recipe.sweep.heldout, recipe.sweep.heldout_seed)
    return out


def batch_size(prep: Prepared) -> int:
    return prep.recipe.eval.batch_size or (256 if prep.plan.device == "cuda" else 32)


def evaluate(prep: Prepared, model, goldens: list | None = None) -> dict:
    """`model` scored on `goldens` (default: all of prep's)."""
    return scoring.evaluate_model(model, prep.tok, prep.goldens if goldens is None else goldens,
                                     batch_size(prep), prep.recipe.eval.max_new_tokens, prep.task,
                                     prep.compiled)


def is_held_out(gs) -> bool:
    return gs.name.endswith(goldensets.HELDOUT)


def trial_goldens(prep: Prepared, trial: bool) -> list:
    """The golden sets a tuned model is scored on as it finishes: all, except a sweep trial's
    held-out parts under sweep.heldout_scoring `chosen` and its benchmarks unless they say
    every_trial (the chosen trial scores them once the study has chosen it,
    run.score_held_out: no selection reads the held-out parts)."""
    if not trial:
        return prep.goldens
    chosen = prep.recipe.sweep.heldout_scoring == "chosen"
    return [g for g in prep.goldens if not (chosen and is_held_out(g))
            and getattr(getattr(g, "spec", None), "every_trial", True)]  # a Benchmark's spec


def evaluate_start(prep: Prepared) -> None:
    """Score the starting model ('before'); with init_from, the original base too ('base')."""
    say("scoring the starting model on the golden sets")
    for side, with_init in (("before", True), ("base", False)):
        if side == "base" and not prep.recipe.model.init_from:
            break
        with phase(f"scoring the {'starting' if with_init else 'base'} model"), \
                context.timed("score_before"):
            model = as_trials_are(prep, prep.load_model(adapter=with_init))
            setattr(prep, side, evaluate(prep, model))
            del model
            gc.collect()


def as_trials_are(prep: Prepared, model):
    """With compiled decoding, the starting model is scored inside the LoRA structure its trials
    will have, its B matrices zero (peft's own initialisation: every adapter adds exactly 0, so
    the outputs are the base's): the decoder compiled for it then serves every trial, instead of
    compiling once for the base and once more for the first trial."""
    spec = prep.recipe
    if not prep.compiled or spec.adapter.type != "lora" or spec.model.quantization != "none":
        return model
    from peft import get_peft_model
    model = get_peft_model(model, models.lora_config(spec.adapter, prep.task))
    trainers.cast_adapter(model, spec.adapter, prep.plan)
    return model


def start_to_json(prep: Prepared) -> dict:
    return {"before": scoring.results_to_json(prep.before),
            "base": scoring.results_to_json(prep.base)}


def start_matches(prep: Prepared, d: dict) -> bool:
    """Whether saved start scores (start_to_json) are of these golden sets' examples, in this
    order: a resumed study whose sets or held-out split changed must score its start again, or
    its before/after pairs would not be pairs."""
    before = d.get("before", {})
    return set(before) == {g.name for g in prep.goldens} and all(
        [e.get("prompt") for e in before[g.name]["examples"]] == list(g.prompts)
        for g in prep.goldens)


def start_from_json(prep: Prepared, d: dict) -> None:
    prep.before = scoring.results_from_json(d["before"])
    prep.base = scoring.results_from_json(d["base"])


def datasets(prep: Prepared, recipe: Recipe) -> tuple:
    """The training and held-out rows of `recipe`: prep's, unless the recipe (a trial) changes
    the data."""
    if recipe.data == prep.recipe.data:
        return prep.train_ds, prep.eval_ds
    # the golden set's rows stay out whatever the trial's seed or data settings
    train_ds, eval_ds, _ = load_rows(recipe, prep.tok, prep.held)
    return train_ds, eval_ds


def load_rows(recipe: Recipe, tok, held=None) -> tuple:
    """(train, eval or None, info): the recipe's rows as its trainer reads them, conversations
    masked for `tok` (harness.train.assistant_loss), `held` (eval.from_train's rows) left out."""
    return trainset.load_train(recipe.data, recipe.seed, trainers.kind(recipe).data_kind,
                               assistant_loss.masker(tok), held)


def slice_score(prep: Prepared, model, key: str, n: int) -> float:
    """`key` ('math/numeric_accuracy') on the first n examples of its golden set: the cheap
    intermediate objective a pruner watches during training."""
    import dataclasses as dc
    name, metric = key.split("/", 1)
    gs = next(g for g in prep.goldens if g.name == name)
    part = dc.replace(gs, prompts=gs.prompts[:n], references=gs.references[:n],
                      chosen=gs.chosen and gs.chosen[:n], rejected=gs.rejected and gs.rejected[:n])
    with context.timed("score_pruner"):
        return scoring.evaluate_set(model, prep.tok, part, batch_size(prep),
                                       prep.recipe.eval.max_new_tokens, prep.task,
                                       prep.compiled).metrics[metric]
