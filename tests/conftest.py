"""Shared paths, random data and the Hydra runner's import path for the test suite."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
EXPERIMENTS_DIR = REPO_ROOT / "experiments"
TESTS_DIR = Path(__file__).resolve().parent

# experiments/ is not a package: its runners import their neighbours (common, schema)
# by module name, and the tests do the same. tests/ holds the NumPy reference.
for folder in (EXPERIMENTS_DIR, TESTS_DIR):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Draw n Gaussian vectors of dimension d and L2-normalise them (float64)."""
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh seeded generator, so every test draws the same data on every run."""
    return np.random.default_rng(20240607)


@pytest.fixture
def make_unit(rng):
    """Return a function (n, d) -> unit-norm float64 rows drawn from the test's generator."""
    return lambda n, d: unit_rows(rng, n, d)
