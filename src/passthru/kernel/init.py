"""The kernel's initcall table, its per-kernel statics and the checker's hooks
(include/linux/init.h, init/main.c's do_initcalls, and the link order of the kernel's
Makefiles).

start_kernel() never names a subsystem: each subsystem marks its init function with a level
(``core_initcall``, ``subsys_initcall``, ``fs_initcall``, ``module_init`` = ``device_initcall``
...), the linker gathers the marks into one section per level, and do_initcalls() runs the
levels in order and each level in link order. The model does the same, with four kinds of
registration, each made by the subsystem's own module when it is imported:

- ``@initcall(level)`` on ``fn(kernel)``: run once per kernel at boot (register a device
  node, declare a carve-out). :data:`LEVELS` are init.h's, ``pure`` (0) to ``late`` (7).
- ``kernel_static(name, factory)``: a subsystem's static variable (dma-buf's ``static
  LIST_HEAD(db_list)``). Many kernels share one Python process, so a module global cannot be
  the static: every :class:`~passthru.kernel.core.Kernel` gets its own, made by
  ``factory(kernel)`` at boot before any initcall runs (the kernel's .data exists before its
  code does); the returned handle, called with a kernel, gives that kernel's instance.
- ``@invariant(name)`` on ``check(kernel) -> str | None``: a named check over one kernel's
  state (None when it holds), for the checker; ``Kernel.invariant(name)`` binds it.
- ``@teardown(name)`` on ``check(kernel) -> list[str]``: what the subsystem still holds once
  every process has exited; ``Kernel.leaks()`` — the checker's leak check — is core's own
  accounting followed by these.

Linking: :data:`BUILTIN` lists the kernel's packages in the order the kernel links them (the
top-level Makefile puts arch/x86, which builds KVM, before kernel/, mm/ and fs/, and those
before drivers/; drivers/Makefile links pci/ before iommu/ and vfio/). :func:`link` imports
every module of those packages (sub-packages too), sorted by name within a package (a
simplification of each Makefile's obj-y order); importing a module is what runs its
registrations, so a subsystem is built in by living in one of these packages. A module outside
them that registers (a scenario's own driver) is like a loaded module: it joins every kernel
booted after it was imported, after the built-in ones.

Order: by level (initcalls only), then the registering module's link position (package
position in BUILTIN, then module name; modules outside come last, by name), then the order
of registration within the module — never import order, never hash order, so two kernels
booted from the same code run the same initcalls in the same order.

Invariants: one registration per (kind, module, name) — a module imported again replaces its
entries and keeps their places; an invariant, teardown or static name belongs to one module
(a second module registering it is refused); :func:`registered` is a total order that does
not depend on import order for modules inside the built-in packages. Units: none.

Dependencies: this module imports no kernel module at import time (every subsystem imports
it); :func:`link` imports the subsystems by name with importlib, at the first boot.

Locking: the tables are written at import time only and read at boot; a kernel's statics are
created in ``Kernel.__init__``; nothing here is shared state a task can race on.

Leaves out: early initcalls and the ``*_sync`` levels, initcall return values (an init that
fails raises: the model's kernel has no optional driver to skip), initcall_blacklist,
module unloading.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from .core import Kernel

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# include/linux/init.h: pure_initcall (0) ... late_initcall (7); rootfs sits between fs and
# device; module_init() of built-in code is device_initcall.
LEVELS = ("pure", "core", "postcore", "arch", "subsys", "fs", "rootfs", "device", "late")

# Link order of the packages under passthru.kernel (see the module docstring).
BUILTIN = ("kvm", "cgroup", "mm", "fs", "char", "dma", "pci", "iommu", "vfio", "dma_buf")
_PREFIX = __name__.rsplit(".", 1)[0] + "."  # "passthru.kernel."

KINDS = ("initcall", "static", "invariant", "teardown")


@dataclass(frozen=True)
class Registration:
    """One entry of a table: ``fn`` registered by ``module`` under ``name``."""

    kind: str  # one of KINDS
    name: str
    fn: Callable[..., Any]
    module: str
    level: int  # index in LEVELS (initcalls); 0 for the other kinds
    seq: int  # order of registration (within a module, the order of its registrations)

    def key(self) -> tuple[int, int, str, int]:
        return (self.level, *link_position(self.module), self.seq)

    @property
    def qualname(self) -> str:
        """``kvm.kvm_main.kvm_init``: the module below passthru.kernel, and the name."""
        mod = self.module[len(_PREFIX):] if self.module.startswith(_PREFIX) else self.module
        return f"{mod}.{self.name}"


_TABLE: dict[tuple[str, str, str], Registration] = {}  # (kind, module, name) -> entry
_seq = 0
_linked = False


def link_position(module: str) -> tuple[int, str]:
    """Where ``module`` sits in the link order: its package's index in BUILTIN and its name;
    a module outside the built-in packages comes after all of them."""
    if module.startswith(_PREFIX):
        pkg = module[len(_PREFIX):].split(".", 1)[0]
        if pkg in BUILTIN:
            return BUILTIN.index(pkg), module
    return len(BUILTIN), module


def _register(kind: str, name: str, fn: Callable[..., Any], module: str, level: int) -> None:
    global _seq
    if kind != "initcall":
        for r in _TABLE.values():
            if r.kind == kind and r.name == name and r.module != module:
                raise ValueError(f"{kind} {name!r} is already registered by {r.module}")
    old = _TABLE.get((kind, module, name))
    if old is None:  # a module imported again (reloaded) keeps its place
        _seq += 1
    seq = old.seq if old is not None else _seq
    _TABLE[(kind, module, name)] = Registration(kind, name, fn, module, level, seq)


def initcall(level: str = "device") -> Callable[[F], F]:
    """``@initcall("subsys")``: run the decorated ``fn(kernel)`` at boot, at ``level``."""
    if level not in LEVELS:
        raise ValueError(f"initcall level {level!r} is not one of {LEVELS}")

    def mark(fn: F) -> F:
        _register("initcall", fn.__name__, fn, fn.__module__, LEVELS.index(level))
        return fn

    return mark


class KernelStatic(Generic[T]):
    """The handle of a per-kernel static: ``handle(kernel)`` is that kernel's instance."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, kernel: Kernel) -> T:
        value: T = kernel.static(self.name)
        return value

    def __repr__(self) -> str:
        return f"<kernel static {self.name}>"


