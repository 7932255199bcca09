"""Named invariants over the dma-buf state, cheap enough to run after every step
(the checker registers them; KERNEL.md §1's contract, stated as checks):

- ``dma-buf-mapping-backed``: a mapping an importer still owns, and was not told to drop,
  references memory the exporter still holds (not freed, not moved away, not reclaimed).

That no attachment, mapping or pin is left at the end is not an invariant here: core.py
counts them as live objects (``Kernel.track``), and the checker's leak check after teardown
(``Kernel.leaks``) reports any left.
Pinned memory never moving and the lock convention are checked where they happen
(movable.migrate, core's _must_hold / _must_not_hold).

Units: bytes (physical ranges). Locking: the checker runs invariants between steps with
tracking off (sim/track.py), so they read every structure whole, without locks, and leave no
footprint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..init import invariant
from .core import db_list

if TYPE_CHECKING:
    from ..core import Kernel


@invariant("dma-buf-mapping-backed")
def dma_buf_mappings_backed(kernel: Kernel) -> str | None:
    phys = kernel.phys
    for buf in db_list(kernel):
        for a in buf.attachments:
            m = a.mapping
            if m is None or a.invalidated:
                continue
            for r in m.ranges:
                if phys.owners.gaps(r.phys, r.phys + r.length):
                    return (f"{a.dev}'s mapping of {buf.name} covers freed memory at "
                            f"{r.phys:#x} (the exporter moved or reclaimed it without "
                            "invalidating)")
    return None
