"""Sentinel values from what an objective hands the loop in ``out["signals"]``.

An objective returns references to tensors it computed anyway (no extra work on the
steps that are not logged); the loop turns them into numbers only on log steps:

- ``embeddings`` ``(N, D)``: the evaluation backbone's embeddings of the batch →
  ``rankme`` and ``feature_std``;
- ``teacher_probs`` ``(T, K)``: the targets a teacher hands the student →
  ``teacher_entropy`` and ``prototypes_used``;
- ``koleo_embeddings`` ``(C, B, D)``: the crops KoLeo spreads, crop by crop →
  ``koleo_max``;
- any 0-dim tensor (``loss_at_lnk``, or a third-party objective's own statistic) is
  taken as it is.

Each result is the column ``sentinel/<name>``; the table in ``sentinels.py`` gives the
thresholds of the names it knows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

PREFIX = "sentinel/"
# RankMe's epsilon (Garrido et al. 2023, eq. 1: p_k = s_k / ||s||_1 + eps).
_RANKME_EPS = 1e-7
# lightly's KoLeoLoss eps (as DINOv2's KoLeoLoss: -log(d + 1e-8)).
_KOLEO_EPS = 1e-8


def rankme(embeddings: Tensor) -> Tensor:
    """RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular
    values of ``(N, D)`` embeddings; between 1 (all on one line) and min(N, D)."""
    s = torch.linalg.svdvals(embeddings.float())
    p = s / (s.sum() + _RANKME_EPS) + _RANKME_EPS
    return torch.exp(-(p * p.log()).sum())


def feature_std(embeddings: Tensor) -> Tensor:
    """Mean over dimensions of the per-dimension std of the L2-normalised embeddings:
    about 1/sqrt(D) for features spread over the sphere, 0 when all coincide
    (SimSiam's collapse check, Chen & He 2021, section 4.1)."""
    return F.normalize(embeddings.float(), dim=-1).std(dim=0).mean()


def teacher_entropy(probs: Tensor) -> Tensor:
    """Mean entropy of the rows of ``(T, K)`` targets over ln K: 1 uniform, 0 one-hot."""
    p = probs.float()
    k = p.shape[-1]
    entropy = -(p * p.clamp_min(1e-12).log()).sum(dim=-1).mean()
    ratio = entropy / math.log(k) if k > 1 else entropy * 0
    return ratio.clamp_min(0.0)  # rounding makes a one-hot's entropy -0


def prototypes_used(probs: Tensor) -> Tensor:
    """Distinct argmax prototypes of ``(T, K)`` targets over the most there could be,
    min(T, K)."""
    t, k = probs.shape
    chosen = torch.zeros(k, device=probs.device).index_fill_(0, probs.argmax(dim=-1), 1.0)
    return chosen.sum() / min(t, k)


def koleo_max(crops: Tensor) -> Tensor:
    """Largest per-sample KoLeo term ``-log(min_j ||x_i - x_j|| + eps)`` over the crops
    ``(C, B, D)`` (each crop's batch on its own, as DINOv2 applies KoLeo)."""
    x = F.normalize(crops.float(), dim=-1)
    b = x.shape[1]
    if b < 2:
        return x.new_zeros(())
    distances = torch.cdist(x, x)
    eye = torch.eye(b, dtype=torch.bool, device=x.device)
    nearest = distances.masked_fill(eye, math.inf).amin(dim=-1)
    return (-(nearest + _KOLEO_EPS).log()).max()


def sentinel_values(signals: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``sentinel/<name>`` -> 0-dim tensor for everything ``signals`` allows."""
    out: dict[str, Tensor] = {}
    with torch.no_grad():
        for name, value in signals.items():
            value = value.detach()
            if name == "embeddings":
                out[PREFIX + "rankme"] = rankme(value)
                out[PREFIX + "feature_std"] = feature_std(value)
            elif name == "teacher_probs":
                out[PREFIX + "teacher_entropy"] = teacher_entropy(value)
                out[PREFIX + "prototypes_used"] = prototypes_used(value)
            elif name == "koleo_embeddings":
                out[PREFIX + "koleo_max"] = koleo_max(value)
            elif value.dim() == 0:
                out[PREFIX + name] = value.float()
    return out
