"""What an iommufd call may change, as a comparable snapshot, and the fail_nth sweep that uses
it (like tools/testing/selftests/iommu/iommufd_fail_nth.c): fail the Nth fault point of one
call, for every N until the call succeeds, and check after each failure that the state is as
before the call and that nothing leaks once the host exits."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from passthru import SimHost
from passthru.kernel.iommu.iommufd.ioas import Ioas
from passthru.kernel.iommu.iommufd.main import IommufdCtx
from passthru.kernel.mm import mlock

#: Errnos an injected failure may surface as: allocation failures, and iommufd_get_object's
#: injected ENOENT (iommufd_should_fail).
INJECTED = {errno.ENOMEM, errno.ENOENT}


def snapshot(h: SimHost) -> dict[str, Any]:
    """Objects and their users, each IOAS's areas/reserved/allowed/alignment/domains, the
    physical pins, the locked_vm ledgers, every live-object count and the open fds."""
    k = h.kernel
    out: dict[str, Any] = {
        "pins": [(s, e, c) for s, e, c in k.phys.pins],
        "locked_vm": dict(mlock.locked_vm(k)),
        "live": dict(k.live),
        "fds": sorted(h.proc.fds),
    }
    for fd, f in sorted(h.proc.fds.items()):
        if not isinstance(f, IommufdCtx):
            continue
        objs = {}
        for oid, obj in sorted(f.objects.items()):
            if obj is None:
                objs[oid] = None
                continue
            objs[oid] = (obj.type, obj.users.peek())
            if isinstance(obj, Ioas):
                iopt = obj.iopt
                objs[f"{oid}.iopt"] = (
                    [(a.iova, a.last, a.filled, a.num_accesses) for _, _, a in iopt.areas],
                    sorted((r.start, r.last) for r in iopt.reserved),
                    list(iopt.allowed), iopt.iova_alignment, len(iopt.domains),
                    len(iopt.accesses))
        out[f"fd{fd}"] = objs
    return out


def sweep(setup: Callable[[SimHost], Any], call: Callable[[SimHost, Any], Any],
          max_n: int = 200) -> int:
    """Run ``call`` after ``setup`` on a fresh host, failing its Nth fault point, N = 1, 2 ...
    until it succeeds; returns how many fault points the successful call passed. Every
    failure must be an injected errno, leave :func:`snapshot` unchanged and leak nothing."""
    for n in range(1, max_n + 1):
        h = SimHost()
        ctx = setup(h)
        before = snapshot(h)
        s = h.sched
        start = s.faults_seen
        s.fail_nth = frozenset({start + n})
        try:
            call(h, ctx)
        except OSError as e:
            s.fail_nth = frozenset()
            assert s.faults_failed, f"N={n}: {e!r} without an injected failure"
            assert e.errno in INJECTED, f"N={n} ({s.faults_failed}): {e!r}"
            assert snapshot(h) == before, f"N={n} ({s.faults_failed[-1]}): state changed"
            h.exit()
            assert h.leaks() == [], (n, s.faults_failed, h.leaks())
            continue
        s.fail_nth = frozenset()
        assert not s.faults_failed, f"N={n}: the call succeeded past an injected failure"
        passed = s.faults_seen - start
        h.exit()
        assert h.leaks() == [], (n, h.leaks())
        return passed
    raise AssertionError(f"the call still failed after {max_n} fault points")
