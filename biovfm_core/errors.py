"""Errors biovfm raises on purpose: each names what was wrong and where."""

from __future__ import annotations


class BiovfmError(Exception):
    """Base of every error the CLI reports as a one-line message (exit code 2)."""


class ConfigError(BiovfmError):
    """A run config, option or command-line value is invalid."""


class PluginError(BiovfmError):
    """A plugin registered something inconsistent (clashing names, bad factory)."""


class UnknownNameError(ConfigError):
    """A backbone/objective/augmentation/dataset name nobody registered."""


class BadImageError(BiovfmError):
    """One image cannot be decoded; the data pipeline skips and reports it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class NotBuiltError(BiovfmError):
    """A command or feature that exists in the interface but is not implemented yet."""
