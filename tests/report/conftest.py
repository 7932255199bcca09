"""Counterexamples of built-in scenarios, found once per session, for the report tests."""

from __future__ import annotations

import pytest

from passthru.check.discover import builtin
from passthru.check.runner import Verdict, check
from passthru.check.scenario import Scenario


def scenario(name: str) -> Scenario:
    for sc in builtin():
        if sc.name == name:
            return sc
    raise LookupError(name)


def found(name: str) -> Verdict:
    sc = scenario(name)
    v = check(sc, sc.profiles[-1])
    assert v.counterexample is not None, f"{name}: the checker found no counterexample"
    return v


@pytest.fixture(scope="session")
def abba() -> Verdict:
    return found("abba")


@pytest.fixture(scope="session")
def gmem() -> Verdict:
    return found("gmem_punch_hole_vs_vcpu_buggy")
