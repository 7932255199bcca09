"""Violation kinds: the registry of every rule the model can report broken.

A violation's *kind* ("stale-spte", "lockdep", "physical", ...) names the rule that broke.
Verdicts, counterexample files and tests compare runs by it, so a kind is a registered
constant, never a string made up where it is reported: :meth:`Scheduler.violation` refuses a
kind nobody registered (a misspelt kind would otherwise be a new kind that no test expects).

Who registers (at import, before anything can report): the module that reports the kind —
- each module of the model, near its top:
  ``USE_AFTER_FREE = register("use-after-free", "kvm")`` (the scheduler, the locks, lockdep
  and the race detector in sim/, every subsystem in kernel/ and hw/, the runner in check/);
- a scenario, for the invariants and final checks it names (``Sandbox.invariant(name, ...)``
  registers ``name``; a scenario that reports through ``sched.violation`` itself calls
  :func:`register` first).
This module registers nothing itself: it knows no reporter.

A kind may have several owners (``lockdep`` comes from kernel code and from kapi; several
scenarios name a check ``teardown``): registering a known kind again adds an owner. Kind
strings are never renamed: counterexample files and tests name them.

Leaves out: severities, and unregistering (a kind outlives the scenario that named it).
"""

from __future__ import annotations


class UnknownViolationKind(ValueError):
    """A violation of a kind nobody registered: a bug in the reporting code."""


_KINDS: dict[str, list[str]] = {}  # kind -> the owners that registered it, in order


def register(kind: str, owner: str) -> str:
    """Register ``kind`` as reported by ``owner`` (a subsystem or a scenario) and return it,
    for a module-level constant."""
    if not isinstance(kind, str) or not kind.strip():
        raise ValueError(f"a violation kind is a non-empty string, not {kind!r}")
    owners = _KINDS.setdefault(kind, [])
    if owner not in owners:
        owners.append(owner)
    return kind


def is_registered(kind: str) -> bool:
    return kind in _KINDS


def owners(kind: str) -> tuple[str, ...]:
    """Who registered ``kind`` (empty when nobody did)."""
    return tuple(_KINDS.get(kind, ()))


def known() -> list[str]:
    """Every registered kind, sorted."""
    return sorted(_KINDS)


def require(kind: str) -> str:
    """``kind`` if registered; else :class:`UnknownViolationKind` naming the known kinds."""
    if kind not in _KINDS:
        raise UnknownViolationKind(
            f"violation kind {kind!r} is not registered; register it where it is defined "
            f"with passthru.sim.kinds.register({kind!r}, owner) (known: {', '.join(known())})")
    return kind

