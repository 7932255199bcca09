"""Helpers the VFIO conformance tests share: the running kernel's version (or the SimHost
profile's), and QEMU's edu device (hw/misc/edu.c) DMA engine.

The edu's DMA registers (BAR0, 8 bytes each): 0x80 source, 0x88 destination, 0x90 count,
0x98 command (0x1 RUN, 0x2 direction buffer -> RAM). QEMU runs the transfer on a 100 ms timer
(edu_dma_timer) and ignores writes to the DMA registers while RUN is set, so the next command
must wait for RUN to clear; the model finishes at once (the wait returns at the first read).
The factorial register (0x08) is the same: QEMU computes n! in its own thread (edu_fact_thread)
with status (0x20) bit 0x01 set until it is done, and 0x08 reads n until then, so a driver
polls that bit before reading the result. tests/vmm uses these helpers too.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ._iommufd import is_linux

DMA_SRC, DMA_DST, DMA_CNT, DMA_CMD = 0x80, 0x88, 0x90, 0x98
DMA_RUN, DMA_TO_RAM = 0x1, 0x2
DMA_TIMEOUT = 5.0  # seconds; QEMU's timer is 100 ms (longer under TCG, still far below this)
FACT, STATUS, STATUS_COMPUTING = 0x08, 0x20, 0x01


def kernel_version(host: Any) -> tuple[int, int]:
    """(major, minor) of the running kernel, or of the SimHost profile (linux-X.Y)."""
    release = os.uname().release if is_linux(host) else host.kernel.profile.name
    major, minor = release.removeprefix("linux-").split(".")[:2]
    return int(major), int(minor.split("-")[0])


def edu_dma(bar: Any, src: int, dst: int, n: int, to_ram: bool) -> None:
    """Run one edu DMA through ``bar`` (a passthru.vmm Region of BAR0) and wait until RUN
    clears: ``n`` bytes from ``src`` to ``dst`` (edu buffer -> RAM when ``to_ram``)."""
    for off, val in ((DMA_SRC, src), (DMA_DST, dst), (DMA_CNT, n)):
        bar.write_int(off, 8, val)
    bar.write_int(DMA_CMD, 8, DMA_RUN | (DMA_TO_RAM if to_ram else 0))
    deadline = time.monotonic() + DMA_TIMEOUT
    while bar.read_int(DMA_CMD, 8) & DMA_RUN:
        assert time.monotonic() < deadline, "the edu's DMA never finished (RUN still set)"
        time.sleep(0.01)


def edu_factorial(bar: Any, n: int) -> int:
    """n! (mod 2^32) computed by the edu through ``bar`` (BAR0), as a driver does: write n
    to 0x08, wait until status bit 0x01 (computing) clears, read 0x08."""
    bar.write_int(FACT, 4, n)
    deadline = time.monotonic() + DMA_TIMEOUT
    while bar.read_int(STATUS, 4) & STATUS_COMPUTING:
        assert time.monotonic() < deadline, "the edu's factorial never finished (status 0x01)"
        time.sleep(0.001)
    return int(bar.read_int(FACT, 4))
