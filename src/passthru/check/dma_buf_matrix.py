"""The exporter × importer × profile compatibility matrix of dma-buf's memory models.

Each cell runs the importer's real attach-and-map path against a fresh buffer of the exporter
on a fresh SimHost under the profile, and reports "ok" or where and with which errno it was
refused — so the matrix is the model's behaviour, not a table typed in by hand. The exporters
and importers are the kernel model's own (kernel/dma_buf/): this module only pairs them.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass

from ..host.sim import SimHost
from ..kernel.core import Kernel
from ..kernel.dma_buf.core import MOVABLE, PINNED, REVOCABLE, DmaBuf
from ..kernel.dma_buf.importers import CompositorImporter, DeviceImporter, RdmaMrImporter
from ..kernel.dma_buf.mock import mock_dmabuf
from ..kernel.dma_buf.movable import movable_dmabuf
from ..kernel.dma_buf.pinned import pinned_dmabuf

PAGE = 4096

EXPORTERS: dict[str, Callable[[Kernel], DmaBuf]] = {
    "pinned (heap/udmabuf)": lambda k: pinned_dmabuf(k, PAGE),
    "revocable (vfio-pci)": lambda k: mock_dmabuf(k, PAGE),
    "revocable (selftest mock)": lambda k: mock_dmabuf(k, PAGE, require_p2p=False),
    "movable (gpu vram)": lambda k: movable_dmabuf(k, PAGE),
}

IMPORTERS: dict[str, Callable[[], DeviceImporter]] = {
    "static device": lambda: DeviceImporter("static", dynamic=False),
    "dynamic device": lambda: DeviceImporter("dynamic"),
    # importer ops without invalidate: optional from 7.1; mandatory (EINVAL) before
    "dynamic, no invalidate op": lambda: DeviceImporter("no-invalidate", has_move_notify=False),
    "rdma pinned MR": lambda: RdmaMrImporter(mode="pinned"),
    "rdma ODP MR": lambda: RdmaMrImporter(mode="odp"),
    "iommufd": lambda: DeviceImporter("iommufd", tolerates=frozenset({REVOCABLE, PINNED})),
    "kvm (faults, moves)": lambda: DeviceImporter(
        "kvm", tolerates=frozenset({PINNED, REVOCABLE, MOVABLE})),
    "compositor gpu": lambda: CompositorImporter(),
}


def errno_name(n: int) -> str:
    # Python lists 95 as ENOTSUP first; the kernel's name is EOPNOTSUPP.
    return "EOPNOTSUPP" if n == errno.EOPNOTSUPP else errno.errorcode.get(n, str(n))


@dataclass(frozen=True)
class Cell:
    exporter: str
    importer: str
    profile: str
    result: str  # "ok" or "<step>: <ERRNO>"


def cell(exporter: str, importer: str, profile: str) -> Cell:
    h = SimHost(profile=profile)
    buf = EXPORTERS[exporter](h.kernel)
    imp = IMPORTERS[importer]()
    step = "attach"
    try:
        if isinstance(imp, RdmaMrImporter):
            step = "register"
            imp.register(buf)
        else:
            imp.attach(buf)
            step = "map"
            imp.map()
        result = "ok"
    except OSError as e:
        result = f"{step}: {errno_name(e.errno or 0)}"
    imp.teardown()
    buf.put()
    leaks = h.leaks()
    assert not leaks and not h.sched.violations, (exporter, importer, profile, leaks,
                                                   h.sched.violations)
    return Cell(exporter, importer, profile, result)


def matrix(profiles: list[str]) -> list[Cell]:
    return [cell(e, i, p) for p in profiles for e in EXPORTERS for i in IMPORTERS]
