"""The simulator's progress report: a bar in a terminal, a line every few seconds in a log."""

from __future__ import annotations

import io

from simulator.progress import LINE_EVERY_S, Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_log_gets_a_line_every_few_seconds_and_a_last_one() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress(1000, stream=out, clock=clock)  # a StringIO is not a terminal: lines
    p.update(100)
    assert out.getvalue() == ""  # nothing said before LINE_EVERY_S
    clock.now += LINE_EVERY_S
    p.update(250)
    assert out.getvalue() == "250 of 1000 pods placed (25%), 5s elapsed, ~15s left\n"
    clock.now += 1
    p.update(300)
    assert out.getvalue().count("\n") == 1  # at most one line per LINE_EVERY_S
    clock.now += 2
    p.close()
    assert out.getvalue().splitlines()[-1] == "1000 pods placed in 8.0s"


def test_a_terminal_gets_a_bar_redrawn_in_place() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress(10, stream=out, mode="bar", clock=clock)
    clock.now += 1
    p.update(5)
    assert out.getvalue() == "\r[###############...............]  50.0%      1s elapsed, ~1s left "
    p.close()
    assert out.getvalue().endswith("100.0%      1s elapsed, ~0s left \n")


def test_off_says_nothing() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress(10, stream=out, mode="off", clock=clock)
    clock.now += 60
    p.update(5)
    p.close()
    assert out.getvalue() == ""
