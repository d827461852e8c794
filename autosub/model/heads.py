"""Fresh classification heads: SubTuning always trains a new head for the task's number of classes.

``replace_head`` uses the model's own API where it has one (timm's and autosub's ``reset_classifier``),
swaps the final ``nn.Linear`` of torchvision / Hugging Face / generic models, and wraps a bare Hugging Face
encoder in :class:`autosub.text.TextClassifier`. With ``seed`` the new head's weights are reproducible and
the global RNG is left as it was.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch
from torch import nn

from .blocks import find_head, is_hf_model, is_under
from ..errors import BlockDiscoveryError, check_positive

__all__ = ["head_parameters", "replace_head"]

_LOG = logging.getLogger(__name__)


def replace_head(model: nn.Module, num_classes: int, *, seed: int | None = None) -> nn.Module:
    """Give ``model`` a fresh ``num_classes``-way head and return it (a bare HF encoder comes back wrapped)."""
    check_positive("num_classes", num_classes, "replace_head", integer=True)
    num_classes = int(num_classes)
    ref = next(model.parameters(), None)
    with _seeded(seed):
        if callable(getattr(model, "reset_classifier", None)):
            model.reset_classifier(num_classes)
            if ref is not None:  # timm builds the new head on the CPU in float32
                for name in find_head(model, last_linear=False):
                    _to_like(model.get_submodule(name), ref)
            _LOG.debug("replace_head: %s.reset_classifier(%d)", type(model).__name__, num_classes)
            return model
        if is_hf_model(model) and not find_head(model, last_linear=False):
            from .text import TextClassifier

            wrapped = TextClassifier(model, num_classes=num_classes)
            if ref is not None:
                _to_like(wrapped.head, ref)
            _LOG.debug("replace_head: wrapped %s in TextClassifier(%d)", type(model).__name__, num_classes)
            return wrapped
        names = find_head(model)
        if not names:
            raise BlockDiscoveryError(
                f"Cannot find a classification head in {type(model).__name__}: it has no reset_classifier(), no "
                f"fc/head/heads/classifier child and no nn.Linear. Add a head yourself (e.g. model.fc = "
                f"nn.Linear(features, {num_classes})) or wrap the model in an nn.Module that has one."
            )
        for name in names:
            old = model.get_submodule(name)
            if not isinstance(old, nn.Linear):
                raise BlockDiscoveryError(f"The head {name!r} of {type(model).__name__} is a {type(old).__name__}, "
                                          f"not an nn.Linear; give the model a reset_classifier(num_classes) method.")
            new = _to_like(nn.Linear(old.in_features, num_classes, bias=old.bias is not None), old.weight)
            _set_submodule(model, name, new)
            _LOG.debug("replace_head: %s.%s -> Linear(%d, %d)", type(model).__name__, name, old.in_features,
                       num_classes)
    config = getattr(model, "config", None)
    if is_hf_model(model) and config is not None:  # HF *ForSequenceClassification picks its loss from num_labels
        config.num_labels = num_classes
        if hasattr(model, "num_labels"):
            model.num_labels = num_classes
    return model


def head_parameters(model: nn.Module) -> list[str]:
    """Names of the parameters of ``model``'s classification head (empty if it has none)."""
    names = find_head(model, last_linear=not is_hf_model(model))
    return [n for n, _ in model.named_parameters() if is_under(n, names)]


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Seed the CPU generator inside a forked RNG state, so heads are reproducible and global RNG is untouched."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        yield


def _to_like(module: nn.Module, ref: torch.Tensor) -> nn.Module:
    """Move ``module`` to the device (and floating dtype) of ``ref``; a meta reference leaves it as built."""
    if ref.device.type == "meta":
        return module
    return module.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)
