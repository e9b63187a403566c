"""Durations as people read them in progress lines (``42s``, ``3m07s``, ``2h01m``).

Its own module so that commands which never train (``data pack``) can print an ETA
without importing the training loop, and with it torch.
"""

from __future__ import annotations


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
