"""Every MLflow call: runs and their nesting, params, metrics, artifacts, tables.

Default store is MLflow's own default (sqlite:///mlflow.db beside where the command runs, so a
plain `mlflow ui` there shows the runs); the recipe's `tracking.uri` or MLFLOW_TRACKING_URI wins.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.recipe import Recipe

STUDY_TAG = "harness.study"
KIND_TAG = "harness.kind"
MAX_PARAM = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH, without importing mlflow here
_SECRET = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


def redact(text: str) -> str:
    """user:password@host in URIs -> user:***@host."""
    return _SECRET.sub(r"\1***@", text)


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            s = redact(json.dumps(v) if isinstance(v, (list, dict)) else str(v))
            out[key] = s if len(s) <= MAX_PARAM else s[:MAX_PARAM - 3] + "..."
    return out


class Tracker:
    def __init__(self, recipe: Recipe):
        import mlflow
        self.mlflow = mlflow
        uri = recipe.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            mlflow.set_tracking_uri(uri)
        self.experiment = recipe.tracking.experiment or recipe.name
        mlflow.set_experiment(self.experiment)
        self.client = mlflow.MlflowClient()
        self.report_to = ["mlflow"]  # transformers' MLflowCallback logs into the active run

    @property
    def uri(self) -> str:
        return redact(self.mlflow.get_tracking_uri())

    @contextmanager
    def run(self, name: str | None = None, *, nested: bool = False, run_id: str | None = None,
            tags: dict | None = None, description: str | None = None) -> Iterator[str]:
        """A run that never stays RUNNING: FAILED on error, KILLED on Ctrl-C or SIGTERM (and
        on an exception that says `mlflow_status`, such as a pruned trial)."""
        mlflow = self.mlflow
        # a worker process has no active parent: the mlflow.parentRunId tag nests the run
        nested = nested and mlflow.active_run() is not None
        tags = {k: redact(str(v)) for k, v in (tags or {}).items()} or None
        active = mlflow.start_run(run_id=run_id, run_name=None if run_id else name, nested=nested,
                                  tags=tags, description=description)
        try:
            yield active.info.run_id
        except KeyboardInterrupt:
            self._end("KILLED")
            raise
        except BaseException as e:
            self._end(getattr(e, "mlflow_status", "FAILED"))
            raise
        self._end("FINISHED")

    def _end(self, status: str) -> None:
        self.mlflow.flush_async_logging()
        self.mlflow.end_run(status=status)

    def log_params(self, params: dict) -> None:
        flat = flatten(params)
        items = list(flat.items())
        for i in range(0, len(items), 100):
            self.mlflow.log_params(dict(items[i:i + 100]))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def set_tags(self, tags: dict) -> None:
        self.mlflow.set_tags({k: redact(str(v)) for k, v in tags.items()})

    def log_dict(self, data: dict, path: str) -> None:
        self.mlflow.log_dict(data, path)

    def log_table(self, rows: list[dict], path: str) -> None:
        if rows:
            cols = {k: [r.get(k) for r in rows] for k in rows[0]}
            self.mlflow.log_table(data=cols, artifact_file=path)

    def log_artifacts(self, local_dir: str, path: str | None = None,
                      run_id: str | None = None) -> None:
        """Into the active run, or into run_id after it ended."""
        if run_id:
            self.client.log_artifacts(run_id, local_dir, path)
        else:
            self.mlflow.log_artifacts(local_dir, artifact_path=path)

    # ------------------------------------------------------------ reading back

    def find_sweep_run(self, study: str) -> str | None:
        """The parent run of a study, so a resumed sweep keeps logging under it."""
        runs = self.mlflow.search_runs(experiment_names=[self.experiment], output_format="list",
                                       filter_string=f"tags.`{STUDY_TAG}` = '{study}' and "
                                       f"tags.`{KIND_TAG}` = 'sweep'")
        return runs[0].info.run_id if runs else None

    def load_json(self, run_id: str, path: str) -> dict | None:
        from mlflow.exceptions import MlflowException
        if not run_id:
            return None
        try:
            with tempfile.TemporaryDirectory() as d:
                local = self.mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                                 dst_path=d)
                return json.loads(Path(local).read_text())
        except (MlflowException, OSError):  # no such artifact: the caller computes it
            return None

    def run_params(self, run_id: str) -> dict | None:
        """A run's params, or None when the store has no such run."""
        from mlflow.exceptions import MlflowException
        try:
            return self.client.get_run(run_id).data.params
        except MlflowException:
            return None

    def _has_artifact(self, run_id: str, path: str) -> bool:
        return bool(self.client.list_artifacts(run_id, path))

    def fetch_adapter(self, run_id: str, dest: str) -> str:
        """The adapter a run produced, as a local folder: its `adapter/` or `best_adapter/`
        artifact, its sweep's `best_adapter/` when it is that sweep's best trial, or the folder
        its `harness.adapter_dir` tag names."""
        from mlflow.exceptions import MlflowException

        from harness.errors import HarnessError
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            raise HarnessError(f"no MLflow run {run_id!r} in {self.uri}",
                               key="model.init_from") from None
        tags = run.data.tags
        sources = [(run_id, "adapter"), (run_id, "best_adapter")]
        parent = tags.get("mlflow.parentRunId")
        if parent and self.client.get_run(parent).data.tags.get("harness.best_run_id") == run_id:
            sources.append((parent, "best_adapter"))
        for rid, path in sources:
            if self._has_artifact(rid, path):
                Path(dest).mkdir(parents=True, exist_ok=True)
                return self.mlflow.artifacts.download_artifacts(run_id=rid, artifact_path=path,
                                                                dst_path=dest)
        local = tags.get("harness.adapter_dir")
        if local and Path(local).is_dir():
            return local
        raise HarnessError(f"MLflow run {run_id!r} has no adapter (no adapter/ or best_adapter/ "
                           "artifact, and its local adapter folder is gone)",
                           key="model.init_from")
