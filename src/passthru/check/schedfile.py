"""Counterexample files: the replayable schedule ``check --save`` writes and ``replay`` reads.

A schedule file is JSON::

    {"version": 2, "scenario": "abba", "profile": "linux-7.1", "design": null,
     "choices": [1, 2, 1], "fail_nth": [],
     "source": "/path/to/scenarios/demos.py", "source_sha256": "3f2a...",
     "passthru": "0.1.0"}

``choices`` are the task ids picked at each scheduling decision, ``fail_nth`` the fault points
made to fail (the kernel's fail_nth, counted from 1). ``source`` and ``source_sha256`` name the
file that defines the scenario and its content when the schedule was saved, so that ``passthru
replay FILE`` can find a scenario that is not built-in and warn when its source changed since;
either is null when the scenario has no source file. ``passthru`` is the version that saved it
(informational). Version 1 files (no source fields) still load.

:data:`SCHEMA` is the one schema every file is checked against (types, ranges, which keys
each version requires); ``design`` must be one of the known designs (kernel/profile.py) or
null. :func:`load` validates everything it returns and raises :class:`ScheduleError` (a one-line,
user-facing message) on any malformed file: bad JSON, wrong types, negative numbers, lists or
files too large to be a schedule. Nothing here imports the runner (the runner imports this).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..kernel.profile import DESIGNS
from .scenario import Scenario

SCHEDULE_VERSION = 2
ACCEPTED_VERSIONS = (1, 2)

MAX_FILE_BYTES = 64 << 20  # a schedule of a million decisions is a few MiB
MAX_CHOICES = 1_000_000
MAX_FAIL_NTH = 10_000
MAX_INT = (1 << 31) - 1  # task ids and fault point numbers are small


# The schema: key -> (type, the first version that requires it; None: optional).
# "str": a non-empty string; "str?": a string or null; "ints": a list of integers in
# range (choices 0..MAX_INT, at most MAX_CHOICES; fail_nth 1..MAX_INT, at most MAX_FAIL_NTH).
SCHEMA: dict[str, tuple[str, int | None]] = {
    "version": ("int", 1),
    "scenario": ("str", 1),
    "profile": ("str", 1),
    "choices": ("ints", 1),
    "design": ("design?", 2),
    "fail_nth": ("ints", 2),
    "source": ("str?", 2),
    "source_sha256": ("sha256?", 2),
    "passthru": ("str?", None),
}


class ScheduleError(ValueError):
    """A schedule file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Schedule:
    scenario: str
    profile: str
    design: str | None
    choices: tuple[int, ...]
    fail_nth: frozenset[int]
    version: int = SCHEDULE_VERSION
    source: str | None = None
    source_sha256: str | None = None
    passthru: str | None = None


def passthru_version() -> str:
    """The installed passthru's version (``importlib.metadata``), or "unknown"."""
    # Lazy on purpose, not for a cycle: importlib.metadata costs ~18 ms, about a tenth of the
    # CLI's start-up, and only a saved schedule or a report needs it.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("passthru")
    except PackageNotFoundError:
        return "unknown"


