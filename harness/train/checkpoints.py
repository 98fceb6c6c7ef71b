"""Trial checkpoints, for preemption: a long trial saves the Trainer's checkpoint every
`checkpoint_minutes` of training (the recipe's top-level key), and a trial that was killed
resumes from its last complete one (Trainer's `resume_from_checkpoint`: weights, optimizer,
scheduler, RNG states, the data position) instead of from step 0.

The killed trial's run is found from the retried Optuna trial (harness.study.sweep); its folder is
`output_dir/<recipe>/<run id>`, on this machine or on a shared `output_dir`. The new trial's MLflow
run gets the loss curve up to the checkpoint from the checkpoint's own log history, so the
curve continues without a gap and without a step logged twice.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

STATE = "trainer_state.json"  # transformers writes it last: a checkpoint that has it is whole


def saver(minutes: float):
    """A TrainerCallback that asks the Trainer to save every `minutes` of training."""
    from transformers import TrainerCallback

    class EveryMinutes(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.last = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() - self.last >= minutes * 60:
                control.should_save = True

        def on_save(self, args, state, control, **kwargs):
            self.last = time.monotonic()
    return EveryMinutes()


def last(folder: str | Path) -> str | None:
    """The folder's last whole checkpoint (a kill during a save leaves one without its state)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
    found = []
    for p in Path(folder).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = p.name.rsplit("-", 1)[1]
        if step.isdigit() and (p / STATE).is_file():
            found.append((int(step), p))
    return str(max(found)[1]) if found else None


def step(checkpoint: str) -> int:
    return json.loads((Path(checkpoint) / STATE).read_text())["global_step"]


def history(checkpoint: str) -> list[tuple[int, dict]]:
    """(step, metrics) as transformers' MLflowCallback logged them up to the checkpoint: the
    numeric values of each entry of the Trainer's log history."""
    state = json.loads((Path(checkpoint) / STATE).read_text())
    return [(entry["step"], {k: v for k, v in entry.items()
                             if k != "step" and isinstance(v, (int, float))})
            for entry in state.get("log_history", [])]


def remove(folder: str | Path) -> None:
    """A finished trial's checkpoints: they only served a resume."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
    for p in Path(folder).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        shutil.rmtree(p, ignore_errors=True)