def kernel_static(name: str, factory: Callable[[Kernel], T]) -> KernelStatic[T]:
    """Declare a static ``name`` (e.g. "dma_buf.db_list") that every kernel makes with
    ``factory(kernel)`` at boot; returns the handle that reads it."""
    _register("static", name, factory, factory.__module__, 0)
    return KernelStatic(name)


def invariant(name: str) -> Callable[[F], F]:
    """``@invariant("dma-buf-mapping-backed")`` on ``check(kernel) -> str | None``."""

    def mark(fn: F) -> F:
        _register("invariant", name, fn, fn.__module__, 0)
        return fn

    return mark


def teardown(name: str) -> Callable[[F], F]:
    """``@teardown("page_alloc")`` on ``check(kernel) -> list[str]`` (what is left)."""

    def mark(fn: F) -> F:
        _register("teardown", name, fn, fn.__module__, 0)
        return fn

    return mark


def unregister(kind: str, module: str, name: str) -> None:
    """Remove one registration (for tests that register a driver of their own)."""
    del _TABLE[(kind, module, name)]


def builtin_modules() -> list[str]:
    """Every module of the built-in packages, in link order: package by package as in
    BUILTIN, sorted by name within one (sub-packages included, with or without an
    ``__init__.py``)."""
    out: list[str] = []
    for pkg in BUILTIN:
        package = importlib.import_module(_PREFIX + pkg)
        names: set[str] = set()
        for root in package.__path__:
            for path in Path(root).rglob("*.py"):
                parts = path.relative_to(root).with_suffix("").parts
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                names.add(".".join((_PREFIX + pkg, *parts)))
        out.extend(sorted(names))
    return out


def link() -> None:
    """Import every module of the built-in packages (once): their registrations run."""
    global _linked
    if _linked:
        return
    for name in builtin_modules():
        importlib.import_module(name)
    _linked = True


def registered(kind: str) -> list[Registration]:
    """The registrations of ``kind`` in boot order (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"unknown registration kind {kind!r}")
    return sorted((r for r in _TABLE.values() if r.kind == kind), key=Registration.key)


def make_statics(kernel: Kernel) -> dict[str, Any]:
    """Every registered static, made for ``kernel``, in link order."""
    return {r.name: r.fn(kernel) for r in registered("static")}


def do_initcalls(kernel: Kernel) -> tuple[str, ...]:
    """Run every initcall on ``kernel`` in order; the names of those that ran, in order
    (what initcall_debug prints)."""
    done = []
    for r in registered("initcall"):
        r.fn(kernel)
        done.append(r.qualname)
    return tuple(done)
