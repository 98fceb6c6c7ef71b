"""Reading MLflow back (Reader, RunView), the tags the harness sets, and what keeps secrets and
overlong values out of MLflow (redact, flatten): shared by the Tracker that writes and the
commands that only read a store."""
from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.core import context
from harness.config.recipe import map_strings

STUDY_TAG = "harness.study"
KIND_TAG = "harness.kind"
MODEL_TAG = "harness.model_id"  # a run's LoggedModel (its trained adapter or model)
BEST_MODEL_TAG = "harness.best_model_id"  # a sweep run's best trial's LoggedModel
EVALUATIONS_TAG = "harness.evaluations"  # + .before / .after: the run's evaluation runs
EVALUATION_OF_TAG = "harness.evaluation_of"  # an evaluation run's source run
SAMPLED_BY_TAG = "harness.sampled_by"  # a trial run: where the sampler took its values from
SAMPLING_TAG = "harness.sampling"  # a sweep run: its trials grouped by where their values came from
MAX_PARAM = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH, without importing mlflow here
_SECRETS = [(re.compile(r"(://[^:/@\s]+:)[^@\s]+@"), r"\1***@"),  # user:password@host
            (re.compile(r"([?&;](?:token|access_token|api_key|apikey|key|password|passwd|secret|"
                        r"sig)=)[^&\s]+", re.I), r"\1***"),  # ?token=...
            (re.compile(r"\bhf_[A-Za-z0-9]{16,}"), "hf_***")]  # Hugging Face tokens


def redact(text: str) -> str:
    """Passwords and tokens in URIs and text -> ***, before anything is logged or printed."""
    for pattern, repl in _SECRETS:
        text = pattern.sub(repl, text)
    return text


def redact_tree(obj):
    """redact() on every string in nested dicts and lists (recipes, manifests)."""
    return map_strings(obj, redact)


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


@dataclass
class RunView:
    """A logged run as the other rooms read it: plain values, no MLflow types."""
    run_id: str
    name: str
    status: str
    tags: dict
    metrics: dict
    params: dict
    experiment_id: str = ""


class Reader:
    """Logged runs read back from the store at `uri`; no experiment needed (rerun, export and
    report start from a run id)."""

    def __init__(self, uri: str):
        import mlflow
        self.mlflow = mlflow
        self.client = mlflow.MlflowClient(uri)
        self._store_uri = uri

    def evaluation_scores(self, run_id: str) -> dict:
        """An evaluation run's records read back: {(prompt, assessment name): value}."""
        out, token = {}, None
        experiment = self.client.get_run(run_id).info.experiment_id
        while True:
            page = self.client.search_traces(locations=[experiment], run_id=run_id,
                                             max_results=500, page_token=token)
            for trace in page:
                prompt = trace.data.spans[0].inputs["prompt"]
                for a in trace.info.assessments:
                    if a.feedback is not None:
                        out[(prompt, a.name)] = a.feedback.value
            token = page.token
            if not token:
                return out

    def read_run(self, run_id: str) -> RunView | None:
        """The run, or None when the store has no such run."""
        from mlflow.exceptions import MlflowException
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        return RunView(run.info.run_id, run.info.run_name, run.info.status,
                       dict(run.data.tags), dict(run.data.metrics), dict(run.data.params),
                       run.info.experiment_id)

    def artifact_text(self, run_id: str, path: str) -> str | None:
        """A run's artifact as text, or None when it has none at `path`."""
        from mlflow.exceptions import MlflowException
        try:
            with tempfile.TemporaryDirectory() as d:
                local = self.mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=path, dst_path=d, tracking_uri=self._store_uri)
                return Path(local).read_text()
        except (MlflowException, OSError):
            return None

    def log_model(self, run_id: str, folder: str, name: str, kind: str) -> str:
        """`folder` (a LoRA adapter or a whole model) as an MLflow LoggedModel made by run
        `run_id`: the UI's Models view lists it, the run shows it among its outputs, and
        `models:/<id>` downloads or registers it. Returns its id (also the run's MODEL_TAG)."""
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus
        experiment = self.client.get_run(run_id).info.experiment_id
        model = self.client.create_logged_model(experiment, name=name, source_run_id=run_id,
                                                model_type=kind, tags={"harness.run_id": run_id})
        try:
            self.client.log_model_artifacts(model.model_id, folder)
        except BaseException:  # never left PENDING: the Models view shows it failed
            self.client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
            raise
        self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        self.client.set_tag(run_id, MODEL_TAG, model.model_id)
        context.count("mlflow_writes", 5)  # the model, its files, final status, output, tag
        return model.model_id

    def model_run(self, model_id: str) -> str | None:
        """The run that made LoggedModel `model_id`, or None when the store has no such model."""
        from mlflow.exceptions import MlflowException
        try:
            return self.client.get_logged_model(model_id).source_run_id
        except MlflowException:
            return None

    def register(self, run_id: str, name: str, model_id: str | None = None,
                 folder: str | None = None) -> str:
        """A new version of registered model `name` (created when new) from the run's
        LoggedModel `model_id`, or from `folder` (a merged export) logged as a new LoggedModel
        of the run first; the run's after/, delta/ and before/ metrics become the version's
        tags. Returns the version."""
        if model_id is None:
            model_id = self.log_model(run_id, folder, f"{name}-export", "export")
        mv = self.mlflow.register_model(f"models:/{model_id}", name)
        for k, v in self.client.get_run(run_id).data.metrics.items():
            if k.startswith(("after/", "delta/", "before/")):
                self.client.set_model_version_tag(name, mv.version, k, f"{v:.6g}")
        self.client.set_model_version_tag(name, mv.version, "harness.run_id", run_id)
        return str(mv.version)
