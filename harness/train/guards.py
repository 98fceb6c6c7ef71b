"""What ends a training run early, each as the harness reports it: a NaN or inf loss or
gradient norm (FiniteLoss -> Diverged), out of GPU memory or a full disk (faults ->
TrainingFault), and a stop signal that was swallowed (StopCheck: harness.core.stopping raises it
again at the next step)."""
from __future__ import annotations

import contextlib
import errno
import gc
import math

from harness.core import stopping
from harness.core.errors import Diverged, TrainingFault
from harness.config.recipe import Recipe


def stop_check():
    """A TrainerCallback that raises a stop signal's interrupt after any training step where
    the first one was swallowed (harness.core.stopping)."""
    from transformers import TrainerCallback

    class StopCheck(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stopping.check()
    return StopCheck()


class FiniteLoss:
    """Stops training at the first NaN or inf loss or gradient norm the trainer logs (the
    harness logs every step unless the recipe says otherwise). The gradient norm matters on its
    own: a NaN gradient turns the weights NaN with the loss still finite, and a GRPO run's next
    rollout then dies in a CUDA device-side assert (sampling from NaN probabilities) that no
    later step can report (seen on an H200 at learning rates 2e-5 and 5e-5)."""

    def __init__(self):
        from transformers import TrainerCallback
        self.bad = None
        outer = self

        class _Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                for key in ("loss", "eval_loss", "grad_norm"):
                    value = (logs or {}).get(key)
                    if value is not None and not math.isfinite(value) and outer.bad is None:
                        outer.bad = (key, value, state.global_step)
                        control.should_training_stop = True
        self.callback = _Callback()

    def check(self, recipe: Recipe, config) -> None:
        if self.bad:
            key, value, step = self.bad
            clip = "" if key == "grad_norm" else " or set trainer.max_grad_norm"
            raise Diverged(f"{key} became {value} at step {step}: training diverged; lower "
                           f"trainer.learning_rate (now {config.learning_rate:g}){clip}",
                           file=recipe.source, key="trainer.learning_rate")


@contextlib.contextmanager
def faults(recipe: Recipe, output_dir: str, checkpointing: str):
    """Out of GPU memory or a full disk -> one TrainingFault saying what to change.
    `checkpointing`: the trainer config's name for activation checkpointing."""
    import torch
    where: dict = {}
    try:
        yield where
    except torch.cuda.OutOfMemoryError:
        step = getattr(getattr(where.get("trainer"), "state", None), "global_step", 0)
        gc.collect()
        torch.cuda.empty_cache()  # so the next trial of a sweep starts with the memory back
        raise TrainingFault(f"out of GPU memory at step {step}: lower "
                            "trainer.per_device_train_batch_size or trainer.max_length, or set "
                            f"trainer.{checkpointing}: true or "
                            "model.quantization: 4bit",
                            file=recipe.source, key="trainer") from None
    except Exception as e:
        # a full disk comes as OSError (ENOSPC), torch.save's RuntimeError ('file write
        # failed') or safetensors' SafetensorError: the last two carry no errno, so the disk
        # under output_dir is asked
        from safetensors import SafetensorError
        if not (getattr(e, "errno", None) == errno.ENOSPC or (
                isinstance(e, (OSError, RuntimeError, SafetensorError))
                and _disk_full(output_dir))):
            raise
        raise TrainingFault(f"disk full writing {getattr(e, 'filename', None) or output_dir}: "
                            "free space, or set output_dir to a larger disk",
                            file=recipe.source, key="output_dir") from None


def _disk_full(path: str) -> bool:
    import shutil
    from pathlib import Path
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free < (1 << 20)
