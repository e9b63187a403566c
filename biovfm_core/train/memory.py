"""An approximate memory budget per GPU, from a model's parameter counts and its ViT shape.

Static memory (bytes per parameter, fp32 master weights as biovfm keeps them under
bf16 autocast):

- weights 4 (every parameter, the EMA teacher included),
- gradients 4 and AdamW's two moments 8 (trainable parameters only);
- FSDP (full sharding) divides all three by the number of GPUs.

Activations kept for the backward pass, per ViT block and image, for a sequence of
``s`` tokens of width ``h`` (Korthikanti et al. 2022, "Reducing activation
recomputation in large transformer models", eq. 2, without the ``5as/h`` attention
score term because timm's attention is fused (scaled_dot_product_attention) and keeps
no score matrix)::

    34 * s * h bytes in 16-bit autocast, twice that in fp32

With activation checkpointing a block keeps only its input (``2 * s * h`` bytes,
``4 * s * h`` in fp32) and recomputes the rest, one block at a time. Forward passes
without gradient (DINOv2's teacher) keep nothing. Head logits over ``K`` prototypes
are kept in fp32, about 3 copies (logits, softmax, gradient) per row. An overhead of
2 GiB stands for the CUDA context, the allocator's fragmentation and workspace.

This is a planning number (+-30%), not a measurement: check a real step with
``--set train.profile_steps=5``.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
OVERHEAD_BYTES = 2 * GIB
CARDS_GB = (40, 80)


@dataclass(frozen=True)
class Pass:
    """One forward pass the step keeps activations of: ``images`` crops of ``tokens``
    tokens through ``depth`` blocks of width ``width``."""

    images: int
    tokens: int
    width: int
    depth: int


@dataclass(frozen=True)
class Estimate:
    params: int
    trainable: int
    passes: tuple[Pass, ...]
    logit_bytes: float
    """fp32 head outputs kept: 3 copies of each with gradient, 1 without (targets)."""
    bf16: bool

    def static_bytes(self, shards: int = 1) -> float:
        return (4 * self.params + 12 * self.trainable) / shards

    def activation_bytes(self, checkpointing: bool = False) -> float:
        per_value = 2 if self.bf16 else 4
        sizes = [p.images * p.tokens * p.width for p in self.passes]
        if checkpointing:
            # every block's input, plus the largest block being recomputed
            kept = sum(per_value * n * p.depth for n, p in zip(sizes, self.passes, strict=True))
            kept += 17 * per_value * max(sizes, default=0)
        else:
            kept = sum(
                17 * per_value * n * p.depth for n, p in zip(sizes, self.passes, strict=True)
            )
        return kept + self.logit_bytes

    def total_bytes(self, *, shards: int = 1, checkpointing: bool = False) -> float:
        return self.static_bytes(shards) + self.activation_bytes(checkpointing) + OVERHEAD_BYTES

    def needs(self, card_gb: int, fsdp_gpus: int = 8) -> str:
        """The least a card of ``card_gb`` needs: 'fits', 'activation checkpointing',
        'FSDP', 'FSDP + activation checkpointing' or 'does not fit'."""
        limit = card_gb * 1e9
        for label, shards, ckpt in (
            ("fits", 1, False),
            ("activation checkpointing", 1, True),
            (f"FSDP ({fsdp_gpus} GPUs)", fsdp_gpus, False),
            (f"FSDP ({fsdp_gpus} GPUs) + activation checkpointing", fsdp_gpus, True),
        ):
            if self.total_bytes(shards=shards, checkpointing=ckpt) <= limit:
                return label
        return "does not fit: lower the per-GPU batch"


def gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"
