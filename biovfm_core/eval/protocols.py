"""The three evaluation protocols: linear probe, weighted kNN, fine-tuning.

Each returns validation and test *scores* in the form ``metrics.py`` scores:
``(N, C)`` class probabilities (multi-class), ``(N,)`` positive-class probability
(binary), ``(N, L)`` per-label probabilities (multi-label).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from biovfm_core.eval.data import Benchmark, preprocess


@dataclass
class ProtocolOutput:
    val_scores: np.ndarray
    test_scores: np.ndarray
    info: dict = field(default_factory=dict)


def _outputs(task: str, num_classes: int) -> int:
    # Binary tasks get two logits and a softmax, as MedMNIST's own baselines.
    return num_classes if task != "binary" else 2


def _loss(task: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if task == "multi-label":
        return F.binary_cross_entropy_with_logits(logits, y.float())
    return F.cross_entropy(logits, y)


def _scores(task: str, logits: torch.Tensor) -> np.ndarray:
    if task == "multi-label":
        return torch.sigmoid(logits).cpu().numpy()
    probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
    return probs[:, 1] if task == "binary" else probs


def _cosine(step: int, total: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * min(step, total) / max(1, total)))


# ------------------------------------------------------------------ linear probe


class LinearHead(nn.Module):
    """The study's head: BatchNorm1d without affine parameters, then a linear layer."""

    def __init__(self, dim: int, outputs: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False)
        self.linear = nn.Linear(dim, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))


