"""Exception types raised by nia_jax at its public boundary, and the hint that messages share."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class NiaError(Exception):
    """Base class of every error that nia_jax raises on purpose."""


class InputError(NiaError, ValueError):
    """An argument, array or file has the wrong shape, type, range or content.

    The message names the offending value, what was expected and how to fix it.
    """


class ConfigError(NiaError, ValueError):
    """A re-ranker or run configuration is invalid (unknown name, value out of range)."""


def did_you_mean(value, choices: Iterable[str]) -> str:
    """Return " Did you mean 'x'?" for the choice closest to ``value``, or "" when none is close.

    Closeness is difflib's ratio with its default cutoff of 0.6, so "sofmax"
    finds "softmax" and "nai" finds "nia", but an unrelated word finds nothing.
    """
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f" Did you mean {close[0]!r}?" if close else ""
