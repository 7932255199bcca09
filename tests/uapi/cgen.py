"""Generate, compile and run a C program that checks passthru's uAPI mirrors against headers.

The Python mirror modules are walked programmatically:
- every ctypes Structure/Union subclass defined in the module whose name does not start
  with ``_`` is the kernel's ``struct NAME`` (or ``union NAME``): its sizeof and alignment,
  and for every field the offsetof and the sizeof (for a flexible array, the element
  size). Fields under ``_anonymous_`` are the C anonymous unions/structs: their members
  are checked with the C path (``offsetof(struct kvm_run, io.port)``); untagged nested
  types (named ``_...`` in Python) are walked into, tagged ones are checked on their own;
- every module-level name starting with an uppercase letter whose value is an int (or a
  str) is a constant the header defines (macro or enum value), minus an explicit list of
  Python-only names. An int is compared as a bit pattern of the C expression's width, so
  ``-1`` matches a C ``int`` -1 and ``1 << 31`` matches the C ``(1 << 31)`` flag.

Each check is one line of C that prints ``index value``. A name the header lacks makes
that line fail to compile; the lines gcc reports are dropped, recorded as "not in the
header", and the program is compiled again, so one bad name costs one check, not all.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any


@dataclass
class Check:
    """One C expression and the value Python expects for it."""

    owner: str  # what a test reports it under: "struct kvm_run", "IOMMU_IOAS_MAP"
    what: str  # "sizeof", "offsetof io.port", "value" ...
    c_expr: str
    expected: int | str
    kind: str = "int"  # "int": exact; "const": bit pattern of the C width; "str"
    result: int | str | None = None
    width: int | None = None  # sizeof the C expression, for "const"
    error: str | None = None  # why the C side has no value


@dataclass
class Mirror:
    """A mirror module and the header(s) it mirrors."""

    module: ModuleType
    includes: tuple[str, ...]
    python_only: frozenset[str] = field(default_factory=frozenset)


def _is_flex(t: type) -> bool:
    return issubclass(t, ctypes.Array) and t._length_ == 0


def _is_aggregate(t: type) -> bool:
    return issubclass(t, (ctypes.Structure, ctypes.Union))


def struct_checks(cls: type) -> list[Check]:
    tag = "union" if issubclass(cls, ctypes.Union) else "struct"
    cname = f"{tag} {cls.__name__}"
    checks = [
        Check(cname, "sizeof", f"sizeof({cname})", ctypes.sizeof(cls)),
        Check(cname, "alignof", f"_Alignof({cname})", ctypes.alignment(cls)),
    ]

    def walk(t: Any, prefix: str, base: int) -> None:
        anonymous = set(getattr(t, "_anonymous_", ()))
        for entry in t._fields_:
            fname, ftype = entry[0], entry[1]
            offset = base + getattr(t, fname).offset
            if fname in anonymous:
                walk(ftype, prefix, offset)
                continue
            path = prefix + fname
            member = f"(({cname} *)0)->{path}"
            checks.append(Check(cname, f"offsetof {path}", f"offsetof({cname}, {path})", offset))
            if _is_flex(ftype):
                checks.append(
                    Check(
                        cname,
                        f"sizeof {path}[0]",
                        f"sizeof({member}[0])",
                        ctypes.sizeof(ftype._type_),
                    )
                )
            else:
                checks.append(
                    Check(cname, f"sizeof {path}", f"sizeof({member})", ctypes.sizeof(ftype))
                )
            if _is_aggregate(ftype) and ftype.__name__.startswith("_"):
                walk(ftype, path + ".", offset)

    walk(cls, "", 0)
    return checks


def mirror_structs(module: ModuleType) -> list[type]:
    return [
        obj
        for name, obj in vars(module).items()
        if isinstance(obj, type)
        and _is_aggregate(obj)
        and obj.__module__ == module.__name__
        and not name.startswith("_")
        and name == obj.__name__
    ]


def mirror_constants(module: ModuleType, python_only: Iterable[str] = ()) -> dict[str, int | str]:
    skip = set(python_only)
    return {
        name: value
        for name, value in vars(module).items()
        if name[:1].isupper()
        and name not in skip
        and isinstance(value, int | str)
        and not isinstance(value, bool)
    }


def checks_for(mirror: Mirror) -> list[Check]:
    checks: list[Check] = []
    for cls in mirror_structs(mirror.module):
        checks += struct_checks(cls)
    for name, value in mirror_constants(mirror.module, mirror.python_only).items():
        if isinstance(value, str):
            checks.append(Check(name, "value", name, value, kind="str"))
        else:
            checks.append(Check(name, "value", name, value, kind="const"))
    return checks


_PRELUDE = """\
#include <stdio.h>
#include <stddef.h>
#include <fcntl.h>
#include <linux/version.h>
{includes}
#define PI(i, e) printf("%d %llu\\n", (i), (unsigned long long)(e))
#define PC(i, e) printf("%d %llu %zu\\n", (i), (unsigned long long)(e), sizeof(e))
#define PS(i, e) printf("%d %s\\n", (i), (e))
#define PD(n) printf("defined %s %llu\\n", #n, (unsigned long long)(n))

