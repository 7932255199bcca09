"""Invariants over the PCI TSM's state, for scenarios and the checker (issue 13 §5, §7).

:func:`tdis_not_in_error` — no TDI the TSM core holds bound to a cVM is in TDISP ERROR.
A bound TDI enters ERROR only when the host did something to the device the TSM was not told
of first (an FLR, an MSE or BME clear, D3hot: hw/tdi.py's security events): the cVM lost its
device behind the TSM's back, its private MMIO still sits in the secure stage-2, and only a
STOP (unbind) recovers it — the "explosion" the TDX Connect discussion warns of (KERNEL.md
§6). Reported as :data:`TDI_ERROR_WHILE_ASSIGNED` naming the TDI, its VM and the private MMIO
still mapped. Which designs keep it is what the scenarios in scenarios/tsm.py compare.

Units: GPAs and sizes in bytes. Locking: none taken — read from outside with tracking off
(an invariant is not an access), like kernel/kvm/invariants.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ....hw.tdisp import TdiState
from ....sim import kinds, track
from .core import pci_tsm
from .platform import platform_tsm

if TYPE_CHECKING:
    from ...core import Kernel

TDI_ERROR_WHILE_ASSIGNED = kinds.register("tdi-error-while-assigned", "pci.tsm")


def tdis_not_in_error(kernel: Kernel) -> Callable[[], str | None]:
    """A check over ``kernel``'s bound TDIs: None when none is in ERROR."""
    core = pci_tsm(kernel)

    def check() -> str | None:
        with track.untracked():
            drv = platform_tsm(kernel)
            for name, t in sorted(core.tdi.items()):
                hw = t.pdev.tdi
                if hw is None or hw.tdi_state != TdiState.ERROR:
                    continue
                mmio = drv.mmio.get(name, ()) if drv is not None else ()
                where = ", ".join(f"gpa [{m.gpa:#x}, +{m.size:#x})" for m in mmio) or "none"
                return (f"{name}: TDI {t.tdi_id:#x} in ERROR while bound to {t.kvm.name} "
                        f"(private MMIO still in the secure stage-2: {where}); the host "
                        "reset or disabled the device without the TSM unbinding first")
        return None

    return check
