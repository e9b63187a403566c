"""iBOT masks for the student's global crops, as DINOv2 draws them.

Per batch, a share ``probability`` of the images is masked; their mask ratios are
spread evenly over ``ratio_min_max`` (image ``i`` of ``n`` draws its ratio uniformly in
the ``i``-th of ``n`` equal sub-intervals), the rest stay unmasked, and the order is
shuffled. Each mask is made of rectangular blocks (BEiT's block-wise masking: area
>= 4 patches, log-uniform aspect ratio in [0.3, 1/0.3]) and topped up with single
random patches so that it holds exactly ``int(ratio * N)`` patches; BEiT's generator
may stop short, which would make the requested ratio only an upper bound.
"""

from __future__ import annotations

import math
import random

import torch
from torch import Tensor


def block_mask(
    height: int,
    width: int,
    num_masked: int,
    rng: random.Random,
    *,
    min_block_patches: int = 4,
    max_block_patches: int | None = None,
    min_aspect: float = 0.3,
) -> Tensor:
    """Bool ``(height, width)`` mask with exactly ``num_masked`` True entries."""
    total = height * width
    if not 0 <= num_masked <= total:
        raise ValueError(f"num_masked must be in [0, {total}], got {num_masked}")
    mask = torch.zeros(height, width, dtype=torch.bool)
    max_block = max_block_patches or num_masked
    log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
    count = 0
    while count < num_masked:
        budget = min(num_masked - count, max_block)
        low = min(min_block_patches, budget)
        added = 0
        for _ in range(10):
            area = rng.uniform(low, budget)
            aspect = math.exp(rng.uniform(*log_aspect))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if not (0 < h <= height and 0 < w <= width):
                continue
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            window = mask[top : top + h, left : left + w]
            new = h * w - int(window.sum())
            # Refuse blocks that would overshoot the budget: the ratio stays exact.
            if 0 < new <= budget:
                window.fill_(True)
                added = new
                break
        if added == 0:
            break
        count += added
    if count < num_masked:
        free = (~mask).flatten().nonzero().flatten().tolist()
        for idx in rng.sample(free, num_masked - count):
            mask.view(-1)[idx] = True
    return mask


def sample_ibot_masks(
    batch_size: int,
    grid: tuple[int, int],
    ratio_min_max: tuple[float, float] = (0.1, 0.5),
    probability: float = 0.5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Bool ``(batch_size, H*W)`` masks for ``batch_size`` images of ``grid`` patches."""
    lo, hi = ratio_min_max
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"ratio_min_max must satisfy 0 <= min <= max <= 1, got {ratio_min_max}")
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {probability}")
    # Seeded from torch's RNG so torch.manual_seed makes the masks reproducible.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    rng = random.Random(seed)
    height, width = grid
    n = height * width
    n_masked_images = int(batch_size * probability)
    edges = [lo + (hi - lo) * i / max(1, n_masked_images) for i in range(n_masked_images + 1)]
    masks = torch.zeros(batch_size, n, dtype=torch.bool)
    for i in range(n_masked_images):
        ratio = rng.uniform(edges[i], edges[i + 1])
        masks[i] = block_mask(height, width, int(n * ratio), rng).flatten()
    order = torch.randperm(batch_size, generator=generator)
    return masks[order]