int main(void)
{{
\tprintf("version %d\\n", LINUX_VERSION_CODE);
"""


def render(
    checks: list[Check], includes: Iterable[str], probe_macros: Iterable[str]
) -> tuple[str, dict[int, int]]:
    """The C source, and a map from its line numbers to check indices."""
    lines = _PRELUDE.format(includes="\n".join(f"#include <{h}>" for h in includes))
    out = lines.splitlines()
    line_of: dict[int, int] = {}
    for i, c in enumerate(checks):
        if c.error is not None:
            continue
        macro = {"int": "PI", "const": "PC", "str": "PS"}[c.kind]
        out.append(f"\t{macro}({i}, {c.c_expr});")
        line_of[len(out)] = i
    for name in probe_macros:
        out += [f"#ifdef {name}", f"\tPD({name});", "#endif"]
    out += ["\treturn 0;", "}", ""]
    return "\n".join(out), line_of


_ERROR_LINE = re.compile(r"^[^:]*uapi_check\.c:(\d+):\d+: error: (.*)$", re.M)


@dataclass
class Result:
    checks: list[Check]
    version: int
    defined: dict[str, int]


class ToolMissing(Exception):
    """gcc, the C library headers or the kernel headers are not there: skip, with why."""


def include_dirs(header_dir: Path) -> list[Path]:
    dirs = [header_dir]
    multiarch = header_dir / "x86_64-linux-gnu"
    if multiarch.is_dir():
        dirs.append(multiarch)
    return dirs


def run(
    checks: list[Check],
    includes: Iterable[str],
    header_dir: Path,
    workdir: Path,
    probe_macros: Iterable[str] = (),
    max_rounds: int = 5,
) -> Result:
    """Compile and run the checks; fill in result/width/error on each. One compile if clean."""
    gcc = shutil.which(os.environ.get("CC", "gcc"))
    if gcc is None:
        raise ToolMissing("gcc not found (Debian package gcc)")
    includes = list(includes)
    probe_macros = list(probe_macros)
    src, exe = workdir / "uapi_check.c", workdir / "uapi_check"
    flags = [f"-I{d}" for d in include_dirs(header_dir)]
    for _ in range(max_rounds):
        text, line_of = render(checks, includes, probe_macros)
        src.write_text(text)
        proc = subprocess.run(
            [gcc, "-std=gnu11", "-O0", "-w", *flags, "-o", str(exe), str(src)],
            capture_output=True,
            text=True,
            env={**os.environ, "LC_ALL": "C"},
        )
        if proc.returncode == 0:
            break
        if "stdio.h: No such file" in proc.stderr:
            raise ToolMissing("the C library headers are missing (Debian package libc6-dev)")
        bad: dict[int, str] = {}
        for m in _ERROR_LINE.finditer(proc.stderr):
            idx = line_of.get(int(m.group(1)))
            if idx is not None:
                bad.setdefault(idx, m.group(2))
        if not bad:
            raise RuntimeError(f"gcc failed outside the checks:\n{proc.stderr[-4000:]}")
        for idx, msg in bad.items():
            checks[idx].error = f"not in the header: {msg}"
    else:
        raise RuntimeError(f"gcc still failing after {max_rounds} rounds:\n{proc.stderr[-4000:]}")
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    version = 0
    defined: dict[str, int] = {}
    for line in out.splitlines():
        head, _, rest = line.partition(" ")
        if head == "version":
            version = int(rest)
        elif head == "defined":
            name, value = rest.split()
            defined[name] = int(value)
        else:
            c = checks[int(head)]
            if c.kind == "str":
                c.result = rest
            elif c.kind == "const":
                value, width = rest.split()
                c.result, c.width = int(value), int(width)
            else:
                c.result = int(rest)
    return Result(checks, version, defined)


def mismatch(c: Check) -> str | None:
    """Why the check fails, or None."""
    if c.error is not None:
        return f"{c.owner}: {c.what}: {c.error}"
    if c.result is None:
        return f"{c.owner}: {c.what}: the C program printed nothing"
    if c.kind == "const":
        assert isinstance(c.expected, int) and isinstance(c.result, int) and c.width
        bits = 8 * c.width
        lo, hi = -(1 << (bits - 1)), 1 << bits
        mask = hi - 1
        if not lo <= c.expected < hi or (c.expected & mask) != (c.result & mask):
            return (
                f"{c.owner}: {c.what}: Python {c.expected:#x} != C {c.result & mask:#x} "
                f"({c.width}-byte expression)"
            )
        return None
    if c.expected != c.result:
        return f"{c.owner}: {c.what}: Python {c.expected!r} != C {c.result!r}"
    return None
