"""The run context (harness.core.context): each command its own clock and ledger, current only
while it runs, and the collector paused through set-up and on again after any command."""
import gc

import pytest

from harness.commands import cli
from harness.core import context


def _eval(model: str, goldenset: str, tmp_path, ctx=None) -> int:
    return cli.main(["eval", model, "--goldenset", goldenset,
                     "--set", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                     "--set", f"reports_dir={tmp_path}/reports", "--set", "eval.batch_size=4",
                     "--set", "eval.forgetting_guard=null",
                     "--set", "tracking.log_evaluations=none"], ctx=ctx)


def test_two_commands_in_one_process_count_apart(tiny_model_dir, tiny_goldenset, tmp_path):
    import mlflow
    outside = context.current()
    counted_outside = outside.ledger.totals()
    first, second = context.RunContext(), context.RunContext()
    assert _eval(tiny_model_dir, tiny_goldenset, tmp_path, first) == 0
    assert _eval(tiny_model_dir, tiny_goldenset, tmp_path) == 0  # a fresh context of its own
    assert _eval(tiny_model_dir, tiny_goldenset, tmp_path, second) == 0
    once, again = first.ledger.totals(), second.ledger.totals()
    assert once["decoded_examples"] == again["decoded_examples"] == 4  # not 8, not 12
    assert once == again  # the same command does the same work, counted from zero each time
    assert first.clock.totals()["score_after"] > 0 and second.clock.totals()["score_after"] > 0
    assert context.current() is outside  # each command's context ended with it
    assert outside.ledger.totals() == counted_outside
    assert gc.isenabled()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("eval")
    logged = [r.data.metrics["work/decoded_examples"] for r in client.search_runs(
        [exp.experiment_id])]
    assert logged == [4.0, 4.0, 4.0]


def test_a_command_is_current_only_inside_its_block():
    outside = context.current()
    counted_outside = outside.ledger.totals()
    assert context.current() is outside  # made once for this thread, then kept
    with context.command() as ctx:
        assert context.current() is ctx is not outside
        with context.timed("data"):
            context.count("records", 3)
        with context.command() as inner:  # a command inside another counts apart
            context.count("records")
        assert context.current() is ctx
    assert ctx.ledger.totals() == {"records": 3} and inner.ledger.totals() == {"records": 1}
    assert set(ctx.clock.totals()) == {"startup", "data"}
    assert context.current() is outside and outside.ledger.totals() == counted_outside


def test_the_collector_is_paused_until_set_up_resumes_it_and_on_after_any_command():
    assert gc.isenabled()
    with context.command(pause_collector=True) as ctx:
        assert not gc.isenabled() and ctx.collector.paused
        frozen = gc.get_freeze_count()
        ctx.collector.resume_frozen()
        assert gc.isenabled() and gc.get_freeze_count() > frozen
        gc.disable()  # resume_frozen works once: a second prepare in the command changes nothing
        ctx.collector.resume_frozen()
        assert not gc.isenabled()
        gc.enable()
    with pytest.raises(RuntimeError), context.command(pause_collector=True):
        assert not gc.isenabled()
        raise RuntimeError("a command that fails before set-up ends")
    assert gc.isenabled()
    with context.command() as ctx:  # not a preparing command: nothing paused, nothing frozen
        assert gc.isenabled() and not ctx.collector.paused
        ctx.collector.resume_frozen()
    assert gc.isenabled()