def linear_probe(
    features: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    task: str,
    num_classes: int,
    *,
    epochs: int = 10,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    batch_size: int = 128,
    seed: int = 0,
    device: torch.device | str = "cpu",
    train_features: Callable[[int], np.ndarray] | None = None,
) -> ProtocolOutput:
    """Train the head on frozen train features with AdamW and a per-step cosine
    schedule; keep the epoch with the lowest validation loss (the study's recipe).

    ``train_features(epoch)``, when given, supplies that epoch's train features (of
    augmented images, as the study trained its probes); otherwise the cached
    ``features["train"]`` serve every epoch."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = {s: torch.as_tensor(v, dtype=torch.float32, device=device) for s, v in features.items()}
    y = {s: torch.as_tensor(v, device=device) for s, v in labels.items()}
    head = LinearHead(x["train"].shape[1], _outputs(task, num_classes)).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(x["train"])
    # BatchNorm cannot train on a batch of one sample; drop such a remainder.
    steps_per_epoch = max(1, n // batch_size + (1 if n % batch_size > 1 else 0))
    total = epochs * steps_per_epoch
    best = (math.inf, -1, copy.deepcopy(head.state_dict()))
    val_losses, step = [], 0
    for epoch in range(epochs):
        if train_features is not None:
            x["train"] = torch.as_tensor(train_features(epoch), dtype=torch.float32, device=device)
        head.train()
        order = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2:
                continue
            for group in optimizer.param_groups:
                group["lr"] = lr * _cosine(step, total)
            loss = _loss(task, head(x["train"][idx]), y["train"][idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        head.eval()
        with torch.no_grad():
            val_loss = float(_loss(task, head(x["val"]), y["val"]))
        val_losses.append(val_loss)
        if val_loss < best[0]:
            best = (val_loss, epoch, copy.deepcopy(head.state_dict()))
    head.load_state_dict(best[2])
    head.eval()
    with torch.no_grad():
        return ProtocolOutput(
            _scores(task, head(x["val"])),
            _scores(task, head(x["test"])),
            {"best_epoch": best[1] + 1, "best_val_loss": best[0], "val_losses": val_losses},
        )


# --------------------------------------------------------------------------- kNN


@torch.no_grad()
def knn_scores(
    train_x: np.ndarray,
    train_y: np.ndarray,
    query_x: np.ndarray,
    task: str,
    num_classes: int,
    *,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """DINO's weighted kNN: cosine similarity to the train features, the ``k`` nearest
    vote with weight ``exp(sim / T)``; the votes, normalised, are the class (or, for
    multi-label tasks, per-label) probabilities."""
    bank = F.normalize(torch.as_tensor(train_x, dtype=torch.float32, device=device), dim=1)
    ty = torch.as_tensor(train_y, device=device)
    targets = ty.float() if task == "multi-label" else F.one_hot(ty, _outputs(task, num_classes))
    targets = targets.float()
    k = min(k, len(bank))
    out = []
    for start in range(0, len(query_x), chunk):
        q = F.normalize(
            torch.as_tensor(query_x[start : start + chunk], dtype=torch.float32, device=device),
            dim=1,
        )
        sim, idx = (q @ bank.T).topk(k, dim=1)
        w = torch.exp(sim / temperature)
        votes = (w.unsqueeze(2) * targets[idx]).sum(dim=1) / w.sum(dim=1, keepdim=True)
        out.append(votes.cpu())
    probs = torch.cat(out).numpy() if out else np.zeros((0, targets.shape[1]), np.float32)
    return probs[:, 1] if task == "binary" else probs


def knn_probe(
    features: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    task: str,
    num_classes: int,
    *,
    k: int = 20,
    temperature: float = 0.07,
    device: torch.device | str = "cpu",
) -> ProtocolOutput:
    kw = {"k": k, "temperature": temperature, "device": device}
    return ProtocolOutput(
        knn_scores(features["train"], labels["train"], features["val"], task, num_classes, **kw),
        knn_scores(features["train"], labels["train"], features["test"], task, num_classes, **kw),
        {"k": min(k, len(features["train"])), "temperature": temperature},
    )


# -------------------------------------------------------------------- fine-tuning

_BLOCK = re.compile(r"(?:^|\.)(?:blocks|layers|stages)\.(\d+)\.")
_EMBED = ("patch_embed", "cls_token", "pos_embed", "reg_token", "mask_token", "stem")


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """Layer index per parameter name: embeddings 0, block ``i`` → ``i + 1``, the rest
    (final norm, head) ``L + 1``; returns the map and ``L + 1``."""
    names = [n for n, _ in model.named_parameters()]
    blocks = [int(m.group(1)) for n in names if (m := _BLOCK.search(n))]
    last = (max(blocks) + 1 if blocks else 0) + 1
    ids = {}
    for n in names:
        m = _BLOCK.search(n)
        if m:
            ids[n] = int(m.group(1)) + 1
        elif any(e in n for e in _EMBED):
            ids[n] = 0
        else:
            ids[n] = last
    return ids, last


class _Finetuned(nn.Module):
    def __init__(self, backbone: nn.Module, kind: str, outputs: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.kind = kind
        dim = int(backbone.embed_dim) * (2 if kind == "both" else 1)
        self.head = nn.Linear(dim, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.backbone.forward_tokens(x)
        mean = out.patches.mean(dim=1)
        feats = {"cls": out.cls, "mean": mean, "both": torch.cat([out.cls, mean], dim=1)}
        return self.head(feats[self.kind])


def finetune(
    backbone: nn.Module,
    bench: Benchmark,
    *,
    kind: str = "mean",
    size: int,
    epochs: int = 5,
    lr: float = 5e-4,
    layer_decay: float = 0.65,
    weight_decay: float = 0.05,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> ProtocolOutput:
    """Full fine-tuning of a copy of ``backbone`` plus a linear head, AdamW with
    layer-wise lr decay (layer ``i`` of ``L`` gets ``lr * layer_decay ** (L + 1 - i)``,
    as BEiT/MAE), cosine schedule, best epoch by validation loss. No augmentation."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    task, num = bench.scoring, bench.num_classes
    model = _Finetuned(copy.deepcopy(backbone), kind, _outputs(task, num)).to(device)
    for p in model.parameters():
        p.requires_grad_(True)
    ids, last = layer_ids(model)
    groups: dict[int, list] = {}
    for name, p in model.named_parameters():
        groups.setdefault(ids[name], []).append(p)
    param_groups = [
        {"params": ps, "lr_scale": layer_decay ** (last - i)} for i, ps in sorted(groups.items())
    ]
    optimizer = torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay)
    images, labels = {}, {}
    for split, (imgs, ys) in bench.splits.items():
        images[split], labels[split] = imgs, torch.as_tensor(ys, device=device)
    n = len(images["train"])
    total = epochs * math.ceil(n / batch_size)
    best = (math.inf, -1, copy.deepcopy(model.state_dict()))
    val_losses, step = [], 0

    def logits_of(split: str) -> torch.Tensor:
        model.eval()
        parts = []
        with torch.no_grad():
            for s in range(0, len(images[split]), batch_size):
                parts.append(model(preprocess(images[split][s : s + batch_size], size, device)))
        return torch.cat(parts).float()

    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen).numpy()
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"] * _cosine(step, total)
            x = preprocess(images["train"][idx], size, device)
            loss = _loss(task, model(x), labels["train"][torch.as_tensor(idx, device=device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        val_loss = float(_loss(task, logits_of("val"), labels["val"]))
        val_losses.append(val_loss)
        if val_loss < best[0]:
            best = (val_loss, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    return ProtocolOutput(
        _scores(task, logits_of("val")),
        _scores(task, logits_of("test")),
        {"best_epoch": best[1] + 1, "best_val_loss": best[0], "val_losses": val_losses},
    )
