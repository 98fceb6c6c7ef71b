"""Every MLflow call: runs and their nesting, params, metrics, artifacts, tables.

Default store is MLflow's own default (sqlite:///mlflow.db beside where the command runs, so a
plain `mlflow ui` there shows the runs); the recipe's `tracking.uri` or MLFLOW_TRACKING_URI wins.
"""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.core import context
from harness.config.recipe import Recipe

from harness.tracking.reader import (BEST_MODEL_TAG, EVALUATION_OF_TAG, EVALUATIONS_TAG, KIND_TAG,
                                     MODEL_TAG, STUDY_TAG, Reader, flatten, redact, redact_tree)


class Tracker(Reader):
    def __init__(self, recipe: Recipe):
        import mlflow
        configured = recipe.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
        super().__init__(configured or mlflow.get_tracking_uri())
        self.experiment = recipe.tracking.experiment or recipe.name
        exp = self._get_or_create_experiment(self.experiment)
        self.experiment_id = exp.experiment_id
        self._bind_fluent(bool(configured))  # refuses a deleted experiment
        if exp.tags.get("mlflow.experimentKind") is None:  # the UI opens on training runs
            self.client.set_experiment_tag(exp.experiment_id, "mlflow.experimentKind",
                                           "custom_model_development")
        self.report_to = ["mlflow"]  # transformers' MLflowCallback logs into the active run
        # id(rows) -> (rows, MLflow dataset): a sweep logs the same training rows and golden
        # sets into every trial; MLflow infers a dataset's schema and digest once per object
        # (~1.8 s for 4,000 rows), so each is built once and kept with the rows it describes
        self._datasets: dict[int, tuple] = {}
        # ending a run shuts down the store's async logging queue (one a store, shared by every
        # thread); two threads ending runs at once (a trial on the command's thread, its
        # predecessor's evaluation run on the writer thread, harness.core.beside) deadlocked
        # in that shutdown's joins (2026-12-08, MLflow 3.17): run ends go one at a time
        self._ending = threading.RLock()

    def _get_or_create_experiment(self, name: str):
        """The experiment `name` in this store, made when new (as mlflow.set_experiment makes
        it, a concurrent worker's creation included), without making it MLflow's active one."""
        from mlflow.exceptions import MlflowException
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                self.client.create_experiment(name)
            except MlflowException as e:
                if e.error_code != "RESOURCE_ALREADY_EXISTS":  # another worker made it first
                    raise
            exp = self.client.get_experiment_by_name(name)
        return exp

    def _bind_fluent(self, configured: bool) -> None:
        """The one place the harness sets MLflow's process-wide state: the tracking URI (when
        the recipe or MLFLOW_TRACKING_URI names one; else MLflow's default is this store
        already) and the active experiment. Everything the harness asks by itself names its
        store and experiment (self.client, self.experiment_id). What cannot is MLflow's fluent
        API: the active-run stack (mlflow.start_run / active_run) that transformers'
        MLflowCallback (TRL's report_to=["mlflow"], each training step's metrics) logs into,
        the fluent log calls into that run, and mlflow.genai.evaluate and its traces, all of
        which find the store by the global URI and the experiment by the active one. Setting
        the URI also exports MLFLOW_TRACKING_URI, which that callback reads when training
        starts and which sweep workers and torchrun's ranks inherit."""
        if configured:
            self.mlflow.set_tracking_uri(self._store_uri)
        self.mlflow.set_experiment(experiment_id=self.experiment_id)

    @property
    def uri(self) -> str:
        return redact(self._store_uri)

    @contextmanager
    def run(self, name: str | None = None, *, nested: bool = False, run_id: str | None = None,
            tags: dict | None = None, description: str | None = None) -> Iterator[str]:
        """A run that never stays RUNNING: FAILED on error, KILLED on Ctrl-C or SIGTERM (and
        on an exception that says `mlflow_status`, such as a pruned trial)."""
        mlflow = self.mlflow
        # a worker process has no active parent: the mlflow.parentRunId tag nests the run
        nested = nested and mlflow.active_run() is not None
        tags = {k: redact(str(v)) for k, v in (tags or {}).items()} or None
        active = mlflow.start_run(run_id=run_id, experiment_id=self.experiment_id,
                                  run_name=None if run_id else name, nested=nested, tags=tags,
                                  description=description)
        context.count("mlflow_writes", 2)  # started, and ended below
        try:
            yield active.info.run_id
        except KeyboardInterrupt:
            self._end("KILLED")
            raise
        except BaseException as e:
            self._crash_log(e, active.info.run_id)
            self._end(getattr(e, "mlflow_status", "FAILED"))
            raise
        self._end("FINISHED")

    def _crash_log(self, e: BaseException, run_id: str) -> None:
        """An unexpected error's traceback as the run's `crash.log` and its first line as the
        tag `harness.error`; the run id is added to the exception (`harness_runs`) for the
        CLI's one line. Bad input and training faults carry their own one-line reason."""
        import traceback

        from harness.core.errors import HarnessError
        if isinstance(e, HarnessError) or hasattr(e, "mlflow_status") \
                or not isinstance(e, Exception):
            return
        try:
            self.mlflow.log_text(redact("".join(traceback.format_exception(e))), "crash.log")
            first = (str(e).strip().splitlines() or [""])[0][:500]
            self.mlflow.set_tag("harness.error", redact(f"{type(e).__name__}: {first}"))
        except Exception:  # noqa: BLE001 - the store may be what failed; the error goes on
            return
        e.harness_runs = [*getattr(e, "harness_runs", []), run_id]

    def _end(self, status: str) -> None:
        # end_run drains the async queue (transformers' MLflowCallback logs asynchronously)
        # before it sets the status; a flush first would restart the queue's thread only to
        # stop it again, each stop waiting up to a second for the thread's poll
        run = self.mlflow.active_run()
        try:
            with self._ending:
                self.mlflow.end_run(status=status)
        except KeyboardInterrupt:  # a SIGTERM (torchrun stopping a group) while ending: the
            # status is written anyway, then the interrupt goes on; the run never stays RUNNING
            if run is not None:
                self._terminate(run.info.run_id, status)
            raise

    def _terminate(self, run_id: str, status: str) -> None:
        with self._ending:
            self.client.set_terminated(run_id, status)

    def log_params(self, params: dict) -> None:
        flat = flatten(params)
        items = list(flat.items())
        for i in range(0, len(items), 100):
            self.mlflow.log_params(dict(items[i:i + 100]))
            context.count("mlflow_writes")

    def log_metrics(self, metrics: dict[str, float], step: int | None = None,
                    run_id: str | None = None) -> None:
        """Into the active run, or into run_id after it ended."""
        self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step,
                                run_id=run_id)
        context.count("mlflow_writes")

    def log_curve(self, points: list[tuple[int, dict]]) -> None:
        """Metrics at their steps into the active run, 1,000 a write (MLflow's batch limit): a
        resumed run's curve up to its checkpoint."""
        import time

        from mlflow.entities import Metric
        run_id, now = self.mlflow.active_run().info.run_id, int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for step, m in points for k, v in m.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[i:i + 1000])
            context.count("mlflow_writes")

    def set_tags(self, tags: dict, run_id: str | None = None) -> None:
        """On the active run, or on run_id."""
        tags = {k: redact(str(v)) for k, v in tags.items()}
        if run_id is None:
            context.count("mlflow_writes")
            return self.mlflow.set_tags(tags)
        for k, v in tags.items():
            self.client.set_tag(run_id, k, v)
            context.count("mlflow_writes")

    def describe(self, text: str) -> None:
        """The run's description in the UI (MLflow keeps it in the mlflow.note.content tag)."""
        self.mlflow.set_tag("mlflow.note.content", redact(text))
        context.count("mlflow_writes")

    def log_dict(self, data: dict, path: str, run_id: str | None = None) -> None:
        """Into the active run, or into run_id after it ended."""
        self.mlflow.log_dict(redact_tree(data), path, run_id=run_id)
        context.count("mlflow_writes")

    def log_table(self, rows: list[dict], path: str, run_id: str | None = None) -> None:
        if rows:
            cols = {k: [r.get(k) for r in rows] for k in rows[0]}
            self.mlflow.log_table(data=cols, artifact_file=path, run_id=run_id)
            context.count("mlflow_writes")

    def log_artifacts(self, local_dir: str, path: str | None = None,
                      run_id: str | None = None) -> None:
        """Into the active run, or into run_id after it ended."""
        if run_id:
            self.client.log_artifacts(run_id, local_dir, path)
        else:
            self.mlflow.log_artifacts(local_dir, artifact_path=path)
        context.count("mlflow_writes")

    def log_inputs(self, train_ds, source: str, goldens) -> None:
        """The training rows and each golden set as MLflow dataset inputs (name, digest, context),
        so the UI's Datasets column shows what a run saw."""
        self._log_input(self._dataset(train_ds, lambda: self.mlflow.data.from_huggingface(
            train_ds, path=redact(source), name="train")), "training")
        for g in goldens:
            self._log_input(self._golden_dataset(g), "evaluation")

    def _golden_dataset(self, g):
        import pandas as pd

        from harness.eval.goldensets import prompt_text
        return self._dataset(g, lambda: self.mlflow.data.from_pandas(
            pd.DataFrame({"prompt": [prompt_text(p) for p in g.prompts],  # chats as JSON
                          "reference": g.references or [""] * len(g.prompts)}),
            source=g.path, name=g.name))

    def log_model_metrics(self, run_id: str, model_id: str, after: dict[str, float],
                          goldens) -> None:
        """The tuned model's golden-set scores (`after`: 'math/numeric_accuracy' -> value) as the
        run's after/ metrics, each linked to the model and to its golden set's dataset: the
        Models view ranks the models by them, per dataset."""
        left = dict(after)
        for g in goldens:
            these = {f"after/{k}": float(left.pop(k)) for k in list(left)
                     if k.split("/", 1)[0] == g.name}
            if these:
                self.mlflow.log_metrics(these, run_id=run_id, model_id=model_id,
                                        dataset=self._golden_dataset(g))
                context.count("mlflow_writes")
        if left:  # a set this process did not load (never expected): linked to the model only
            self.mlflow.log_metrics({f"after/{k}": float(v) for k, v in left.items()},
                                    run_id=run_id, model_id=model_id)
            context.count("mlflow_writes")

    def log_evaluation(self, records: list[dict], scores: list[dict], scorers: dict,
                       model_id: str | None = None) -> None:
        """Per-example results the way MLflow's GenAI evaluation records them, in the active
        run: each record (inputs/outputs/expectations) a trace with one CODE assessment per
        metric (`scores`: name -> value, a dict a record), each metric's mean a run metric
        (`<name>/mean`); `model_id` links the traces to the LoggedModel. Written in bulk
        (harness.tracking.records) inside the tested MLflow versions, else by mlflow.genai.evaluate
        with
        `scorers` (name -> f(outputs, expectations)) as its code scorers."""
        from harness.core import fences
        from harness.tracking import records as bulk
        if fences.allowed("trace_store"):
            bulk.write_bulk(self.mlflow, self.client, self.mlflow.active_run().info.run_id,
                            records, scores, model_id)
        else:
            bulk.write_with_genai_evaluate(self.mlflow, records, scorers, model_id,
                                           self.uri.startswith("sqlite"))
        context.count("mlflow_writes")
        context.count("records", len(records))
        context.count("assessments", sum(len(s) for s in scores))

    def records_beside(self) -> bool:
        """Whether evaluation records may be written on a thread beside the command's: the
        bulk path (client calls by run id) may; genai.evaluate's swaps process-wide state."""
        from harness.core import fences
        return fences.allowed("trace_store")

    def check_records(self, run_id: str, traces: int, assessments: int) -> None:
        """Count back what evaluation run `run_id` holds: fewer traces or assessments than were
        written is an error, not a silent loss."""
        from harness.tracking import records as bulk
        got = bulk.count(self.client, run_id)
        if got != (traces, assessments):
            raise RuntimeError(f"evaluation run {run_id} holds {got[0]} traces and {got[1]} "
                               f"assessments; {traces} and {assessments} were written")

    def _dataset(self, rows, build):
        """The MLflow dataset of `rows`, built by `build()` the first time."""
        if id(rows) not in self._datasets:  # kept with the rows: their id stays theirs
            self._datasets[id(rows)] = (rows, build())
        return self._datasets[id(rows)][1]

    def _log_input(self, dataset, role: str, attempts: int = 4) -> None:
        """mlflow.log_input, tried again when it fails. MLflow's SQL store gets-or-creates a
        dataset row without a lock: two workers logging the same new golden set at once both
        insert it, and one gets a unique-key violation (PostgreSQL: `dataset_pk`). Logging an
        input is idempotent, and on the next try the dataset exists and is reused. `role`: the
        input's context in MLflow's terms (training or evaluation)."""
        import random
        import time

        from mlflow.exceptions import MlflowException
        context.count("mlflow_writes")  # once, however many tries it takes
        for attempt in range(attempts):
            try:
                return self.mlflow.log_input(dataset, context=role)
            except MlflowException:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.05 + random.random() * 0.2 * (attempt + 1))

    # ------------------------------------------------------------ reading back

    def find_sweep_run(self, study: str) -> str | None:
        """The parent run of a study, so a resumed sweep keeps logging under it."""
        runs = self._search(f"tags.`{STUDY_TAG}` = '{study}' and tags.`{KIND_TAG}` = 'sweep'")
        return runs[0].info.run_id if runs else None

    def find_run(self, tags: dict) -> str | None:
        """A FINISHED run of the experiment with all these tags, or None."""
        where = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self._search(f"{where} and attributes.status = 'FINISHED'")
        return runs[0].info.run_id if runs else None

    def _search(self, filter_string: str) -> list:
        """The experiment's runs that match, newest first (MLflow's order), every page."""
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string,
                                           page_token=token)
            runs += page
            token = page.token
            if not token:
                return runs

    def load_json(self, run_id: str, path: str) -> dict | None:
        """A run's JSON artifact, or None (no such artifact: the caller computes it)."""
        text = self.artifact_text(run_id, path) if run_id else None
        return json.loads(text) if text is not None else None

    def curves(self, run_id: str, keys=("loss", "eval_loss")) -> dict[str, list]:
        """Metric histories as (step, value) lists, for the loss plots."""
        if not run_id:
            return {}
        return {k: sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, k))
                for k in keys}

    def run_params(self, run_id: str) -> dict | None:
        """A run's params, or None when the store has no such run."""
        run = self.read_run(run_id)
        return run.params if run else None

    def end_if_running(self, run_id: str, status: str, tags: dict) -> bool:
        """End a run its dead process left RUNNING, with `tags` saying why."""
        run = self.read_run(run_id)
        if run is None or run.status != "RUNNING":
            return False
        self.set_tags(tags, run_id)
        self._terminate(run_id, status)
        return True

    def needs_evaluations(self, of_run: str, side: str) -> bool:
        """Whether `of_run` lacks its finished `side` evaluation run (tag EVALUATIONS_TAG.side,
        set once its records are all logged); if so, any a killed process left RUNNING are
        ended first, so the records can be logged again."""
        view = self.read_run(of_run)
        if view is None or view.tags.get(f"{EVALUATIONS_TAG}.{side}"):
            return False
        self.end_running_evaluations(of_run)
        return True

    def end_running_evaluations(self, of_run: str) -> int:
        """End KILLED the evaluation runs of `of_run` (tag EVALUATION_OF) that a killed process
        left RUNNING; returns how many."""
        runs = self._search(f"tags.`{EVALUATION_OF_TAG}` = '{of_run}' and "
                            "attributes.status = 'RUNNING'")
        for r in runs:
            self._terminate(r.info.run_id, "KILLED")
        return len(runs)

    def _has_artifact(self, run_id: str, path: str) -> bool:
        return bool(self.client.list_artifacts(run_id, path))

    def fetch_adapter(self, run_id: str, dest: str) -> str:
        """The adapter (or model) a run produced, as a local folder: its LoggedModel, the
        LoggedModel of a sweep run's best trial, the `adapter/` or `best_adapter/` artifact
        runs logged before LoggedModels, or the folder its `harness.adapter_dir` tag names.
        `run_id` may be a LoggedModel's id (m-...): that model."""
        from mlflow.exceptions import MlflowException

        from harness.core.errors import HarnessError
        if run_id.startswith("m-"):
            if self.model_run(run_id) is None:
                raise HarnessError(f"no MLflow LoggedModel {run_id!r} in {self.uri}",
                                   key="model.init_from")
            Path(dest).mkdir(parents=True, exist_ok=True)
            return self.mlflow.artifacts.download_artifacts(f"models:/{run_id}", dst_path=dest,
                                                            tracking_uri=self._store_uri)
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            raise HarnessError(f"no MLflow run {run_id!r} in {self.uri}",
                               key="model.init_from") from None
        tags = run.data.tags
        model_id = tags.get(MODEL_TAG) or tags.get(BEST_MODEL_TAG)
        if model_id:
            Path(dest).mkdir(parents=True, exist_ok=True)
            return self.mlflow.artifacts.download_artifacts(f"models:/{model_id}", dst_path=dest,
                                                            tracking_uri=self._store_uri)
        sources = [(run_id, "adapter"), (run_id, "best_adapter")]
        parent = tags.get("mlflow.parentRunId")
        if parent and self.client.get_run(parent).data.tags.get("harness.best_run_id") == run_id:
            sources.append((parent, "best_adapter"))
        for rid, path in sources:
            if self._has_artifact(rid, path):
                Path(dest).mkdir(parents=True, exist_ok=True)
                return self.mlflow.artifacts.download_artifacts(run_id=rid, artifact_path=path,
                                                                dst_path=dest,
                                                                tracking_uri=self._store_uri)
        local = tags.get("harness.adapter_dir")
        if local and Path(local).is_dir():
            return local
        raise HarnessError(f"MLflow run {run_id!r} has no adapter (no LoggedModel, no adapter/ "
                           "or best_adapter/ artifact, and its local adapter folder is gone: "
                           "tracking.log_models)",
                           key="model.init_from")
