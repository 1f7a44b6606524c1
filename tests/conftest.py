"""Shared fixtures: float64 by default and an explicit generator per test."""

import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
