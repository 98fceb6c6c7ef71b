"""`harness`: argument parsing, exit codes, the one-line error printer. Imports the rest lazily
so `--help` and `validate` stay fast."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from harness.core.errors import HarnessError, say  # light: no heavy imports

EXIT_BAD_INPUT = 2


#: (message regex, category): warnings raised inside one library about another, or notes on what
#: a library marks experimental; none is ours to fix. The CLI hides exactly these, and the tests
#: allow exactly these (tests/conftest.py), where every other DeprecationWarning or FutureWarning
#: from transformers, TRL, peft, Optuna, MLflow or the harness is an error.
KNOWN_WARNINGS = (
    # Optuna marks heartbeats (resume relies on them) and its matplotlib plots experimental:
    # "Argument ``heartbeat_interval`` is an experimental feature", "... is experimental"
    (r".* is (an )?experimental", Warning),
    # with few trials, Optuna's importance plot cannot tell the parameters apart; it shows so
    (r"Target and region quantiles select the same set of trials", UserWarning),
    # Optuna's parallel-coordinate plot sets each axis to its values' range; matplotlib warns when
    # every trial shares a parameter's value (a grid, a resumed study) and widens the axis itself
    (r"Attempting to set identical low and high ylims", UserWarning),
    # peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` (peft_model.py)
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),
    # MLflow 3.17: its SQL store (SQLAlchemy's `noload`), its dataset digests (pandas), and its
    # dataset-source registry, which holds the local-file source twice (so every local golden
    # set is "ambiguous")
    (r"The ``noload`` loader strategy is deprecated", DeprecationWarning),
    (r"For backward compatibility, 'str' dtypes are included by select_dtypes", DeprecationWarning),
    (r"Starting with pandas version 4.0 all arguments of all will be keyword-only",
     DeprecationWarning),
    (r"The specified dataset source can be interpreted in multiple ways", UserWarning),
)


def _quiet() -> None:
    """Library chatter off: the harness prints its own progress lines."""
    import logging
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    if not sys.stderr.isatty():  # progress bars only where a person watches
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm's own switch (genai.evaluate's bar)
    for name in ("mlflow", "alembic", "optuna", "httpx", "datasets"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import warnings
    for message, category in KNOWN_WARNINGS:  # every other warning shows
        warnings.filterwarnings("ignore", message=message, category=category)


def cmd_fences(args) -> int:
    """One line a fenced patch: on or off on this install, and each library's version against
    the versions it was tested with; --check: exit 1 when any is off (CI on the newest releases)."""
    from harness.core import fences
    rows = fences.report()
    for row in rows:
        print(row.line())
    verdict = fences.verdict(rows)
    if verdict:
        print(f"{verdict}; the tested set: {fences.TESTED_SET}")
    return 1 if verdict and args.check else 0


def cmd_validate(args) -> int:
    from harness.pipeline import prepared
    from harness.config import recipe
    from harness.eval import objective
    r = recipe.load(args.recipe, args.set)
    manifests = prepared.check(r)
    if r.sweep.space:
        from harness.study import search
        search.load_space(r)
    sets = len(r.eval.goldensets) + bool(r.eval.from_train)
    print(f"{args.recipe}: ok ({r.method}, model {r.model.name}, {sets} golden set(s), "
          f"objective {r.sweep.objective}, {objective.direction(r)})")
    from harness.core import fences
    if off := fences.off_line():
        print(f"  {off}")
    # what each golden set can show, so it is sized before any GPU time is spent
    for sizing in prepared.sizings(r, manifests):
        print(f"  {sizing if isinstance(sizing, str) else sizing.line()}")
    return 0


def cmd_train(args) -> int:
    from harness.train import distributed
    from harness.pipeline import prepared, run
    from harness.config import recipe
    from harness.tracking.tracker import Tracker
    r = recipe.load(args.recipe, args.set)
    if args.processes < 1:
        raise HarnessError(f"--processes must be at least 1, got {args.processes}",
                           file="--processes")
    if args.processes > 1 and distributed.world_size() == 1:
        prepared.check(r)  # bad input fails here, once, not in every process
        tracker = Tracker(r)  # the experiment exists before the ranks start
        sets = [x for s in args.set or [] for x in ("--set", s)]
        init = prepared.resolve_init(r, tracker)  # an MLflow run's adapter, downloaded once
        if init and init != r.model.init_from:
            sets += ["--set", f"model.init_from={init}"]
        return distributed.launch(["train", args.recipe, *sets], args.processes)
    outcome, path = run.train_and_report(r, Tracker(r) if distributed.is_main() else None)
    if distributed.world_size() > 1:
        distributed.finish()
    if outcome is None:  # not rank 0
        return 0
    from harness.eval.comparison import change_line
    cmp = outcome.comparison
    for m in [cmp[r.sweep.objective]] if r.sweep.objective in cmp else cmp:
        say(change_line(m))
    say(f"run {outcome.run_id}; report {path}")
    return 0


def cmd_sweep(args) -> int:
    from harness.config import recipe
    from harness.study import sweep
    sets = list(args.set or []) + ([f"sweep.storage={args.storage}"] if args.storage else []) \
        + ([f"sweep.repeat_best={args.repeat_best}"] if args.repeat_best is not None else [])
    r = recipe.load(args.recipe, sets)
    if args.worker_of:
        parent, _, index = args.worker_of.partition(":")
        sweep.run_worker(r, args.n_trials, parent, int(index or 1))
        return 0
    if args.workers < 1:
        raise HarnessError(f"--workers must be at least 1, got {args.workers}", file="--workers")
    out = sweep.run_sweep(r, n_trials=args.n_trials, workers=args.workers)
    if args.group_result:  # rank 0 of a group sweep.run_sweep launched: it prints the summary
        if out is not None:
            Path(args.group_result).write_text(json.dumps(out.to_json(), default=str))
        return 0
    params = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                       for k, v in out.best_params.items())
    before = f"{out.before_value:.4g} -> " if out.before_value is not None else ""
    print(f"\nsweep {out.study}: {out.trials} trial{'s' * (out.trials != 1)} finished\n"
          f"best trial {out.best_trial}: {r.sweep.objective} {before}{out.best_value:.4g}\n"
          + (f"{out.heldout.line}\n" if out.heldout else "")
          + f"best params: {params}\n"
          f"runs: experiment {out.experiment!r} in {out.tracking} (sweep run "
          f"{out.parent_run_id}, best run {out.best_run_id}); see them with `harness ui`\n"
          f"report: {out.report}")
    return 0


def _scoring_recipe(args, command: str):
    """`harness eval`'s and `harness compare`'s recipe: --recipe's (or none), --goldenset and
    --set on top, named --name."""
    from harness.config import recipe
    data = recipe.read_yaml(args.recipe) if args.recipe else {}
    data.setdefault("name", args.name)
    sets = recipe.parse_sets(args.set)
    if args.goldenset:
        sets["eval.goldensets"] = args.goldenset
    if args.benchmark:
        sets["eval.benchmarks"] = [{"task": t, "limit": args.limit} for t in args.benchmark]
        if not args.goldenset and not args.recipe:  # the benchmarks alone
            sets.update({"eval.goldensets": [], "eval.forgetting_guard": None})
    return recipe.build(data, args.recipe or command, sets)


def cmd_eval(args) -> int:
    from harness.commands import evaluate
    from harness.tracking.tracker import Tracker
    r = _scoring_recipe(args, "harness eval")
    out = evaluate.run_eval(r, args.model, args.before, Tracker(r))
    if out["comparison"] is not None:
        from harness.eval.comparison import change_line
        for m in out["comparison"]:
            say(change_line(m))
    print(f"run {out['run_id']}; report: {out['report']}")
    return 0


def cmd_compare(args) -> int:
    from harness.commands import compare
    from harness.eval.comparison import change_line
    from harness.tracking.tracker import Tracker
    r = _scoring_recipe(args, "harness compare")
    out = compare.run_compare(r, args.models, Tracker(r), args.all_pairs)
    for name, c in out["comparisons"].items():
        for m in c:
            say(f"{name}: " + change_line(m))
    print(f"run {out['run_id']}; report: {out['report']}")
    return 0


def _store(args) -> str:
    return args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"


def cmd_rerun(args) -> int:
    from harness.commands import logged_runs
    out = logged_runs.rerun(_store(args), args.run_id)
    for key, (was, now) in out["after"].items():
        diff = f"{now - was:+.4g}" if was is not None else "not logged before"
        say(f"{key}: logged {was if was is None else f'{was:.4g}'}, rerun {now:.4g} ({diff})")
    print(f"run {out['run_id']} (rerun of {out['of']}); report: {out['report']}")
    return 0


def cmd_report(args) -> int:
    from harness.commands import logged_runs
    print(f"report: {logged_runs.rebuild_report(_store(args), args.run_id)}")
    return 0


def cmd_export(args) -> int:
    from harness.commands import logged_runs
    out = logged_runs.export(_store(args), args.run_id, args.out_dir, args.merge, args.register)
    what = "merged model" if out["merged"] else "adapter"
    reg = f"; registered as {args.register} version {out['version']}" if args.register else ""
    print(f"{what} of run {out['run_id']} in {out['path']}{reg}")
    return 0


def cmd_ui(args) -> int:
    """`mlflow ui` (harness ui) or `mlflow server` serving artifacts (harness server), bound to
    127.0.0.1 unless --host says otherwise; the store URI's password is never printed."""
    from harness.tracking.reader import redact
    uri = args.backend_store_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("http"):
        raise HarnessError(f"{uri} is a tracking server; give its database as "
                           "--backend-store-uri", file="--backend-store-uri")
    what = "server" if args.command == "server" else "ui"
    # one uvicorn process, no job runner: what the harness uses (harness.tracking.servers)
    cmd = [sys.executable, "-m", "mlflow", what, "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", str(args.http_workers)]
    if what == "server":
        cmd += ["--artifacts-destination", args.artifacts_destination]
    print(f"MLflow {what} on http://{args.host}:{args.port} (store {redact(uri)}); for "
          f"workers: MLFLOW_TRACKING_URI=http://{args.host}:{args.port}", flush=True)
    from harness.tracking import servers
    return servers.run(cmd)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line and exit 2, like every other bad input (argparse adds the usage block)."""
        self.exit(EXIT_BAD_INPUT, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def scoring_options(p: argparse.ArgumentParser, name: str) -> None:
    """The options `harness eval` and `harness compare` share (_scoring_recipe reads them)."""
    p.add_argument("--goldenset", action="append", metavar="MANIFEST",
                   help="golden-set manifest (repeatable); default: the recipe's, else math")
    p.add_argument("--benchmark", action="append", metavar="TASK", help="an lm-eval task "
                   "(repeatable; builtin:harness_math is shipped), beside the golden sets, or "
                   "alone when no --goldenset or --recipe names any")
    p.add_argument("--limit", type=int, help="score only each benchmark's first N documents")
    p.add_argument("--recipe", help="take golden sets, tracking and eval settings from a recipe")
    p.add_argument("--name", default=name, help=f"experiment and report name (default: {name})")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe key")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="harness", description="Fine-tune with TRL from YAML recipes; "
                                "sweep with Optuna; evaluate before/after; track in MLflow.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           parser_class=_Parser)

    def recipe_cmd(name, fn, help_):
        c = sub.add_parser(name, help=help_, description=help_)
        c.add_argument("recipe", help="recipe YAML, e.g. recipes/sft_math.yaml")
        c.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a recipe key, e.g. --set trainer.learning_rate=1e-4")
        c.set_defaults(fn=fn)
        return c

    recipe_cmd("validate", cmd_validate, "check a recipe (and its sweep file and golden sets) "
               "without training")
    t = recipe_cmd("train", cmd_train, "one run with the recipe's values: before/after eval, "
                   "MLflow, report")
    t.add_argument("--processes", type=int, default=1, help="data-parallel processes (DDP "
                   "through torchrun: one GPU each, or gloo on a CPU); rank 0 scores and logs")
    s = recipe_cmd("sweep", cmd_sweep, "an Optuna study over the recipe's sweep file; the same "
                   "command resumes it")
    s.add_argument("--n-trials", type=int, help="trials to finish (default: the sweep file's)")
    s.add_argument("--workers", type=int, default=1, help="processes running trials in "
                   "parallel (needs --storage journal:///path.log or postgresql://..., and an "
                   "MLflow server or database)")
    s.add_argument("--storage", help="Optuna storage URL: sqlite:///optuna.db (default), "
                   "journal:///path/study.log (several workers on one machine), postgresql://... "
                   "(several machines running the same command join one study)")
    s.add_argument("--repeat-best", type=int, metavar="K", help="train the best trial's values "
                   "again with K more seeds and report the spread (sweep.repeat_best)")
    s.add_argument("--worker-of", help=argparse.SUPPRESS)  # a spawned worker: the sweep's run id
    s.add_argument("--group-result", help=argparse.SUPPRESS)  # a rank of a multi-GPU sweep
    f = sub.add_parser("fences", help="which fast paths (patches of library internals) this "
                       "install runs, and which library versions turn any off")
    f.add_argument("--check", action="store_true", help="exit 1 when any is off")
    f.set_defaults(fn=cmd_fences)
    e = sub.add_parser("eval", help="score a model on golden sets without training, alone or "
                       "against --before", description="MODEL: embedded:<name>, a Hub id, a model "
                       "or adapter folder, or an MLflow run id (runs:/<id> or the bare id).")
    e.add_argument("model")
    e.add_argument("--before", metavar="MODEL", help="score this too and compare (paired)")
    scoring_options(e, "eval")
    e.set_defaults(fn=cmd_eval)
    c = sub.add_parser("compare", help="score several models on the same golden sets, each "
                       "against the first (or every pair): paired tests, Holm across all, a "
                       "leaderboard report, an MLflow run", description="MODEL_OR_RUN: as "
                       "`harness eval` takes; a run's logged results are reused where its "
                       "examples and decoding settings match.")
    c.add_argument("models", nargs="+", metavar="MODEL_OR_RUN")
    c.add_argument("--all-pairs", action="store_true", help="compare every pair, not only each "
                   "against the first")
    scoring_options(c, "compare")
    c.set_defaults(fn=cmd_compare)
    store_help = "the MLflow store holding the run (default: MLFLOW_TRACKING_URI or " \
        "sqlite:///mlflow.db)"
    rr = sub.add_parser("rerun", help="train a logged run again from its manifest and compare "
                        "its metrics", description="RUN_ID: a `harness train` run, a trial, or "
                        "a sweep (its best trial).")
    rr.add_argument("run_id")
    rr.add_argument("--tracking-uri", help=store_help)
    rr.set_defaults(fn=cmd_rerun)
    rp = sub.add_parser("report", help="rebuild a run's or a sweep's report (markdown and "
                        "PNGs) from MLflow and log it to the run again")
    rp.add_argument("run_id")
    rp.add_argument("--tracking-uri", help=store_help)
    rp.set_defaults(fn=cmd_report)
    x = sub.add_parser("export", help="write a run's model for use elsewhere: its adapter, or "
                       "merged into its base (--merge), with the tokenizer and chat template")
    x.add_argument("run_id", help="a run id, a sweep run's id (its best trial), or a "
                   "LoggedModel id (m-...)")
    x.add_argument("out_dir")
    x.add_argument("--merge", action="store_true", help="merge the adapter into the base model")
    x.add_argument("--register", metavar="NAME", help="also register it in the MLflow Model "
                   "Registry under NAME, with the run's metrics as version tags")
    x.add_argument("--tracking-uri", help=store_help)
    x.set_defaults(fn=cmd_export)
    for name, help_ in (("ui", "the MLflow UI on the harness's tracking store"),
                        ("server", "an MLflow tracking server (artifacts served) for parallel "
                                   "sweep workers, e.g. on PostgreSQL")):
        u = sub.add_parser(name, help=help_, description=help_)
        u.add_argument("--backend-store-uri", help="default: MLFLOW_TRACKING_URI or "
                       "sqlite:///mlflow.db; for workers postgresql://user@host/db")
        u.add_argument("--host", default="127.0.0.1")
        u.add_argument("--port", type=int, default=5000)
        u.add_argument("--http-workers", type=int, default=1, metavar="N",
                       help="uvicorn worker processes (default 1: MLflow's handlers run in its "
                       "threads; more for many concurrent users)")
        if name == "server":
            u.add_argument("--artifacts-destination", default="./mlartifacts")
        u.set_defaults(fn=cmd_ui)
    return p


def main(argv: list[str] | None = None, ctx=None) -> int:
    """`ctx`: the harness.core.context.RunContext the command times and counts into (a test
    reads it afterwards); a fresh one by default, so no two commands share one."""
    args = parser().parse_args(argv)
    from harness.core import context
    preparing = args.command in ("train", "sweep", "eval", "compare", "rerun", "export")
    # start-up counts from here (harness.core.timing); a preparing command's set-up runs with
    # the collector off, and prepared.prepare turns it back on (context.Collector)
    with context.command(pause_collector=preparing, ctx=ctx):
        return _run(args, preparing)


def _run(args, preparing: bool) -> int:
    _quiet()
    from harness.core import stopping
    stopping.reset()
    stopping.install()  # SIGTERM and SIGINT end runs as Ctrl-C does
    try:
        if preparing:
            from harness.core import fences
            if off := fences.off_line():  # before the run's time is spent on the plain path
                print(f"harness: {off}", file=sys.stderr)
        if preparing and getattr(args, "processes", 1) == 1:
            from harness.train import distributed
            distributed.pin_first_gpu()  # before anything starts CUDA
        return args.fn(args)
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: runs marked KILLED; the same command resumes", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or a library's failure: one line, the traceback in a file
        print(f"error: {crash_line(e, args.command)}", file=sys.stderr)
        return 1


def crash_dir() -> Path:
    """HARNESS_CRASH_DIR, else the XDG state folder (~/.local/state/harness/crashes)."""
    if os.environ.get("HARNESS_CRASH_DIR"):
        return Path(os.environ["HARNESS_CRASH_DIR"])
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "harness" / "crashes"


def crash_line(e: BaseException, command: str) -> str:
    """Writes the traceback to a crash log; returns the line to print: what failed, in which
    phase, where the log is, and the MLflow runs that hold it too (harness.tracking)."""
    import time
    import traceback

    from harness.tracking.reader import redact
    text = redact("".join(traceback.format_exception(e)))
    try:
        folder = crash_dir()
        folder.mkdir(parents=True, exist_ok=True)
        log = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{command}.log"
        log.write_text(f"harness {' '.join(sys.argv[1:])}\n\n{text}")
        where = f"crash log {log}"
    except OSError as write_error:  # say so, and keep the cause on the terminal's one line
        where = f"no crash log ({write_error.strerror})"
    first = (str(e).strip().splitlines() or [""])[0][:300]
    runs = getattr(e, "harness_runs", None)
    logged = f"; also on MLflow run {', '.join(runs)} (crash.log)" if runs else ""
    return redact(f"unexpected {type(e).__name__} while {getattr(e, 'harness_phase', command)}"
                  f"{': ' + first if first else ''}; {where}{logged}")


if __name__ == "__main__":
    sys.exit(main())
