"""TextClassifier: a Hugging Face encoder (BertModel, ...) + masked mean pooling + a linear head.

It keeps the encoder as ``.encoder`` so block discovery sees the layer stack (``encoder.encoder.layer[i]``),
and exposes timm's head API (``get_classifier`` / ``reset_classifier``) so the rest of autosub treats it like a
timm model.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import DataError, check_positive

__all__ = ["TextClassifier"]

_LOG = logging.getLogger(__name__)


class TextClassifier(nn.Module):
    """Sequence classifier: ``head(masked_mean(encoder(input_ids, attention_mask).last_hidden_state))``."""

    def __init__(self, encoder: nn.Module, num_classes: int, tokenizer: Any = None) -> None:
        super().__init__()
        check_positive("num_classes", num_classes, "TextClassifier", integer=True)
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.num_features = self._hidden_size(encoder)
        self.num_classes = int(num_classes)
        self.head = nn.Linear(self.num_features, self.num_classes)

    @staticmethod
    def _hidden_size(encoder: nn.Module) -> int:
        config = getattr(encoder, "config", None)
        size = getattr(config, "hidden_size", None) or getattr(config, "dim", None)
        if not isinstance(size, int):
            raise DataError(f"Cannot read the hidden size of {type(encoder).__name__}: it has no config.hidden_size; "
                            "pass a Hugging Face AutoModel (e.g. BertModel).")
        return size

    def forward(self, inputs: Mapping[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Classify a dict with ``input_ids`` and ``attention_mask`` (or a bare ``input_ids`` tensor)."""
        if isinstance(inputs, torch.Tensor):
            input_ids, mask = inputs, None
        else:
            if "input_ids" not in inputs:
                raise DataError(f"TextClassifier needs a dict with 'input_ids' (and 'attention_mask'); got keys "
                                f"{sorted(inputs)}. Tokenize with autosub.as_task(texts, y, tokenizer=...).")
            input_ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        if mask is None:
            pad = getattr(getattr(self.encoder, "config", None), "pad_token_id", None)
            mask = (input_ids != pad) if pad is not None else torch.ones_like(input_ids)
        mask = mask.to(input_ids.device).long()
        hidden = self.encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return self.head(self.pool(hidden, mask))

    @staticmethod
    def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean of the hidden states over the real (unpadded) tokens — how sentence-transformers pools MiniLM."""
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)

    def get_classifier(self) -> nn.Module:
        """The head (timm's API)."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a fresh ``nn.Linear(hidden, num_classes)`` (timm's API)."""
        check_positive("num_classes", num_classes, "TextClassifier.reset_classifier", integer=True)
        ref = self.head.weight
        self.num_classes = int(num_classes)
        self.head = nn.Linear(self.num_features, self.num_classes).to(device=ref.device, dtype=ref.dtype)
