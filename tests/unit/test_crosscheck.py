"""Cross-validation of the reductions on the built-in scenarios (issue 7, §3): DPOR and the
enumeration without any reduction reach the same verdict and the same set of final states.
Spaces too large to enumerate here are compared at preemption bound 2 (DPOR's states must
include the bounded enumeration's); the benchmark (benchmarks/bench_checker.py, table 6)
covers every variant."""

from __future__ import annotations

import pytest

from passthru.check.crosscheck import explore_all, trace_signature
from passthru.check.discover import builtin
from passthru.check.explore import Decision

CAP = 400
# Too large for the test run (DPOR needs ~25,000 schedules: that many Mazurkiewicz traces);
# benchmarks/bench_checker.py table 6 cross-validates it.
LARGE = {"gmem_punch_hole_vs_two_vcpus"}
VARIANTS = [(sc, p, d) for sc in builtin() if sc.name not in LARGE for p, d in sc.variants()]


@pytest.mark.parametrize("sc,profile,design", VARIANTS,
                         ids=[f"{sc.name}-{p}" for sc, p, _ in VARIANTS])
def test_dpor_agrees_with_the_enumeration_without_reduction(sc, profile, design) -> None:  # noqa: ANN001
    full = explore_all(sc, profile, design, "full", None, cap=CAP)
    dpor = explore_all(sc, profile, design, "dpor", None, cap=20 * CAP)
    assert dpor.complete
    if full.complete:
        assert dpor.kinds == full.kinds
        assert dpor.finals == full.finals
        assert dpor.schedules <= full.schedules
        # DPOR explores every Mazurkiewicz trace the enumeration saw
        assert dpor.traces == full.traces
    else:
        bounded = explore_all(sc, profile, design, "full", 2, cap=20 * CAP)
        assert bounded.complete
        assert bounded.kinds <= dpor.kinds
        assert bounded.finals <= dpor.finals


def test_a_trace_signature_ignores_the_order_of_independent_steps() -> None:
    a = {"x": [(0, 1, True)]}
    b = {"y": [(0, 1, True)]}
    c = {"x": [(0, 1, False)]}
    # t1 writes x, t2 writes y, t3 reads x: swapping t1/t2 keeps the trace; t3 before t1 not.
    s1 = [Decision((1, 2, 3), None, 1, a), Decision((2, 3), None, 2, b),
          Decision((3,), None, 3, c)]
    s2 = [Decision((1, 2, 3), None, 2, b), Decision((1, 3), None, 1, a),
          Decision((3,), None, 3, c)]
    s3 = [Decision((1, 2, 3), None, 3, c), Decision((1, 2), None, 1, a),
          Decision((2,), None, 2, b)]
    assert trace_signature(s1) == trace_signature(s2)
    assert trace_signature(s1) != trace_signature(s3)
