"""From command-line specs to objects: ``--model SPEC`` → an ``nn.Module``, ``--data SPEC`` → a Task.

Each spec is checked cheaply first (:func:`check_model_spec`, :func:`check_data_spec`: files exist, formats and
columns are known, the model name resolves) so that a typo fails in a second, before a model is built or a dataset
read. Nothing is downloaded: zoo names load weights shipped in pip packages, timm names take ``--weights FILE``.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..errors import ConfigError, DataError, MissingDependencyError, WeightsError

__all__ = ["DATASETS", "ZOO_MODELS", "DataSpec", "ModelSpec", "check_data_spec", "check_model_spec", "load_model",
           "load_task"]

if TYPE_CHECKING:  # torch is imported when a model is built, not for `autosub --help`
    from torch import nn

log = logging.getLogger(__name__)

#: Models with real weights that ship in pip packages (``autosub[data]``); they win over timm names of the same name.
ZOO_MODELS = ("efficientnet_lite0", "minilm_l6")
#: Real datasets that ship in pip packages (``autosub.datasets``).
DATASETS = ("mnist", "digits", "fine_food")
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
_ENTRY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class ModelSpec:
    """A resolved ``--model``: its kind (zoo, timm, hf, callable) and what to load."""

    kind: str
    name: str
    weights: Path | None = None
    key_map: str = "exact"

    def describe(self) -> str:
        extra = f" + {self.weights}" if self.weights else (" (random init)" if self.kind == "timm" else "")
        return f"{self.kind}:{self.name}{extra}"


@dataclass(frozen=True)
class DataSpec:
    """A resolved ``--data``: its kind (dataset, folder, npz, table) and where it is."""

    kind: str
    name: str
    path: Path | None = None


# --------------------------------------------------------------------------------------------------- models
def check_model_spec(spec: str, *, weights: str | None = None, key_map: str = "exact") -> ModelSpec:
    """Resolve ``--model`` without building anything; raise ConfigError / WeightsError for what cannot work."""
    wpath = Path(weights).expanduser() if weights else None
    if wpath is not None and not wpath.is_file():
        raise WeightsError(f"--weights {weights!r} does not exist; give the path of a .safetensors (or tensors-only "
                           "torch) file.")
    if _ENTRY.match(spec) and not Path(spec).exists():
        _refuse_weights(wpath, spec, "a module:function builds its own weights")
        module = spec.partition(":")[0]
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        if found is None and not (Path.cwd() / (module.replace(".", "/") + ".py")).is_file():
            raise ConfigError(f"--model {spec!r}: cannot find the module {module!r} (looked on sys.path and in the "
                              "current directory); give module:function of an importable module.")
        return ModelSpec("callable", spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        _refuse_weights(wpath, spec, "a Hugging Face directory holds its own weights")
        if not (path / "config.json").is_file():
            raise ConfigError(f"--model {spec!r} is a directory without config.json; a directory model must be a "
                              "Hugging Face model saved with save_pretrained() (config.json + weights + tokenizer).")
        return ModelSpec("hf", str(path))
    if spec in ZOO_MODELS:
        _refuse_weights(wpath, spec, "zoo models load the weights their package ships")
        return ModelSpec("zoo", spec)
    import timm

    if path.suffix in (".safetensors", ".pt", ".pth", ".bin") or path.is_file():
        arch = path.stem if timm.is_model(path.stem) else "ARCH"
        raise ConfigError(f"--model {spec!r} looks like a weights file; name the architecture in --model and the "
                          f"file in --weights, e.g. --model {arch} --weights {spec}.")
    if timm.is_model(spec):
        return ModelSpec("timm", spec, wpath, key_map)
    import difflib

    similar = difflib.get_close_matches(spec, timm.list_models(), n=5, cutoff=0.7) if spec else []
    raise ConfigError(f"--model {spec!r} is not a zoo name ({', '.join(ZOO_MODELS)}), a timm model name, a Hugging "
                      f"Face directory or module:function{f'; similar timm names: {similar}' if similar else ''}.")


def _refuse_weights(weights: Path | None, spec: str, why: str) -> None:
    if weights is not None:
        raise ConfigError(f"--weights applies to timm model names only; --model {spec!r} takes none ({why}).")


def load_model(spec: ModelSpec) -> "nn.Module":
    """Build the network a checked spec names (weights from local files only)."""
    if spec.kind == "zoo":
        from ..model import zoo

        return getattr(zoo, spec.name)()
    if spec.kind == "timm":
        if spec.weights is None:
            import timm

            log.warning("--model %s has no --weights: its weights are random (give --weights FILE for pretrained "
                        "ones; nothing is downloaded)", spec.name)
            return timm.create_model(spec.name, pretrained=False).eval()
        from ..model.zoo import from_weights

        return from_weights(spec.name, spec.weights, key_map=spec.key_map)  # type: ignore[arg-type]
    if spec.kind == "hf":
        return _load_hf(Path(spec.name))
    return _load_callable(spec.name)


def _load_hf(path: Path) -> "nn.Module":
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError:
        raise MissingDependencyError("A Hugging Face directory --model needs transformers: pip install "
                                     "'autosub[data]' (or pip install transformers).") from None
    from ..model.text import TextClassifier

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise ConfigError(f"--model {str(path)!r} has no tokenizer ({type(exc).__name__}: {exc}). Directories are "
                          "loaded as text encoders with their tokenizer; for another kind of model pass "
                          "module:function that returns an nn.Module giving logits.") from None
    try:
        encoder = AutoModel.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise WeightsError(f"Could not load the Hugging Face model in {str(path)!r}: {type(exc).__name__}: "
                           f"{exc}.") from None
    return TextClassifier(encoder, 2, tokenizer=tokenizer).eval()


def _load_callable(spec: str) -> "nn.Module":
    module, _, attr = spec.partition(":")
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as `python -m` would: module:function from the working directory
    try:
        fn: Callable[[], Any] = getattr(importlib.import_module(module), attr)
    except AttributeError:
        raise ConfigError(f"--model {spec!r}: the module {module!r} has no {attr!r}.") from None
    except ImportError as exc:
        raise ConfigError(f"--model {spec!r}: importing {module!r} failed: {exc}.") from None
    model = fn()
    from torch import nn

    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {spec!r} returned {type(model).__name__}, not a torch.nn.Module.")
    return model.eval()


# ----------------------------------------------------------------------------------------------------- data
def check_data_spec(spec: str, *, test: str | None = None, text_column: str = "text", label_column: str = "label",
                    x_key: str = "x", y_key: str = "y") -> DataSpec:
    """Resolve ``--data`` (and ``--test-data``) without reading the data; raise DataError for what cannot work."""
    path = Path(spec).expanduser()
    if spec in DATASETS and not path.exists():
        if test is not None:
            raise DataError(f"--test-data applies to files and folders; the {spec!r} dataset has its own test split.")
        return DataSpec("dataset", spec)
    kind = _file_kind(path, "--data", spec)
    _check_columns(path, kind, "--data", text_column, label_column, x_key, y_key)
    if test is not None:
        tpath = Path(test).expanduser()
        tkind = _file_kind(tpath, "--test-data", test)
        if tkind != kind:
            raise DataError(f"--test-data {test!r} is a {tkind} but --data is a {kind}; give the same kind of source.")
        _check_columns(tpath, tkind, "--test-data", text_column, label_column, x_key, y_key)
    return DataSpec(kind, spec, path)


def _file_kind(path: Path, flag: str, spec: str) -> str:
    if path.is_dir():
        return "folder"
    if not path.exists():
        hint = f"a dataset name ({', '.join(DATASETS)}), " if flag == "--data" else ""
        raise DataError(f"{flag} {spec!r} does not exist; give {hint}an ImageFolder directory or a .npz, .csv or "
                        ".parquet file.")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix in TABLE_SUFFIXES:
        return "table"
    raise DataError(f"{flag} {spec!r}: unknown file type {suffix or '(no suffix)'!r}; give an ImageFolder directory "
                    "or a .npz, .csv or .parquet file.")


def _check_columns(path: Path, kind: str, flag: str, text_column: str, label_column: str, x_key: str,
                   y_key: str) -> None:
    if kind == "npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.files)
        except Exception as exc:
            raise DataError(f"{flag} {str(path)!r} is not a readable .npz file: {exc}.") from None
        missing = [k for k in (x_key, y_key) if k not in keys]
        if missing and not (flag == "--test-data" and {"x_test", "y_test"} <= set(keys)):
            raise DataError(f"{flag} {str(path)!r} has arrays {keys} but not {missing}; name the inputs and labels "
                            "with --x-key / --y-key.")
    elif kind == "table":
        columns = _table_columns(path, flag)
        if label_column not in columns:
            raise DataError(f"{flag} {str(path)!r} has no label column {label_column!r}; its columns are "
                            f"{columns[:20]}. Name it with --label-column.")


def _table_columns(path: Path, flag: str) -> list[str]:
    import pandas as pd

    try:
        if path.suffix.lower() == ".csv":
            return [str(c) for c in pd.read_csv(path, nrows=0).columns]
        import pyarrow.parquet as pq

        return [str(c) for c in pq.read_schema(path).names]
    except ImportError:
        raise MissingDependencyError(f"{flag} {path.name} is Parquet, which needs pyarrow: pip install pyarrow.") \
            from None
    except Exception as exc:
        raise DataError(f"{flag} {str(path)!r} is not a readable table: {type(exc).__name__}: {exc}.") from None


def load_task(spec: DataSpec, model: "nn.Module", *, test: str | None = None, image_size: int | None = None,
              max_length: int = 64, samples_per_class: int | None = None, max_samples: int | None = None,
              val_fraction: float = 0.2, seed: int = 0, text_column: str = "text", label_column: str = "label",
              x_key: str = "x", y_key: str = "y") -> Any:
    """The Task a checked spec names, preprocessed for ``model`` (image size / mean / std, or its tokenizer)."""
    from ..data import datasets
    from ..data.sources import as_task

    low = dict(samples_per_class=samples_per_class, max_samples=max_samples, seed=seed)
    if spec.kind == "dataset":
        if spec.name == "fine_food":
            return datasets.fine_food(model=model, max_length=max_length, val_fraction=val_fraction, **low)
        loader = getattr(datasets, spec.name)
        return loader(model=model, image_size=32 if image_size is None else image_size, val_fraction=val_fraction,
                      **low)
    cfg = datasets.image_config(model, image_size=image_size) if _is_image_model(model) else None
    common = dict(val_fraction=val_fraction, **low)
    if spec.kind == "folder":
        if cfg is None:
            raise DataError(f"--data {spec.name!r} is an image folder but the model takes no images (it has a "
                            "tokenizer); give a text table instead.")
        test_set = test if test is None else str(Path(test).expanduser())
        return as_task(str(spec.path), test=test_set, image_size=cfg["image_size"], mean=cfg["mean"],
                       std=cfg["std"], **common)
    if spec.kind == "npz":
        x, y, tx, ty = _read_npz(spec.path, x_key, y_key, test)  # type: ignore[arg-type]
        x, tx = _npz_inputs(x, cfg), (None if tx is None else _npz_inputs(tx, cfg))
        return as_task(x, y, test=None if tx is None else (tx, ty), **common)
    data, labels, classes = _read_table(spec.path, text_column, label_column)  # type: ignore[arg-type]
    tdata = tlabels = None
    if test is not None:
        tdata, tlabels, _ = _read_table(Path(test).expanduser(), text_column, label_column, classes=classes)
    is_text = isinstance(data, list)
    extra: dict[str, Any] = {}
    if is_text:
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise DataError(f"--data {spec.name!r} holds texts (column {text_column!r}) but the model has no "
                            "tokenizer; use a text model (--model minilm_l6, a Hugging Face directory) or a table of "
                            "numeric feature columns.")
        extra = dict(tokenizer=tokenizer, max_length=max_length)
    task = as_task(data, labels, test=None if tdata is None else (tdata, tlabels), **common, **extra)
    if classes is not None:
        task.meta["classes"] = classes
    return task


def _is_image_model(model: "nn.Module") -> bool:
    return getattr(model, "tokenizer", None) is None


def _read_npz(path: Path, x_key: str, y_key: str, test: str | None) -> tuple[Any, Any, Any, Any]:
    with np.load(path, allow_pickle=False) as z:
        x, y = z[x_key], z[y_key]
        tx = z["x_test"] if "x_test" in z.files else None
        ty = z["y_test"] if "y_test" in z.files else None
    if test is not None:
        with np.load(Path(test).expanduser(), allow_pickle=False) as z:
            keys = (x_key, y_key) if x_key in z.files else ("x_test", "y_test")
            tx, ty = z[keys[0]], z[keys[1]]
    if (tx is None) != (ty is None):
        raise DataError(f"{path} holds only one of x_test / y_test; give both or neither.")
    return x, y, tx, ty


def _npz_inputs(x: np.ndarray, cfg: dict | None) -> Any:
    """Images ([N,H,W], [N,C,H,W], [N,H,W,C]) are resized / normalized for the model; other arrays pass as they are."""
    import torch

    from ..data.task import prepare_images

    if x.ndim in (3, 4) and cfg is not None:
        return prepare_images(x, image_size=cfg["image_size"], channels=cfg["channels"], mean=cfg["mean"],
                              std=cfg["std"])
    return torch.as_tensor(x)


def _read_table(path: Path, text_column: str, label_column: str,
                classes: list[str] | None = None) -> tuple[Any, np.ndarray, list[str] | None]:
    """(texts or float features, labels 0..C-1, the class names when labels were strings)."""
    import pandas as pd

    frame = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    if label_column not in frame.columns:
        raise DataError(f"{path} has no label column {label_column!r}; its columns are {list(frame.columns)[:20]}.")
    raw = frame[label_column]
    if raw.isna().any():
        raise DataError(f"{path}: {int(raw.isna().sum())} rows have no label in {label_column!r}; drop them first.")
    if raw.dtype.kind in "iu" and classes is None:
        labels = raw.to_numpy().astype(np.int64)
    else:
        names = [str(v) for v in raw]
        classes = classes or sorted(set(names))
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted(set(names) - set(index))
        if unknown:
            raise DataError(f"{path}: labels {unknown[:5]} do not occur in the training data's labels {classes[:10]}.")
        labels = np.array([index[n] for n in names], dtype=np.int64)
    if text_column in frame.columns:
        texts = frame[text_column]
        if texts.isna().any():
            raise DataError(f"{path}: {int(texts.isna().sum())} rows have no text in {text_column!r}; drop them first.")
        return texts.astype(str).tolist(), labels, classes
    features = frame.drop(columns=[label_column])
    bad = [c for c in features.columns if features[c].dtype.kind not in "biuf"]
    if bad or features.shape[1] == 0:
        raise DataError(f"{path} has no text column {text_column!r} and its other columns are not all numeric "
                        f"(non-numeric: {bad[:5]}); name the text column with --text-column, or keep only numeric "
                        "feature columns.")
    return features.to_numpy(dtype=np.float32, copy=True), labels, classes
