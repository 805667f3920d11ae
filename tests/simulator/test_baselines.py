"""The baselines behave as their docstrings' formulas say (hand arithmetic in the comments)."""

from __future__ import annotations

import numpy
import pytest

from simulator.baselines import best_fit, common, fgd, kube_default, most_allocated


def a(*x: float) -> numpy.ndarray:  # type: ignore[type-arg]
    return numpy.asarray(x, dtype=float)


@pytest.mark.parametrize(("used", "want"), [
    ([0.5, 0.5, 0.5], 150.0),   # least floor(50) + balanced floor(100 * (1 - 0)) = 150
    ([1.0, 0.0, 0.5], 109.0),   # least 50 + floor(100 * (1 - std(1, 0, .5) = .4082)) = 50 + 59
    ([0.0, 0.0, 0.0], 200.0),   # an empty node: least 100 + balanced 100
], ids=["balanced-half", "unbalanced", "empty"])
def test_kube_default(used: list[float], want: float) -> None:
    assert kube_default.score([a(u) for u in used])[0] == want


@pytest.mark.parametrize(("used", "want"), [
    ([0.5, 0.25, 0.75], 50.0),  # floor(100 * mean(.5, .25, .75)) = 50
    ([1.0, 1.0, 0.99], 99.0),   # floor(99.67)
], ids=["half", "nearly-full"])
def test_most_allocated(used: list[float], want: float) -> None:
    assert most_allocated.score([a(u) for u in used])[0] == want


@pytest.mark.parametrize(("used", "want"), [
    ([0.5, 0.0, 0.5], 50.0),    # floor(100 * (1 - (.5 + .5) / 2)); memory does not count
    ([1.0, 0.3, 0.8], 90.0),    # floor(100 * (1 - (0 + .2) / 2)) = 90
], ids=["half", "tight"])
def test_best_fit(used: list[float], want: float) -> None:
    assert best_fit.score([a(u) for u in used])[0] == want


@pytest.mark.parametrize(("delta", "want"), [
    (0.0, 50.0),       # floor(100 * sigmoid(0)) = 50
    (-1000.0, 26.0),   # floor(100 * 0.2689)
    (1000.0, 73.0),    # floor(100 * 0.7311)
    (-300.0, 42.0),    # floor(100 * 0.4256): small deltas tie on the integer score
    (-250.0, 43.0),
], ids=["zero", "minus-one-gpu", "plus-one-gpu", "minus-300", "minus-250"])
def test_fgd_integer_score(delta: float, want: float) -> None:
    assert fgd.node_score(a(delta))[0] == want


def test_first_fit_takes_lowest_index() -> None:
    assert common.first_fit(numpy.asarray([0, 1, 1, 1]), 2) == ((1, 1), (2, 1))
    assert common.first_fit(numpy.asarray([0, 1, 0, 0]), 2) == ()


def test_tightest_takes_least_idle() -> None:
    # slots 1 and 3 fit; slot 3 has less idle capacity left
    assert common.tightest(numpy.asarray([0, 2, 0, 1]), numpy.asarray([1.0, 0.9, 0.1, 0.4])) == ((3, 1),)


def test_pick_first_on_ties_and_skips_infeasible() -> None:
    assert common.pick(a(5, 7, 7, 9), numpy.asarray([True, True, True, False])) == 1
    assert common.pick(a(5), numpy.asarray([False])) is None
