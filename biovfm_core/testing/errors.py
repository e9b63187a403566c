"""The kit's failure: ``ConformanceError`` and the one way its messages are written."""

from __future__ import annotations


class ConformanceError(AssertionError):
    """A plugin does not follow the protocol; the message says what to change."""


def _fail(what: str, problem: str, fix: str) -> ConformanceError:
    return ConformanceError(f"{what}: {problem}. Fix: {fix}")
