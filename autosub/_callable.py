"""``autosub.search``, ``autosub.profile`` and ``autosub.greedy`` are both a submodule and its main function."""
from __future__ import annotations

import sys
import types
from typing import Any, Callable


def callable_module(name: str, fn: Callable[..., Any]) -> None:
    """Make module ``name`` callable as ``fn``: ``autosub.profile(...)`` then works whichever object the package
    attribute holds (importing a submodule rebinds ``autosub.profile`` from the function to the module)."""

    class _CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

    sys.modules[name].__class__ = _CallableModule
