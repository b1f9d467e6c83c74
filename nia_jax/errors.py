"""Exception types raised by nia_jax at its public boundary."""


class NiaError(Exception):
    """Base class of every error that nia_jax raises on purpose."""


class InputError(NiaError, ValueError):
    """An argument, array or file has the wrong shape, type, range or content.

    The message names the offending value, what was expected and how to fix it.
    """


class ConfigError(NiaError, ValueError):
    """A re-ranker or run configuration is invalid (unknown name, value out of range)."""
