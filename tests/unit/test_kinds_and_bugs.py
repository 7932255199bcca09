"""Violation kinds and seeded bug names are registered constants (issue 8, §2): the
scheduler refuses a kind nobody registered, a profile refuses a bug name nobody registered,
and every kind the model reports is registered by the time a kernel exists."""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

from passthru import SimHost
from passthru.kernel import profile as P
from passthru.sim import kinds
from passthru.sim.scheduler import Scheduler

SRC = Path(__file__).resolve().parents[2] / "src" / "passthru"


def test_an_unregistered_kind_is_refused_naming_the_known_ones() -> None:
    s = Scheduler()
    with pytest.raises(kinds.UnknownViolationKind) as e:
        s.violation("stale-sptee", "a typo")
    assert "'stale-sptee' is not registered" in str(e.value) and "stale-spte" in str(e.value)
    assert s.violations == []


def test_a_registered_kind_is_reported_and_owners_accumulate() -> None:
    kind = kinds.register("test-kind-owners", "test A")
    assert kinds.register("test-kind-owners", "test B") == kind
    assert kinds.owners(kind) == ("test A", "test B")
    s = Scheduler()
    v = s.violation(kind, "broken")
    assert s.violations == [v] and v.kind == "test-kind-owners"
    with pytest.raises(ValueError):
        kinds.register("  ", "nobody")


def test_every_kind_reported_in_src_is_registered() -> None:
    """Every literal kind passed to ``violation(...)`` anywhere in src/ is known once the
    package is imported (a kernel's boot imports every subsystem), so no reporting path of
    the model can be refused."""
    SimHost()
    for mod in pkgutil.walk_packages([str(SRC)], "passthru."):
        importlib.import_module(mod.name)
    literal = re.compile(r"violation\(\s*\"([^\"]+)\"")
    found = {m.group(1) for f in SRC.rglob("*.py") for m in literal.finditer(f.read_text())}
    assert found and not {k for k in found if not kinds.is_registered(k)}
    for k in ("use-after-free", "stale-spte", "physical", "data-race", "lockdep"):
        assert kinds.is_registered(k), k


def _literal_kinds(path: Path) -> set[str]:
    """The kinds ``path`` reports by literal: ``violation("kind", ...)``."""
    return {node.args[0].value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and node.args
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "violation"
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)}


_IMPORT_EACH_ALONE = """
import importlib, json, sys
missing = {}
for mod, reported in json.loads(sys.argv[1]).items():
    for name in [m for m in sys.modules if m == "passthru" or m.startswith("passthru.")]:
        del sys.modules[name]  # a fresh registry: nothing another module registered
    importlib.import_module(mod)
    kinds = sys.modules["passthru.sim.kinds"]
    unknown = [k for k in reported if not kinds.is_registered(k)]
    if unknown:
        missing[mod] = unknown
print(json.dumps(missing))
"""


def test_each_module_registers_the_kinds_it_reports() -> None:
    """Importing a module, and only it, registers every kind it reports by literal: the
    registration sits with the reporter (sim/kinds.py keeps no table for anyone)."""
    reported = {}
    for f in sorted(SRC.rglob("*.py")):
        found = _literal_kinds(f)
        if found:
            mod = ".".join(("passthru",) + f.relative_to(SRC).with_suffix("").parts)
            reported[mod.removesuffix(".__init__")] = sorted(found)
    assert "passthru.kernel.dma_buf.core" in reported  # the scan sees the reporters
    out = subprocess.run([sys.executable, "-c", _IMPORT_EACH_ALONE, json.dumps(reported)],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {}


def test_unknown_bug_names_are_refused() -> None:
    prof = P.get_profile("linux-7.1")
    with pytest.raises(ValueError) as e:
        prof.with_bugs("kvm.no_mmu_invalidate_retyr")
    msg = str(e.value)
    assert "kvm.no_mmu_invalidate_retyr" in msg
    assert all(name in msg for name in P.SEEDED_BUGS)  # names the known bugs
    with pytest.raises(ValueError):
        P.Profile(name="x", bugs=frozenset({"nope"}))
    with pytest.raises(ValueError):
        prof.has_bug("nope")


def test_seeded_bugs_are_registered_constants() -> None:
    prof = P.get_profile("linux-7.1").with_bugs(P.KVM_NO_MMU_INVALIDATE_RETRY)
    assert prof.has_bug(P.KVM_NO_MMU_INVALIDATE_RETRY)
    assert not prof.has_bug(P.KVM_MEMSLOT_DELETE_SKIPS_SRCU_SYNC)
    assert set(P.SEEDED_BUGS) >= {
        "kvm.no_mmu_invalidate_retry", "kvm.memslot_delete_skips_srcu_sync",
        "dma_buf.move_pinned", "dma_buf.move_skips_fence_wait"}
    name = "kvm.no_mmu_invalidate_retry"
    assert P.seeded_bug(name, P.SEEDED_BUGS[name]) == name  # re-registering is harmless
    with pytest.raises(ValueError):
        P.seeded_bug("kvm.no_mmu_invalidate_retry", "something else")
    # Real profiles seed nothing.
    assert all(not p.bugs for p in P.PROFILES.values())
