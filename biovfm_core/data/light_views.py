"""Light views: what loader workers ship, and collating them.

A recipe that offers light views (``supports_light_views``, every recipe of
biovfm_augment) makes them with ``sample_views(..., light=True)``: each view float32,
channel-first, mapped to [0, 1] by the modality's intensity step but not yet clipped,
normalised or repeated to 3 channels, and the sample carries ``norm = (mean, std)``.
A gray image's views are then one channel, a third of the bytes that cross from the
workers through shared memory (2x224 + 8x96 views: 0.70 MB an image against 2.09 MB).
``Batch.finish`` does the rest on the training device.

The values are not quantised (uint8 or uint16 views would change them: the crop's
bilinear resize makes fractions of the stored levels), so a finished batch is
bitwise what the recipe's own finishing step gives in float32
(tests/test_light_views.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

NORM_KEY = "norm"


def finish_views(views: dict[str, Any]) -> dict[str, Any]:
    """A light sample's views finished in numpy (clip, normalise, 3 channels), for a
    batch that mixes light and finished samples or several normalisations."""
    mean, std = (np.asarray(x, np.float32) for x in views[NORM_KEY])
    out: dict[str, Any] = {}
    for kind in ("global", "local"):
        done = []
        for view in views[kind]:
            v = np.empty((len(mean), *view.shape[1:]), np.float32)
            v[...] = view  # a one-channel view is repeated by the broadcast
            np.clip(v, 0.0, 1.0, out=v)
            v -= mean[:, None, None]
            v /= std[:, None, None]
            done.append(v)
        out[kind] = done
    return out


def batch_norm(
    all_views: list[dict[str, Any]],
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The ``(mean, std)`` every sample shares while light, else ``None`` (finish each
    sample in the worker: some are finished already or normalise differently)."""
    norms = {
        tuple(tuple(float(x) for x in part) for part in v[NORM_KEY]) if NORM_KEY in v else None
        for v in all_views
    }
    if len(norms) != 1:
        return None
    (norm,) = norms
    return norm  # type: ignore[return-value]


def same_channels(all_views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Light views with the channel counts of a batch made equal (a gray image in a
    batch with colour ones is repeated to 3 channels here; values unchanged)."""
    channels = {v.shape[0] for s in all_views for kind in ("global", "local") for v in s[kind]}
    if len(channels) == 1:
        return all_views
    width = max(channels)

    def widen(v: np.ndarray) -> np.ndarray:
        if v.shape[0] == width:
            return v
        out = np.empty((width, *v.shape[1:]), np.float32)
        out[...] = v
        return out

    return [
        {**s, **{kind: [widen(v) for v in s[kind]] for kind in ("global", "local")}}
        for s in all_views
    ]
