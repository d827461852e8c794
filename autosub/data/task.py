"""Task = train / validation / optional test splits held as tensors; ``prepare_images`` for what models expect.

User data becomes a Task through :func:`autosub.sources.as_task`.

The test split is carried only for the final report; nothing that selects blocks or hyperparameters reads it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError

__all__ = ["Inputs", "Split", "Task", "check_image_size", "concat_splits", "prepare_images", "take", "to_device"]

Inputs = Union[torch.Tensor, Mapping[str, torch.Tensor]]


class Split(Dataset):
    """An indexable split: ``inputs`` (a tensor, or a dict of tensors for text) and integer ``targets``."""

    def __init__(self, inputs: Inputs, targets: torch.Tensor, *, name: str = "split") -> None:
        self.inputs = inputs
        self.targets = targets.long()
        self.name = name

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __getitem__(self, index):
        return take(self.inputs, index), self.targets[index]

    def batch(self, index: torch.Tensor) -> tuple[Inputs, torch.Tensor]:
        """Gather a batch by an index tensor (faster than a DataLoader for in-memory tensors)."""
        return take(self.inputs, index), self.targets[index]

    def subset(self, index: torch.Tensor, *, name: str | None = None) -> "Split":
        return Split(take(self.inputs, index), self.targets[index], name=name or self.name)


def take(inputs: Inputs, index) -> Inputs:
    """Index a tensor or every tensor of a dict along the first dimension."""
    if isinstance(inputs, Mapping):
        return {k: v[index] for k, v in inputs.items()}
    return inputs[index]


def to_device(inputs: Inputs, device: torch.device, *, channels_last: bool = False) -> Inputs:
    """Move a batch (a tensor or a dict of tensors) to ``device``; 4-D images optionally as channels-last."""
    if isinstance(inputs, Mapping):
        return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}
    x = inputs.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def concat_splits(first: "Split", second: "Split", *, name: str) -> "Split":
    """One split holding ``first``'s examples then ``second``'s (train ∪ val for retraining or cross-validation)."""
    a, b = first.inputs, second.inputs
    inputs = {k: torch.cat([a[k], b[k]]) for k in a} if isinstance(a, Mapping) else torch.cat([a, b])
    return Split(inputs, torch.cat([first.targets, second.targets]), name=name)


@dataclass
class Task:
    """A classification task: ``train`` and ``val`` for fitting and selection, ``test`` for the final report only.

    ``train_transform`` is an optional *random* augmentation applied to training batches; when it is set
    the prefix cache is off unless the trainer is given a fixed number of cached views.
    """

    train: Split
    val: Split
    num_classes: int
    test: Split | None = None
    kind: str = "image"  # "image" or "text" ("features" for flat [N, D] vectors)
    train_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    meta: dict = field(default_factory=dict)


_LOG = logging.getLogger(__name__)


def prepare_images(
    x: torch.Tensor | np.ndarray,
    *,
    image_size: int | tuple[int, int] | None,
    channels: int = 3,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> torch.Tensor:
    """Make float32 NCHW images a pretrained net expects: gray→``channels``, antialiased resize, (x-mean)/std.

    ``x`` is [N,H,W], [N,C,H,W] or channels-last [N,H,W,C]; uint8 is scaled to [0,1], floats are taken as [0,1].
    """
    x = torch.as_tensor(x)
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    x = x.float()
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise DataError(f"Images must be [N,H,W] or [N,C,H,W]; got shape {tuple(x.shape)}. Reshape flat pixels "
                        "first, e.g. x.reshape(-1, 1, 28, 28).")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)  # channels-last (PIL / numpy) → NCHW
    if x.shape[1] == 4:
        x = x[:, :3]  # drop alpha
    if x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise DataError(f"Cannot turn {x.shape[1]}-channel images into {channels} channels; "
                            "convert them yourself or pass channels=.")
    if mean is not None and x.numel() and float(x.amax()) > 2.0:
        _LOG.warning("prepare_images: pixel values reach %.1f, which looks like a 0-255 scale; divide by 255 "
                     "first (normalization assumes [0, 1]).", float(x.amax()))
    if image_size is not None:
        size = check_image_size(image_size, "prepare_images")
        if tuple(x.shape[-2:]) != size:
            x = torch.cat([F.interpolate(c, size=size, mode="bilinear", antialias=True, align_corners=False)
                           for c in x.split(512)]) if len(x) else x.new_zeros(0, x.shape[1], *size)
    if mean is not None or std is not None:
        m = torch.tensor(mean if mean is not None else (0.0,) * channels, dtype=torch.float32)
        s = torch.tensor(std if std is not None else (1.0,) * channels, dtype=torch.float32)
        m, s = (m.expand(channels) if m.numel() == 1 else m), (s.expand(channels) if s.numel() == 1 else s)
        if m.numel() != x.shape[1] or s.numel() != x.shape[1]:
            raise DataError(f"mean/std need one value per channel ({x.shape[1]}); got {m.numel()} and {s.numel()}.")
        x = (x - m.view(1, -1, 1, 1)) / s.view(1, -1, 1, 1)
    return x.contiguous()


def check_image_size(image_size: Any, owner: str) -> tuple[int, int]:
    """An int or (H, W) of positive ints → (H, W); a ConfigError naming ``owner`` otherwise."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(
        image_size if isinstance(image_size, (tuple, list)) else ())
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise ConfigError(f"The 'image_size' parameter of {owner} must be a positive int or an (H, W) pair of "
                          f"them; got {image_size!r} instead.")
    return size  # type: ignore[return-value]
