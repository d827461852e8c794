"""Old flat module paths (``autosub.train``, ``autosub.blocks``, …) keep importing for one release.

autosub 0.1 had 26 flat modules; 0.2 groups them in subpackages. ``import autosub.train`` now returns
``autosub.training.trainer`` itself (same objects, so ``mock.patch("autosub.train.fit")`` still patches the
real function) and warns once with a ``DeprecationWarning`` naming the new path. ``autosub.search``,
``autosub.profile`` and ``autosub.greedy`` were modules *and* functions: their old module paths give a proxy that
forwards attributes and stays callable, so ``import autosub.search`` cannot turn ``autosub.search(...)`` into a
module. Public aliases
(``autosub.zoo``, ``autosub.datasets``, ``autosub.text``) resolve the same way without a warning.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

__all__ = ["MOVED", "install"]

MOVED = {  # 0.1 path → 0.2 path (deprecated; removed in 0.3)
    "blocks": "model.blocks", "heads": "model.heads", "subtune": "model.subtune", "splitting": "model.splitting",
    "cost": "model.cost", "train": "training.trainer", "cache": "training.cache",
    "checkpoint": "training.checkpoint", "sources": "data.sources", "profile": "selection.profiling",
    "greedy": "selection.greedy_selection", "selectors": "hpo.selectors", "search": "hpo.searching",
    "space": "hpo.space+hpo.budget", "result": "hpo.result", "engines": "hpo.engines", "engines.optuna": "hpo.engines.optuna",
    "engines.ray": "hpo.engines.ray",  # autosub.report is now a package exporting the same plot_* names
}


CALLABLE = {"search", "profile", "greedy"}  # old modules named like their function


class _Proxy(ModuleType):
    """A deprecated module path that forwards attributes to the new module(s) and, if named like its main
    function, calls it."""

    def __init__(self, name: str, targets: list[ModuleType], fn_name: str | None) -> None:
        super().__init__(name, targets[0].__doc__)
        object.__setattr__(self, "_targets", targets)
        object.__setattr__(self, "_fn", fn_name)

    def __getattr__(self, name: str) -> object:
        for target in object.__getattribute__(self, "_targets"):
            if hasattr(target, name):
                return getattr(target, name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")

    def __call__(self, *args: object, **kwargs: object) -> object:
        if self._fn is None:
            raise TypeError(f"module {self.__name__!r} is not callable")
        return getattr(self._targets[0], self._fn)(*args, **kwargs)


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str, warn: bool) -> None:
        self.target, self.warn = target, warn

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        if self.warn:
            warnings.warn(f"{spec.name} moved to {self.target.replace('+', ' and ')} in autosub 0.2; the old path goes in 0.3.",
                          DeprecationWarning, stacklevel=4)
        targets = [importlib.import_module(t) for t in self.target.split("+")]
        leaf = spec.name.rpartition(".")[2]
        if len(targets) == 1 and not (self.warn and leaf in CALLABLE):
            return targets[0]
        return _Proxy(spec.name, targets, leaf if leaf in CALLABLE else None)

    def exec_module(self, module: ModuleType) -> None:  # the target module is already executed
        return None


class _AliasFinder(importlib.abc.MetaPathFinder):
    def __init__(self, aliases: dict[str, tuple[str, bool]]) -> None:
        self.aliases = aliases

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        if fullname not in self.aliases:
            return None
        new, warn = self.aliases[fullname]
        if fullname in sys.modules:
            return None
        # a spec whose loader hands back the real module: importlib then stores it under the old name too
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new, warn), is_package=False)


def install(package: str, *, public: dict[str, str]) -> None:
    """Register the aliases of ``package`` once (a meta path finder consulted before the file system)."""
    if any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        return
    aliases = {f"{package}.{old}": ("+".join(f"{package}.{n}" for n in new.split("+")), True)
               for old, new in MOVED.items()}
    aliases.update({old: (new, False) for old, new in public.items()})
    sys.meta_path.insert(0, _AliasFinder(aliases))
