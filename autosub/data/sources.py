"""as_task(): arrays, tensors, torch Datasets, ImageFolder directories or texts → a seeded, validated Task.

Splits are stratified and seeded (scikit-learn), low-data subsampling touches the train split only, and every
problem (labels not 0..C-1, a class missing, unsplittable data, texts without a tokenizer) is a DataError that says
how to fix it — before any example is materialized.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .task import Inputs, Split, Task, check_image_size, prepare_images
from ..errors import ConfigError, DataError, check_positive

__all__ = ["as_task", "warn_overlap"]

_LOG = logging.getLogger(__name__)
_PROGRESS_ABOVE = 2000  # show a tqdm bar when materializing more examples than this
_LABEL_FIX = "map labels to 0..C-1, e.g. with sklearn LabelEncoder"


@dataclass
class _Source:
    """Labels known up front plus a loader that materializes only the examples a split keeps."""

    labels: np.ndarray
    load: Callable[[np.ndarray], Inputs]
    what: str
    classes: list[str] | None = None


def as_task(
    data: Any,
    targets: Any = None,
    *,
    test: Any = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    samples_per_class: int | None = None,
    max_samples: int | None = None,
    num_classes: int | None = None,
    tokenizer: Any = None,
    max_length: int = 64,
    image_size: int | tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    train_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Task:
    """Build a Task from arrays, a torch Dataset, an ImageFolder path or texts: a stratified seeded train/val split,
    then low-data subsampling of train only; everything is validated before any example is loaded.

    Images become float32 NCHW; they are preprocessed with :func:`prepare_images` when ``image_size``, ``mean`` or
    ``std`` is given (always for ImageFolder, whose default mean/std is 0.5). Texts need a Hugging Face ``tokenizer``.
    A Task passes through, subsampled when ``samples_per_class``/``max_samples`` is given (its val/test unchanged).
    """
    _check_options(val_fraction, samples_per_class, max_samples, num_classes, max_length, seed)
    if image_size is not None:
        check_image_size(image_size, "as_task")
    if isinstance(data, Task):  # already split: only the low-data subsample of its train part applies
        if max_samples is not None and max_samples < data.num_classes:
            raise ConfigError(f"The 'max_samples' parameter of as_task must be at least the number of classes "
                              f"({data.num_classes}); got {max_samples} instead.")
        keep = _subsample(np.arange(len(data.train)), data.train.targets.cpu().numpy(), seed=seed,
                          per_class=samples_per_class, total=max_samples)
        return data if len(keep) == len(data.train) else replace(data, train=data.train.subset(torch.as_tensor(keep)))
    pre = dict(tokenizer=tokenizer, max_length=max_length, image_size=image_size, mean=mean, std=std)
    src = _source(data, targets, what="data", **pre)
    test_src = None
    if test is not None:
        tx, ty = test if isinstance(test, tuple) and len(test) == 2 and not isinstance(test[0], str) else (test, None)
        test_src = _source(tx, ty, what="test", **pre)
    n_cls = _check_labels(src.labels, num_classes, "data")
    if test_src is not None:
        _check_labels(test_src.labels, n_cls, "test", require_all=False)
        if src.classes is not None and test_src.classes is not None and src.classes != test_src.classes:
            raise DataError(f"The test folder's classes {test_src.classes} differ from the training folder's "
                            f"{src.classes}; give both the same class sub-directories.")
    _check_splittable(src.labels, n_cls, val_fraction)
    if max_samples is not None and max_samples < n_cls:
        raise ConfigError(f"The 'max_samples' parameter of as_task must be at least the number of classes "
                          f"({n_cls}) so every class keeps an example; got {max_samples} instead.")

    train_idx, val_idx = _split(src.labels, val_fraction, seed)
    n_full = len(train_idx)
    train_idx = _subsample(train_idx, src.labels, seed=seed, per_class=samples_per_class, total=max_samples)
    y = torch.as_tensor(src.labels, dtype=torch.long)
    train = Split(src.load(train_idx), y[train_idx], name="train")
    val = Split(src.load(val_idx), y[val_idx], name="val")
    test_split = None
    if test_src is not None:
        all_idx = np.arange(len(test_src.labels))
        test_split = Split(test_src.load(all_idx), torch.as_tensor(test_src.labels, dtype=torch.long), name="test")
    meta = {"seed": seed, "val_fraction": val_fraction, "train_before_subsampling": n_full,
            "samples_per_class": samples_per_class, "max_samples": max_samples, "source": type(data).__name__}
    if src.classes is not None:
        meta["classes"] = src.classes
    kind = _kind(train.inputs)
    if kind == "image" and (image_size is not None or mean is not None or std is not None):
        meta.update(image_size=image_size, mean=mean, std=std)
    _LOG.info("as_task: %d classes, train %d (of %d), val %d, test %s", n_cls, len(train), n_full, len(val),
              len(test_split) if test_split is not None else "none")
    if test_split is not None:
        warn_overlap(train, val, test_split)
    return Task(train=train, val=val, num_classes=n_cls, test=test_split, kind=kind,
                train_transform=train_transform, meta=meta)


# ---------------------------------------------------------------------------------------------- validation
def _check_options(val_fraction, samples_per_class, max_samples, num_classes, max_length, seed) -> None:
    ok = isinstance(val_fraction, (float, int)) and not isinstance(val_fraction, bool) and 0 < val_fraction < 1
    if not ok:
        raise ConfigError("The 'val_fraction' parameter of as_task must be a float in the open interval (0, 1), "
                          f"e.g. 0.2; got {val_fraction!r} instead.")
    for name, value in (("samples_per_class", samples_per_class), ("max_samples", max_samples),
                        ("num_classes", num_classes)):
        if value is not None:
            check_positive(name, value, "as_task", integer=True)
    if num_classes is not None and num_classes < 2:
        raise ConfigError(f"The 'num_classes' parameter of as_task must be at least 2; got {num_classes!r} instead.")
    check_positive("max_length", max_length, "as_task", integer=True)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ConfigError(f"The 'seed' parameter of as_task must be an int; got {seed!r} instead.")


def _check_labels(labels: np.ndarray, num_classes: int | None, what: str, *, require_all: bool = True) -> int:
    """Labels must be integers 0..C-1; returns C."""
    if labels.dtype == bool:
        labels = labels.astype(np.int64)
    if labels.ndim != 1:
        raise DataError(f"The {what} labels must be a 1-D array of class indices; got shape {labels.shape}. "
                        "For one-hot labels use labels.argmax(1).")
    if labels.dtype.kind not in "iu":
        example = labels[:3].tolist()
        raise DataError(f"The {what} labels must be integers 0..C-1; got dtype {labels.dtype} (e.g. {example}). "
                        f"Please {_LABEL_FIX}.")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0:
        raise DataError(f"The {what} labels must be integers 0..C-1; got a negative label {lo}. Please {_LABEL_FIX}.")
    if num_classes is not None:
        if hi >= num_classes:
            raise DataError(f"The {what} labels must be integers 0..{num_classes - 1} for num_classes="
                            f"{num_classes}; got label {hi}. Raise num_classes or {_LABEL_FIX}.")
        return int(num_classes)
    n_cls = hi + 1
    missing = sorted(set(range(n_cls)) - set(np.unique(labels).tolist()))
    if require_all and missing:
        raise DataError(f"The {what} labels must be integers 0..C-1 with every class present; classes "
                        f"{missing[:10]} never occur (labels go up to {hi}). Please {_LABEL_FIX}, or pass "
                        "num_classes= if those classes are truly absent.")
    if n_cls < 2:
        raise DataError(f"The {what} labels hold a single class ({lo}); classification needs at least 2 classes.")
    return n_cls


def _check_splittable(labels: np.ndarray, n_cls: int, val_fraction: float) -> None:
    n = len(labels)
    n_val = math.ceil(val_fraction * n)
    n_train = n - n_val
    present = np.unique(labels)
    counts = np.bincount(labels, minlength=n_cls)[present]
    if n < n_cls:
        raise DataError(f"Got {n} examples for {n_cls} classes: fewer examples than classes. Collect at least 2 "
                        "examples per class (one for train, one for validation).")
    if counts.min() < 2:
        rare = present[counts < 2].tolist()[:10]
        raise DataError(f"Classes {rare} have only 1 example; a stratified train/val split needs at least 2 "
                        "per class. Collect more examples, or drop or merge the rare classes.")
    if n_val < len(present) or n_train < len(present):
        need = math.ceil(len(present) / min(val_fraction, 1 - val_fraction))
        raise DataError(f"A stratified split with val_fraction={val_fraction} of {n} examples gives {n_train} train "
                        f"/ {n_val} val, fewer than the {len(present)} classes. Use at least {need} examples or "
                        "move val_fraction closer to 0.5.")


# ------------------------------------------------------------------------------------------------- splits
def _split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    tr, va = train_test_split(idx, test_size=val_fraction, stratify=labels, random_state=seed)
    return np.sort(tr), np.sort(va)


def _subsample(idx: np.ndarray, labels: np.ndarray, *, seed: int, per_class: int | None,
               total: int | None) -> np.ndarray:
    """Seeded, stratified low-data subsample of ``idx``: at most ``per_class`` per class, then ``total`` overall."""
    rng = np.random.default_rng(seed)
    y = labels[idx]
    if per_class is not None:
        keep = []
        for c in np.unique(y):
            members = idx[y == c]
            if len(members) < per_class:
                _LOG.warning("as_task: class %d has only %d training examples (< samples_per_class=%d); "
                             "keeping all of them.", int(c), len(members), per_class)
            keep.append(rng.permutation(members)[:per_class])
        idx = np.sort(np.concatenate(keep))
        y = labels[idx]
    if total is not None and total < len(idx):
        classes, counts = np.unique(y, return_counts=True)
        quota = np.maximum(1, np.floor(counts * total / len(idx))).astype(int)
        order = np.argsort(-(counts * total / len(idx) - quota), kind="stable")  # largest remainders first
        for i in order[: max(0, total - int(quota.sum()))]:
            quota[i] += 1
        while quota.sum() > total:  # the minimum of one per class can overshoot
            quota[np.argmax(quota)] -= 1
        idx = np.sort(np.concatenate([rng.permutation(idx[y == c])[:q] for c, q in zip(classes, quota)]))
    return idx


# ------------------------------------------------------------------------------------------------ sources
def _source(data: Any, targets: Any, *, what: str, tokenizer, max_length, image_size, mean, std) -> _Source:
    """Inspect ``data`` (cheaply) and return its labels and a loader; raise DataError for what cannot work."""
    def images(x: torch.Tensor) -> torch.Tensor:
        if image_size is None and mean is None and std is None:
            return x.float() if x.dtype != torch.uint8 else x.float().div_(255.0)
        return prepare_images(x, image_size=image_size, mean=mean, std=std)

    if isinstance(data, (str, Path)):
        if targets is not None:
            raise DataError(f"The {what} is an ImageFolder directory, whose labels come from its sub-folders; "
                            "do not pass targets.")
        return _folder_source(Path(data), what=what, image_size=image_size, mean=mean, std=std)
    if _is_texts(data):
        texts = [str(t) for t in data]
        if tokenizer is None:
            raise DataError(f"The {what} is a list of texts but no tokenizer was given; pass tokenizer=, e.g. "
                            "autosub.zoo.minilm_l6().tokenizer or transformers.AutoTokenizer.from_pretrained(path).")
        labels = _labels(targets, len(texts), what)

        def load_text(idx: np.ndarray) -> Inputs:
            enc = tokenizer([texts[i] for i in idx], padding="max_length", truncation=True,
                            max_length=max_length, return_tensors="pt")
            return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}
        return _Source(labels, load_text, what)
    if targets is None and isinstance(data, tuple) and len(data) == 2:
        data, targets = data
    if isinstance(data, (np.ndarray, torch.Tensor)):
        x = torch.as_tensor(data) if not (isinstance(data, np.ndarray) and data.dtype.kind in "OUS") else None
        if x is None or not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int64, torch.int32)):
            raise DataError(f"The {what} inputs must be numeric; got dtype {data.dtype}. For texts pass a list of "
                            "str with a tokenizer.")
        if x.ndim == 0 or len(x) == 0:
            raise DataError(f"The {what} is empty (shape {tuple(x.shape)}); pass at least 2 examples per class.")
        if targets is None:
            raise DataError(f"The {what} is an array but no targets were given; call as_task(X, y).")
        labels = _labels(targets, len(x), what)
        if x.ndim == 2 and (image_size is not None or mean is not None):
            raise DataError(f"The {what} inputs are flat vectors {tuple(x.shape)} but image preprocessing was asked "
                            "for; reshape them to [N,C,H,W] (e.g. x.reshape(-1, 1, 28, 28)).")
        if x.ndim == 2 and x.dtype in (torch.int64, torch.int32):  # token ids: keep them integers
            return _Source(labels, lambda idx: x[torch.as_tensor(idx)].long(), what)
        return _Source(labels, lambda idx: images(x[torch.as_tensor(idx)]), what)
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        if targets is not None:
            raise DataError(f"The {what} is a Dataset yielding (x, y); do not pass targets.")
        return _dataset_source(data, what=what, images=images)
    raise DataError(f"Cannot build a task from {type(data).__name__}; pass an array/tensor with targets, a torch "
                    "Dataset of (x, y), an ImageFolder directory, or a list of texts with targets and a tokenizer.")


def _is_texts(data: Any) -> bool:
    if isinstance(data, (list, tuple)) and len(data) > 0:
        return all(isinstance(t, str) for t in data)
    if isinstance(data, np.ndarray) and data.ndim == 1 and data.dtype.kind in "OU" and len(data):
        return isinstance(data[0], str)
    return type(data).__name__ == "Series" and len(data) > 0 and isinstance(data.iloc[0], str)


def _labels(targets: Any, n: int, what: str) -> np.ndarray:
    if targets is None:
        raise DataError(f"The {what} has no targets; pass them as as_task(X, y).")
    if isinstance(targets, torch.Tensor):
        labels = targets.detach().cpu().numpy()
    else:
        labels = np.asarray(targets)
    if labels.ndim == 0 or len(labels) != n:
        got = "a scalar" if labels.ndim == 0 else str(len(labels))
        raise DataError(f"The {what} has {n} examples but {got} targets; X and y must have the same length.")
    if n == 0:
        raise DataError(f"The {what} is empty; pass at least 2 examples per class.")
    return labels.astype(np.int64) if labels.dtype == bool else labels


def _folder_source(root: Path, *, what: str, image_size, mean, std) -> _Source:
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise DataError(f"The {what} directory {str(root)!r} does not exist; pass an ImageFolder root with one "
                        "sub-directory per class.")
    try:
        folder = ImageFolder(str(root))
    except FileNotFoundError as e:
        raise DataError(f"{str(root)!r} is not a usable ImageFolder ({e}); it needs one sub-directory per class "
                        "holding image files (.png, .jpg, ...).") from None
    mean = (0.5, 0.5, 0.5) if mean is None else mean
    std = (0.5, 0.5, 0.5) if std is None else std

    def load(idx: np.ndarray) -> torch.Tensor:
        from torchvision.transforms.functional import pil_to_tensor

        out = []
        for i in _progress(idx, f"loading {what} images"):
            img = folder.loader(folder.samples[i][0]).convert("RGB")
            out.append(prepare_images(pil_to_tensor(img)[None], image_size=image_size, mean=mean, std=std))
        return _stack(out, what)
    return _Source(np.asarray(folder.targets, dtype=np.int64), load, what, classes=list(folder.classes))


def _dataset_source(ds: Any, *, what: str, images: Callable[[torch.Tensor], torch.Tensor]) -> _Source:
    n = len(ds)
    if n == 0:
        raise DataError(f"The {what} Dataset is empty; pass at least 2 examples per class.")
    known = getattr(ds, "targets", None)
    if known is not None and len(known) == n:  # torchvision convention: labels without loading the inputs
        labels = np.asarray(torch.as_tensor(known))
        return _Source(labels, lambda idx: images(_stack([_item(ds[int(i)], what)[0] for i in
                                                          _progress(idx, f"loading {what}")], what)), what)
    xs, ys = [], []
    for i in _progress(range(n), f"loading {what}"):
        x, y = _item(ds[i], what)
        xs.append(x)
        ys.append(y)
    x = _stack(xs, what)
    labels = np.asarray(ys)
    return _Source(labels, lambda idx: images(x[torch.as_tensor(idx)]), what)


def _kind(inputs: Inputs) -> str:
    """"text" for token dicts / integer id matrices, "image" for [N,C,H,W] (or [N,H,W]), else "features"."""
    if isinstance(inputs, Mapping) or (inputs.ndim == 2 and not inputs.is_floating_point()):
        return "text"
    return "image" if inputs.ndim >= 3 else "features"


def _item(item: Any, what: str) -> tuple[torch.Tensor, Any]:
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise DataError(f"Each {what} Dataset item must be an (x, y) pair; got {type(item).__name__}.")
    x, y = item
    if hasattr(x, "convert") and hasattr(x, "size"):  # a PIL image
        from torchvision.transforms.functional import pil_to_tensor
        x = pil_to_tensor(x.convert("RGB"))
    if isinstance(y, torch.Tensor):
        y = y.item()
    return torch.as_tensor(x), y


def _stack(xs: list[torch.Tensor], what: str) -> torch.Tensor:
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) > 1:
        raise DataError(f"The {what} examples have different shapes {sorted(shapes)[:3]}; pass image_size= to "
                        "resize them to one size.")
    return torch.cat(xs) if xs and xs[0].ndim == 4 else torch.stack(xs) if xs else torch.empty(0)


def _progress(it, desc: str):
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, disable=len(it) <= _PROGRESS_ABOVE, leave=False)


def warn_overlap(train: Split, val: Split, test: Split) -> int:
    """Warn when test examples also occur (byte for byte) in train or val: a test score on them is not held out.

    Returns how many test examples overlap. Compares row hashes, so it costs one pass over the data.
    """
    import hashlib

    def digests(split: Split) -> list[bytes]:
        parts = list(split.inputs.values()) if isinstance(split.inputs, Mapping) else [split.inputs]
        flat = [p.reshape(len(split), -1).contiguous().cpu().numpy() for p in parts]
        return [hashlib.blake2b(b"".join(f[i].tobytes() for f in flat), digest_size=16).digest()
                for i in range(len(split))]

    seen = set(digests(train)) | set(digests(val))
    shared = sum(d in seen for d in digests(test))
    if shared:
        _LOG.warning("as_task: %d of %d test examples also appear in train/val; their test score is not a held-out "
                     "score. De-duplicate the data before splitting.", shared, len(test))
        warnings.warn(f"{shared} of {len(test)} test examples also appear in the training data (train/val); the test "
                      "score will overstate accuracy. De-duplicate before splitting.", UserWarning, stacklevel=3)
    return shared
