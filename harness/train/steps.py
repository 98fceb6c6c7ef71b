"""The Trainer's own host work each step, where it repeats what cannot change within a run.

A LoRA step of a small model on a GPU is bound by the host: TRL's loss waits for the forward
(its fused LM head indexes the hidden states with a boolean mask), and all the host does after
that, up to the next forward, is on the step's critical path (docs/benchmarks.md, issue 21).
Trainer spends part of that walking the model, which with LoRA on every linear layer of
SmolLM2-135M is 2,499 modules and 692 parameters. What is trimmed here gives the same results:

- `floating_point_ops` (Trainer's own extension point) adds 6 x tokens x parameters to
  `total_flos` every step, counting the parameters again each time (`num_parameters`, 4.2 ms
  of host time on the H200 machine, 4.7 ms on this 2-core CPU). The count is taken once a
  model: a run does not change it.

And the command's writer thread (harness.core.beside) runs while the trainer steps, where the
training thread waits on the device, rather than while the trainer is built.
"""
from __future__ import annotations

from harness.core import context


class LeanSteps:
    """Mixed in before a trainer class by `lean` (unless the device plan's `lean_steps` is off:
    Trainer's own work, a benchmark's baseline in bench/train_speed.py)."""

    _flops_per_token: tuple | None = None  # (model, Trainer's count for a one-token input)

    def floating_point_ops(self, inputs) -> int:
        import torch
        main = getattr(self.model, "main_input_name", "input_ids")
        x = inputs.get(main) if isinstance(inputs, dict) else None
        if not torch.is_tensor(x):
            return super().floating_point_ops(inputs)
        cached = self._flops_per_token
        if cached is None or cached[0] is not self.model:
            # Trainer's own formula, asked once for a single token: it is linear in the tokens
            cached = self._flops_per_token = (
                self.model, super().floating_point_ops({main: x.new_zeros(1)}))
        return cached[1] * x.numel()


def lean(trainer_class: type) -> type:
    """`trainer_class` with LeanSteps mixed in, under its own name (model cards, logs)."""
    return type(trainer_class.__name__, (LeanSteps, trainer_class),
                {"__doc__": trainer_class.__doc__})


def writer_window(after: int = 3):
    """A callback that opens the command's writer thread (harness.core.beside) once the trainer
    has taken `after` steps (the first ones capture CUDA graphs and compile: host work of its
    own) and closes it when training ends, so the writer's Python shares the interpreter's lock
    with steps that wait on the GPU, not with set-up that does not. (Made here, not at import:
    transformers' Trainer modules cost a command's start-up seconds.)"""
    from transformers import TrainerCallback

    class WriterWindow(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= after:
                context.current().beside.open()

        def on_train_end(self, args, state, control, **kwargs):
            context.current().beside.close()
    return WriterWindow()
