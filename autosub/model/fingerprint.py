"""Fingerprints that identify what a result was computed on: the frozen trunk of a model, the data of a task."""
from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from .._io import tensor_checksum

__all__ = ["data_fingerprint", "trunk_fingerprint"]


def trunk_fingerprint(model: nn.Module, partition: Any) -> str:
    """sha256 over the names, shapes and values of every tensor outside the head: identifies the frozen trunk.

    Computed on the working copy (the model with autosub's fresh head, see ``autosub.training.setup.with_head``),
    so a wrapped text encoder and a user's ``blocks=`` override fingerprint the same way at search and at load time.
    """
    head = set(partition.head)
    prefix = (partition.head_module + ".") if partition.head_module else None
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        if k in head or (prefix and k.startswith(prefix)):
            continue
        h.update(f"{k}:{tuple(v.shape)}:{v.dtype}".encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def data_fingerprint(*splits: Any) -> str:
    """sha256 over the inputs (a tensor or a dict of tensors) and targets of each split, in order."""
    h = hashlib.sha256()
    for split in splits:
        inputs = split.inputs if isinstance(split.inputs, dict) else {"": split.inputs}
        for k in sorted(inputs):
            v = inputs[k]
            h.update(f"{k}:{tensor_checksum(v) if isinstance(v, torch.Tensor) else type(v).__name__}".encode())
        h.update(tensor_checksum(split.targets).encode())
    return h.hexdigest()