def file_sha256(path: str | os.PathLike[str]) -> str | None:
    """The hex sha256 of a file's bytes, or None when it cannot be read."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def source_file(sc: Scenario) -> str | None:
    """The absolute path of the file defining ``sc``, or None (defined in a string, say)."""
    try:
        f = inspect.getsourcefile(sc.fn)
    except (TypeError, OSError):
        return None
    if f is None or not os.path.isfile(f):
        return None
    return str(Path(f).resolve())


def schedule_json(sc: Scenario, profile: str, design: str | None, choices: list[int],
                  fail_nth: tuple[int, ...] | list[int] | frozenset[int]) -> dict[str, Any]:
    """The JSON-ready schedule file for one run of ``sc`` (see the module's docstring)."""
    src = source_file(sc)
    return {
        "version": SCHEDULE_VERSION,
        "scenario": sc.name,
        "profile": profile,
        "design": design,
        "choices": list(choices),
        "fail_nth": sorted(fail_nth),
        "source": src,
        "source_sha256": file_sha256(src) if src else None,
        "passthru": passthru_version(),
    }


def dumps(data: dict[str, Any]) -> str:
    """The text of a schedule file, exactly as ``check --save`` and the report write it."""
    return json.dumps(data, indent=1) + "\n"


def _int_list(path: str, data: dict[str, Any], key: str, lo: int, most: int) -> list[int]:
    val = data.get(key, [])
    if not isinstance(val, list):
        raise ScheduleError(f"{path}: {key!r} must be a list of integers, not "
                            f"{type(val).__name__}")
    if len(val) > most:
        raise ScheduleError(f"{path}: {key!r} has {len(val)} entries (at most {most})")
    for i, x in enumerate(val):
        if isinstance(x, bool) or not isinstance(x, int):
            raise ScheduleError(f"{path}: {key}[{i}] is {json.dumps(x)[:40]}, not an integer")
        if not lo <= x <= MAX_INT:
            raise ScheduleError(f"{path}: {key}[{i}] = {x} is out of range ({lo}..{MAX_INT})")
    return val


def _opt_str(path: str, data: dict[str, Any], key: str) -> str | None:
    val = data.get(key)
    if val is not None and not isinstance(val, str):
        raise ScheduleError(f"{path}: {key!r} must be a string or null, not "
                            f"{type(val).__name__}")
    return val


def parse(data: Any, path: str = "<schedule>") -> Schedule:
    """Validate a decoded schedule file (any JSON value) and return it."""
    if not isinstance(data, dict):
        raise ScheduleError(f"{path}: a schedule file is a JSON object, not "
                            f"{type(data).__name__}")
    ver = data.get("version")
    if isinstance(ver, bool) or ver not in ACCEPTED_VERSIONS:
        raise ScheduleError(f"{path}: unsupported schedule version {json.dumps(ver)[:20]} "
                            f"(this passthru reads versions "
                            f"{', '.join(map(str, ACCEPTED_VERSIONS))})")
    missing = [k for k, (_, since) in SCHEMA.items()
               if since is not None and since <= ver and k not in data]
    if missing:
        raise ScheduleError(f"{path}: malformed schedule: missing {', '.join(missing)}")
    for key in ("scenario", "profile"):
        if not isinstance(data[key], str) or not data[key]:
            raise ScheduleError(f"{path}: {key!r} must be a non-empty string")
    sha = _opt_str(path, data, "source_sha256")
    if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise ScheduleError(f"{path}: 'source_sha256' is not a sha256 hex digest")
    design = _opt_str(path, data, "design")
    if design is not None and design not in DESIGNS:
        raise ScheduleError(f"{path}: unknown design {json.dumps(design)[:40]} (known: "
                            f"{', '.join(DESIGNS)}, or null)")
    return Schedule(
        scenario=data["scenario"],
        profile=data["profile"],
        design=design,
        choices=tuple(_int_list(path, data, "choices", 0, MAX_CHOICES)),
        fail_nth=frozenset(_int_list(path, data, "fail_nth", 1, MAX_FAIL_NTH)),
        version=ver,
        source=_opt_str(path, data, "source"),
        source_sha256=sha,
        passthru=_opt_str(path, data, "passthru"),
    )


def load(path: str | os.PathLike[str]) -> Schedule:
    """Read and validate a schedule file; :class:`ScheduleError` on anything wrong."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ScheduleError(f"{name}: cannot read: {e.strerror or e}") from e
    if len(raw) > MAX_FILE_BYTES:
        raise ScheduleError(f"{name}: too large for a schedule file "
                            f"(over {MAX_FILE_BYTES >> 20} MiB)")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ScheduleError(f"{name}: not a schedule file: not UTF-8 text") from e
    except json.JSONDecodeError as e:
        raise ScheduleError(f"{name}: not a schedule file: {e}") from e
    except (ValueError, RecursionError) as e:  # e.g. nesting or integer digits beyond limits
        raise ScheduleError(f"{name}: not a schedule file: {type(e).__name__}") from e
    return parse(data, name)


def source_warning(sched: Schedule, sc: Scenario | None = None) -> str | None:
    """Why the scenario replayed may not be the one the schedule was saved from, or None.

    Compares the recorded hash with the current content of ``sc``'s source file (or, without
    ``sc``, of the recorded source path). Files without a recorded hash give no warning."""
    if sched.source_sha256 is None:
        return None
    src = source_file(sc) if sc is not None else sched.source
    now = file_sha256(src) if src else None
    if now is None:
        where = sched.source or "the scenario's source"
        return f"warning: {where} is gone; cannot tell whether the scenario changed"
    if now != sched.source_sha256:
        return (f"warning: source changed since the counterexample was saved ({src}); "
                "the replay may differ")
    return None
