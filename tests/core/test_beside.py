"""The writer thread (harness.core.beside): work done beside the command's own, in order, on
another thread, timed and counted apart and folded into the command's when it waits; an error
there raised where the command waits, after everything submitted has run."""
import threading
import time

import pytest

from harness.core import context


def test_work_runs_in_order_on_another_thread_and_is_folded_in_when_the_command_waits():
    ctx = context.RunContext()
    seen = []

    def job(i):
        def run():
            with context.timed("evaluations"):
                time.sleep(0.05)
                context.count("records", 10)
                seen.append((i, threading.current_thread().name))
        return run
    with context.command(ctx=ctx), ctx.beside.trials():
        for i in range(3):
            context.beside(job(i))
        assert ctx.ledger.totals().get("records", 0) < 30  # not folded in before the wait
        time.sleep(0.3)
        assert seen == []  # its window is closed until a trainer steps (harness.train.steps)
        ctx.beside.open()
        with context.timed("train"):  # the command's own work meanwhile (the next trial)
            time.sleep(0.4)
        context.wait_beside()
        assert [i for i, _ in seen] == [0, 1, 2]
        assert all(name.startswith("harness-beside") for _, name in seen)
        assert ctx.ledger.totals()["records"] == 30
        assert ctx.clock.beside["evaluations"] == pytest.approx(0.15, abs=0.1)
        # its seconds overlapped the command's: logged apart, not among the wall's phases;
        # the command waited for nothing (the `evaluations` phase is its wait)
        assert ctx.clock.seconds["evaluations"] < 0.05
        assert ctx.clock.closing_metrics()["time/beside/evaluations"] == \
            ctx.clock.beside["evaluations"]
        context.wait_beside()  # nothing more: folds nothing twice
        assert ctx.ledger.totals()["records"] == 30


def test_an_error_on_the_thread_is_raised_where_the_command_waits_after_the_rest_ran():
    ctx, ran = context.RunContext(), []

    def fails():
        raise RuntimeError("evaluation run r holds 0 traces")
    with context.command(ctx=ctx), ctx.beside.trials():
        context.beside(fails)
        context.beside(lambda: ran.append("next"))
        with pytest.raises(RuntimeError, match="holds 0 traces"):
            context.wait_beside()
        assert ran == ["next"]  # one failed write does not drop the ones after it
        context.wait_beside()  # raised once


def test_a_command_that_does_not_wait_waits_when_it_ends_and_raises_there():
    ctx, ran = context.RunContext(), []

    def slow():
        time.sleep(0.2)
        ran.append(True)
    with context.command(ctx=ctx), ctx.beside.trials():
        context.beside(slow)
    assert ran == [True]
    late = context.RunContext()
    with pytest.raises(ValueError), context.command(ctx=late), late.beside.trials():
        context.beside(lambda: (_ for _ in ()).throw(ValueError("late")))


def test_a_command_ending_in_an_error_still_writes_what_it_gave_the_thread():
    ran = []

    def slow():
        time.sleep(0.2)
        ran.append(True)
    ctx = context.RunContext()
    with pytest.raises(KeyError), context.command(ctx=ctx), ctx.beside.trials():
        context.beside(slow)
        raise KeyError("the command's own error")
    assert ran == [True]  # written, and the command's error is the one that surfaced


def test_outside_a_sweeps_trials_the_work_is_done_at_once_on_the_commands_thread():
    ctx, seen = context.RunContext(), []
    with context.command(ctx=ctx):
        context.beside(lambda: seen.append(threading.current_thread() is threading.main_thread()))
        assert seen == [True]
        assert not ctx.beside.given
