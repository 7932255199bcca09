"""Find scenarios: the built-in library, or Python files and folders given on the command line
(collected like tests: every module-level function decorated with @scenario)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from .scenario import Scenario


def _from_module(mod: object) -> list[Scenario]:
    out = []
    for name in dir(mod):
        sc = getattr(getattr(mod, name), "__passthru_scenario__", None)
        if isinstance(sc, Scenario) and sc.module == getattr(mod, "__name__", None):
            out.append(sc)
    return out


def builtin() -> list[Scenario]:
    # Lazy on purpose, not for a cycle: the built-in library (and the violation kinds its
    # scenarios register) loads only when asked for, never beside a user's PATHS.
    from .. import scenarios

    out: list[Scenario] = []
    for modname in scenarios.__all__:
        out.extend(_from_module(importlib.import_module(f"passthru.scenarios.{modname}")))
    return out


def from_paths(paths: list[str]) -> list[Scenario]:
    """The scenarios the Python files under ``paths`` define. A file that does not exist
    raises FileNotFoundError; one that fails to import (any exception, including a bad
    ``@scenario(...)`` argument) raises ImportError naming the file and the exception."""
    files: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files.extend(sorted(f for f in path.rglob("*.py") if not f.name.startswith("_")))
        elif path.is_file() and path.suffix == ".py":
            files.append(path)
        else:
            raise FileNotFoundError(f"{p}: no such scenario file or folder")
    out: list[Scenario] = []
    for f in files:
        modname = f"passthru_user_scenarios.{f.stem}_{abs(hash(str(f.resolve()))) % 10**8}"
        spec = importlib.util.spec_from_file_location(modname, f)
        if spec is None or spec.loader is None:
            raise ImportError(f"{f}: cannot be imported")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        try:
            spec.loader.exec_module(mod)
        except SyntaxError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure at import is the file's, named
            del sys.modules[modname]
            raise ImportError(f"{f}: failed to import: {type(e).__name__}: {e}") from e
        out.extend(_from_module(mod))
    return out
