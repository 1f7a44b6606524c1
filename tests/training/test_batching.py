"""Learning-rate selection and stacking of configurations."""

import math

import pytest
import torch

from overparam.training import select_fastest, stack_configs


def test_select_fastest_lowest_final_gap_skipping_diverged():
    loss = torch.tensor([[1.0, 0.5, 0.3], [1.0, 0.2, 0.1], [1.0, 0.01, math.nan]])
    assert select_fastest(loss, [False, False, True]) == 1
    assert select_fastest(loss, [False, False, False], floor=0.0) == 1  # NaN final is not chosen


def test_select_fastest_breaks_ties_by_earliest_arrival():
    loss = torch.tensor([[1.0, 0.5, 0.0], [1.0, 0.1, 0.0]]) + 2.0
    assert select_fastest(loss, [False, False], floor=2.0) == 1


def test_select_fastest_all_diverged():
    with pytest.raises(ValueError, match="`diverged` must leave at least one configuration"):
        select_fastest(torch.ones(2, 3), [True, True])


def test_stack_configs_rejects_incompatible_shapes():
    a = [torch.zeros(3, 4, dtype=torch.float64)]
    b = [torch.zeros(2, 4, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64)]
    with pytest.raises(ValueError, match="layer 1 must have one shape"):
        stack_configs([a, b])
    with pytest.raises(ValueError, match="at least one factor list"):
        stack_configs([])
