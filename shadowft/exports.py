"""Public names of a subpackage, imported from their modules on first use.

Every subpackage's ``__init__`` names its public API with `public_names`: which module of the
subpackage holds each name. ``from shadowft.engine import graft`` then works, and importing one
module of a subpackage (``python -m shadowft.training`` in the train environment, say) imports
nothing else of it: each environment holds only the packages its own rules need, and the
engine's compiled kernels need numba, which only the core environment has.

Standard library only: every environment imports it.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable, Mapping, Sequence


def public_names(
    package: str, homes: Mapping[str, Sequence[str]]
) -> tuple[list[str], Callable[[str], object], Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` for `package`, whose public names are
    ``{module: [name, ...]}`` (modules relative to the package)."""
    home_of = {name: module for module, names in homes.items() for name in names}
    if len(home_of) != sum(len(names) for names in homes.values()):
        raise ValueError(f"{package}: a public name is listed under two modules")
    # Importing a submodule sets the package attribute of its name, which would then hide a
    # public name spelt the same.
    modules = {info.name for info in pkgutil.iter_modules(sys.modules[package].__path__)}
    if modules & home_of.keys():
        raise ValueError(f"{package}: public names that are also module names: {sorted(modules & home_of.keys())}")

    def __getattr__(name: str) -> object:
        module = home_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return sorted(home_of)

    return sorted(home_of), __getattr__, __dir__
