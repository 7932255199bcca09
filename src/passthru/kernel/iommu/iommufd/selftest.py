"""IOMMU_TEST_CMD: the entry point of CONFIG_IOMMUFD_TEST's mock (drivers/iommu/iommufd/
selftest.c iommufd_test()).

The op is ``cmd.op`` (IOMMU_TEST_OP_*); each op lives with what it tests and registers here
with ``@test_op(IOMMU_TEST_OP_...)``: the mock domain and device ops in selftest_mock.py,
the access ops in selftest_access.py, the dma-buf ops in dmabuf.py. An op nobody registered
is EOPNOTSUPP, as the kernel's switch default. The whole ioctl exists only when the profile's
``iommufd_test`` is on (CONFIG_IOMMUFD_TEST); without it IOMMU_TEST_CMD is ENOTTY.

Invariants: one handler per op. Units: as each op says. Locking: none here.
Leaves out: syzkaller's IOVA/ID conversion (MOCK_FLAGS_ACCESS_SYZ), the fail_nth debugfs file
(the model's fail_nth is the scheduler's: sim/scheduler.py ``fault``).
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from ....errors import kerr
from ....uapi import iommufd as I
from .main import Ucmd, ioctl_op

TestOp = Callable[[Ucmd], int]
TEST_OPS: dict[int, TestOp] = {}


def test_op(op: int) -> Callable[[TestOp], TestOp]:
    """Register the handler of IOMMU_TEST_OP ``op``."""

    def deco(fn: TestOp) -> TestOp:
        if op in TEST_OPS:
            raise ValueError(f"IOMMU_TEST_CMD: op {op} registered twice")
        TEST_OPS[op] = fn
        return fn

    return deco


@ioctl_op(I.IOMMU_TEST_CMD, I.iommu_test_cmd, "last", when=lambda p: p.iommufd_test)
def iommufd_test(ucmd: Ucmd) -> int:
    """iommufd_test: dispatch on ``cmd.op``."""
    fn = TEST_OPS.get(ucmd.cmd.op)
    if fn is None:
        raise kerr(errno.EOPNOTSUPP, f"IOMMU_TEST_CMD: unknown op {ucmd.cmd.op}")
    return fn(ucmd)
