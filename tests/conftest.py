"""Shared fixtures and settings: an explicit generator per test, one intra-op thread.

The tests work on small matrices, where a second intra-op thread costs more than it gains (see
``overparam._threads``); the experiment runner makes the same choice.
"""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
