"""Losses for fine-tuning and for MPCFormer's two-stage distillation.

Stage 1 (layer-wise, TinyBERT-style, as in MPCFormer):

    L_1 = sum_l MSE_masked(A_s^l, A_t^l) + sum_{l=0..L} MSE_masked(W h_s^l, h_t^l)

where ``A^l`` are the pre-normaliser attention scores ``(B, H, T, T)`` of layer ``l`` (mean over
pairs whose query *and* key are real tokens), ``h^0`` is the embedding output, ``h^l`` the output
of layer ``l`` ``(B, T, D)`` (mean over real tokens and features) and ``W`` a learned projection
(identity when the widths agree).

Stage 2 (prediction layer):

    L_2 = -mean_b sum_c softmax(z_t / tau)_c log softmax(z_s / tau)_c      (classification)
    L_2 = MSE(z_s, z_t)                                                     (regression)

The task loss (fine-tuning and the no-distillation baselines) is cross-entropy, or MSE for
regression.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "masked_attention_mse",
    "masked_hidden_mse",
    "soft_cross_entropy",
    "prediction_distillation_loss",
    "task_loss",
    "HiddenProjection",
    "layer_map",
    "layerwise_loss",
]


def masked_attention_mse(student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """MSE of attention scores ``(B, H, T, T)`` over (query, key) pairs of real tokens only.

    ``attention_mask`` is the tokenizer's ``(B, T)`` 0/1 mask; padded queries and keys, whose
    scores carry arbitrary additive masks, are excluded from the mean.
    """
    real = attention_mask.to(student.dtype)
    pairs = real[:, None, :, None] * real[:, None, None, :]  # (B, 1, T, T)
    pairs = pairs.expand_as(student)  # (B, H, T, T)
    diff = torch.where(pairs > 0, student - teacher, torch.zeros_like(student))
    return diff.square().sum() / pairs.sum().clamp(min=1.0)


def masked_hidden_mse(student: torch.Tensor, teacher: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """MSE of hidden states ``(B, T, D)`` over real tokens (and all ``D`` features)."""
    real = attention_mask.to(student.dtype)[..., None]  # (B, T, 1)
    diff = (student - teacher) * real
    return diff.square().sum() / (real.sum() * student.shape[-1]).clamp(min=1.0)


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's softened distribution, batch mean."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    targets = F.softmax(teacher_logits / temperature, dim=-1)
    log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    return -(targets * log_probs).sum(-1).mean()


def prediction_distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, regression: bool, temperature: float = 1.0
) -> torch.Tensor:
    """Stage-2 loss: soft cross-entropy with ``temperature``, or MSE of the scores for regression."""
    if regression:
        return F.mse_loss(student_logits.view(-1), teacher_logits.view(-1))
    return soft_cross_entropy(student_logits, teacher_logits, temperature)


def task_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """Cross-entropy on class ids, or MSE on float targets for regression (``num_labels == 1``)."""
    if regression:
        return F.mse_loss(logits.view(-1), labels.to(logits.dtype).view(-1))
    return F.cross_entropy(logits, labels)


class HiddenProjection(nn.Module):
    """Maps student hidden states to the teacher's width: ``Linear(d_s, d_t)``, identity if equal."""

    def __init__(self, student_width: int, teacher_width: int):
        super().__init__()
        self.proj: nn.Module = nn.Identity() if student_width == teacher_width else nn.Linear(student_width, teacher_width)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden)


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer index for each student layer 1..L_s (uniform, TinyBERT): ``l * L_t / L_s``.

    Index 0 (embeddings) is mapped to 0 by the caller. Equal depths map layer ``l`` to ``l``.
    """
    if teacher_layers % student_layers:
        raise ValueError(
            f"teacher depth {teacher_layers} must be a multiple of student depth {student_layers} for layer mapping"
        )
    step = teacher_layers // student_layers
    return [(layer + 1) * step for layer in range(student_layers)]


def layerwise_loss(
    student_scores: Sequence[torch.Tensor],
    teacher_scores: Sequence[torch.Tensor],
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    attention_mask: torch.Tensor,
    projection: nn.Module,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage-1 terms ``(attention_loss, hidden_loss)``, summed over layers (see module docstring).

    ``*_scores`` hold one ``(B, H, T, T)`` tensor per layer; ``*_hidden`` hold ``L + 1`` tensors
    ``(B, T, D)`` (embedding output first).
    """
    mapping = layer_map(len(student_scores), len(teacher_scores))
    attention = sum(
        masked_attention_mse(s, teacher_scores[t - 1], attention_mask) for s, t in zip(student_scores, mapping)
    )
    hidden_pairs = [(student_hidden[0], teacher_hidden[0])] + [
        (student_hidden[l + 1], teacher_hidden[t]) for l, t in enumerate(mapping)
    ]
    hidden = sum(masked_hidden_mse(projection(s), t, attention_mask) for s, t in hidden_pairs)
    return attention, hidden  # type: ignore[return-value]

