"""vfio-pci's virtual config space (drivers/vfio/pci/vfio_pci_config.c).

Userspace reads and writes the device's config space through the config region (index 7);
vfio keeps a shadow copy, ``vconfig``, and per-byte permission bits saying which bits are
*virtualised* (read from / written to ``vconfig``) and which are *writable*; bits neither
virtual nor writable pass through on read and are dropped on write. The tables, as the
kernel's init_pci_cap_*_perm set them:

- type-0 header (init_pci_cap_basic_perm): VENDOR/DEVICE_ID virtual, read-only; COMMAND
  virtualises only INTX_DISABLE, every bit writable (MEMORY, MASTER... reach the hardware);
  STATUS virtualises CAP_LIST, read-only; CACHE_LINE_SIZE, LATENCY_TIMER, BIST pass through
  writable; BAR0-5 and the ROM BAR virtual and writable (the device's real BARs are never
  touched: a read returns what was written masked to the BAR's size plus its flags —
  vfio_bar_fixup — so sizing with all ones works); CAPABILITY_LIST and INTERRUPT_PIN
  virtual read-only, INTERRUPT_LINE virtual writable; the rest (class, revision, header
  type, subsystem IDs) pass through read-only.
- PM (init_pci_cap_pm_perm): NEXT virtual; PMC's PME support virtual; PMCSR's PME_ENABLE and
  PME_STATUS virtual, everything else but the state bits writable; a write of PMCSR sets
  the power state through vfio (vfio_lock_and_set_power_state): to D3hot zap + revoke under
  memory_lock (write), then the state change, then un-revoke when memory is enabled.
- PCIe (init_pci_cap_exp_perm): NEXT virtual; DEVCTL virtualises BCR_FLR, PAYLOAD and
  READRQ, everything but PHANTOM writable; DEVCTL2 writable but ARI. Setting BCR_FLR (it
  reads back 0) on a device with DEVCAP.FLR zaps and revokes under memory_lock (write),
  resets the function (pci_try_reset_function: config saved and restored), and un-revokes
  when memory is enabled. READRQ is applied to the hardware (pcie_set_readrq).
- MSI (the per-device msi_perm): all virtual; flags ENABLE/QSIZE, address and data
  writable (vfio emulates MSI: nothing reaches the device's MSI registers).
- bytes outside any known capability (gaps, extended config space): raw read-write to the
  hardware (unassigned_perms).
COMMAND writes (vfio_basic_config_write): clearing MEMORY zaps the BARs' mmaps and revokes
the dma-bufs under memory_lock (write); the new MEMORY/IO bits are saved in ``vconfig``; a
write setting MEMORY un-revokes when memory is then enabled (__vfio_pci_memory_enabled reads
the *virtual* MEMORY bit and the power state).

Accesses are split as vfio_config_do_rw does: naturally aligned 4-, 2- or 1-byte chunks that
do not cross a capability; an access outside [0, cfg_size) is EFAULT.

Invariants: ``vconfig`` holds cfg_size bytes; the virtual MEMORY/IO bits of COMMAND are the
last values userspace wrote (or the hardware's at open); BCR_FLR reads 0.
Units: config offsets and sizes in bytes; values little endian.
Locking: ``vconfig`` has no lock in the kernel (concurrent config accesses from userspace race
on it there too, harmlessly): an ``atomic`` store here; the COMMAND/PM/FLR side effects run
under ``memory_lock`` held for write, as the kernel's.
Leaves out: the extended capabilities' own tables (AER, PWR, VNDR, DVSEC; hiding unknown
ecaps), PCI-X, VPD, AF FLR, MSI-X control virtualisation, INTx masking through
INTX_DISABLE (no interrupts are modelled), vfio_bar_restore after a backdoor reset, the
no_command_memory (VF) case, D1/D2 (refused by the hardware's PMC).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ....errors import kerr
from ....extents import ByteStore
from ....hw import pcidev as R
from ....sim import track
from ...pci.tsm.designs import FLR

if TYPE_CHECKING:
    from .vfio_pci_core import VfioPciCoreDevice

PCI_ROM_ADDRESS = 0x30
PCI_BIST = 0x0F
PCI_PM_CAP_PME_MASK = 0xF800
PCI_PM_CTRL_PME_ENABLE = 0x0100
PCI_PM_CTRL_PME_STATUS = 0x8000
PCI_EXP_DEVCTL_PAYLOAD = 0x00E0
PCI_EXP_DEVCTL_READRQ = 0x7000
PCI_EXP_DEVCTL_PHANTOM = 0x0200
PCI_EXP_DEVCTL2 = 0x28
PCI_EXP_DEVCTL2_ARI = 0x0020
PCI_MSI_FLAGS_QSIZE = 0x0070
PCI_BASE_ADDRESS_MEM_MASK = ~0xF

BASIC, PM, MSI, EXP = "basic", "pm", "msi", "exp"
_CAP_KIND = {R.PCI_CAP_ID_PM: PM, R.PCI_CAP_ID_MSI: MSI, R.PCI_CAP_ID_EXP: EXP}
_CAP_LEN = {R.PCI_CAP_ID_PM: R.PCI_PM_SIZEOF, R.PCI_CAP_ID_EXP:
            R.PCI_CAP_EXP_ENDPOINT_SIZEOF_V2}


def _ones(n: int) -> int:
    return (1 << (8 * n)) - 1


class VfioPciConfig(track.Tracked):
    """The virtual config space of one device: ``vconfig``, the permission bits and the
    capability map (vdev->vconfig, ->pci_config_map, the perm tables)."""

    def __init__(self, vdev: VfioPciCoreDevice) -> None:
        pdev = vdev.pdev
        self.vdev = vdev
        self.size = pdev.cfg_size
        self.virt = bytearray(self.size)
        self.wr = bytearray(self.size)
        self.kind: list[str | None] = [None] * self.size  # None: unassigned (raw)
        self.start = [0] * self.size  # the capability's first byte
        self.vconfig = ByteStore(label=f"vfio.{vdev.name}.vconfig")
        self.vconfig._atomic = True  # no lock in the kernel (see the module)
        self.bardirty = True
        for off in range(0, self.size, 4):  # vfio_fill_vconfig_bytes
            self.vconfig.write(off, pdev.cfg_read(off, 4).to_bytes(4, "little"))
        self._basic_perms()
        self._caps()

    # ----- the perm tables (p_setb/p_setw/p_setd) ------------------------------------------
    def _set(self, off: int, n: int, virt: int, write: int) -> None:
        self.virt[off:off + n] = (virt & _ones(n)).to_bytes(n, "little")
        self.wr[off:off + n] = (write & _ones(n)).to_bytes(n, "little")

    def _basic_perms(self) -> None:
        for i in range(R.PCI_CAPABILITY_LIST + 0xC):  # PCI_STD_HEADER_SIZEOF = 64
            self.kind[i] = BASIC
        self._set(R.PCI_VENDOR_ID, 2, ~0, 0)
        self._set(R.PCI_DEVICE_ID, 2, ~0, 0)
        self._set(R.PCI_COMMAND, 2, R.PCI_COMMAND_INTX_DISABLE, ~0)
        self._set(R.PCI_STATUS, 2, R.PCI_STATUS_CAP_LIST, 0)
        self._set(R.PCI_CACHE_LINE_SIZE, 1, 0, ~0)
        self._set(R.PCI_LATENCY_TIMER, 1, 0, ~0)
        self._set(PCI_BIST, 1, 0, ~0)
        for i in range(6):
            self._set(R.PCI_BASE_ADDRESS_0 + 4 * i, 4, ~0, ~0)
        self._set(PCI_ROM_ADDRESS, 4, ~0, ~0)
        self._set(R.PCI_CAPABILITY_LIST, 1, ~0, 0)
        self._set(R.PCI_INTERRUPT_LINE, 1, ~0, ~0)
        self._set(R.PCI_INTERRUPT_PIN, 1, ~0, 0)

    def _caps(self) -> None:
        """vfio_cap_init: walk the hardware's list; map each known capability's bytes."""
        pdev = self.vdev.pdev
        pos = pdev.cfg_read(R.PCI_CAPABILITY_LIST, 1) & ~3
        seen = 0
        while pos and seen < 48:
            seen += 1
            cid = pdev.cfg_read(pos, 1)
            nxt = pdev.cfg_read(pos + 1, 1) & ~3
            kind = _CAP_KIND.get(cid)
            if kind is not None:
                n = _CAP_LEN.get(cid) or self._msi_len(pos)
                for i in range(pos, min(pos + n, self.size)):
                    self.kind[i] = kind
                    self.start[i] = pos
                self._set(pos + R.PCI_CAP_LIST_ID, 1, ~0, 0)
                self._set(pos + R.PCI_CAP_LIST_NEXT, 1, ~0, 0)
                getattr(self, f"_perm_{kind}")(pos, n)
            pos = nxt

    def _msi_len(self, pos: int) -> int:
        flags = self.vdev.pdev.cfg_read(pos + R.PCI_MSI_FLAGS, 2)
        return 14 if flags & R.PCI_MSI_FLAGS_64BIT else 10

    def _perm_pm(self, pos: int, n: int) -> None:
        self._set(pos + R.PCI_PM_PMC, 2, PCI_PM_CAP_PME_MASK, 0)
        pme = PCI_PM_CTRL_PME_ENABLE | PCI_PM_CTRL_PME_STATUS
        self._set(pos + R.PCI_PM_CTRL, 4, pme, ~(pme | R.PCI_PM_CTRL_STATE_MASK))
        # the guest cannot handle PME: the PME bits are cleared in vconfig
        self._vwrite(pos + R.PCI_PM_PMC, 2, self._vread(pos + R.PCI_PM_PMC, 2)
                     & ~PCI_PM_CAP_PME_MASK)
        self._vwrite(pos + R.PCI_PM_CTRL, 2, self._vread(pos + R.PCI_PM_CTRL, 2) & ~pme)

    def _perm_exp(self, pos: int, n: int) -> None:
        self._set(pos + R.PCI_EXP_DEVCTL, 2, R.PCI_EXP_DEVCTL_BCR_FLR | PCI_EXP_DEVCTL_PAYLOAD
                  | PCI_EXP_DEVCTL_READRQ, ~PCI_EXP_DEVCTL_PHANTOM)
        if n > PCI_EXP_DEVCTL2:
            self._set(pos + PCI_EXP_DEVCTL2, 2, 0, ~PCI_EXP_DEVCTL2_ARI)

    def _perm_msi(self, pos: int, n: int) -> None:
        self._set(pos + R.PCI_MSI_FLAGS, 2, ~0, R.PCI_MSI_FLAGS_ENABLE | PCI_MSI_FLAGS_QSIZE)
        for off in range(pos + 4, pos + n):
            self._set(off, 1, ~0, ~0)

    # ----- vconfig ---------------------------------------------------------------------------
    def _vread(self, off: int, n: int) -> int:
        return int.from_bytes(self.vconfig.read(off, n), "little")

    def _vwrite(self, off: int, n: int, val: int) -> None:
        self.vconfig.write(off, (val & _ones(n)).to_bytes(n, "little"))

    def virt_command(self) -> int:
        return self._vread(R.PCI_COMMAND, 2)

    def bar_fixup(self) -> None:
        """vfio_bar_fixup: each virtual BAR masked to its size, with the hardware's flags;
        an unimplemented BAR (or ROM) reads 0."""
        pdev = self.vdev.pdev
        bars = pdev.func.bars
        i = 0
        while i < 6:
            reg = R.PCI_BASE_ADDRESS_0 + 4 * i
            bar = bars.get(i)
            if bar is None:
                self._vwrite(reg, 4, 0)
                i += 1
                continue
            mask = ~(bar.size - 1) & _ones(8)
            flags = pdev.cfg_read(reg, 4) & 0xF
            self._vwrite(reg, 4, (self._vread(reg, 4) & mask & PCI_BASE_ADDRESS_MEM_MASK)
                         | flags)
            if flags & R.PCI_BASE_ADDRESS_MEM_TYPE_64 and i < 5:
                self._vwrite(reg + 4, 4, self._vread(reg + 4, 4) & (mask >> 32))
                i += 1
            i += 1
        self._vwrite(PCI_ROM_ADDRESS, 4, 0)  # no expansion ROM in the model
        self.bardirty = False

    # ----- access (vfio_pci_config_rw / vfio_config_do_rw) -----------------------------------
    def _chunk(self, pos: int, count: int) -> int:
        """vfio_pci_cap_remaining_dword, then the aligned 4/2/1 split."""
        k = 1
        while (pos + k) % 4 and pos + k < self.size and self.kind[pos + k] == self.kind[pos] \
                and self.start[pos + k] == self.start[pos]:
            k += 1
        count = min(count, k)
        if count >= 4 and not pos % 4:
            return 4
        if count >= 2 and not pos % 2:
            return 2
        return 1

    def rw(self, pos: int, count: int, data: bytes | None) -> bytes | int:
        """Read ``count`` bytes at ``pos`` (the bytes) or write ``data`` (the count)."""
        if pos < 0 or pos >= self.size or pos + count > self.size:
            raise kerr(errno.EFAULT, f"{self.vdev.name}: config access [{pos:#x}, "
                       f"+{count:#x}) outside the {self.size}-byte config space")
        out = bytearray()
        done = 0
        while done < count:
            at = pos + done
            n = self._chunk(at, count - done)
            if data is None:
                out += self._read(at, n).to_bytes(n, "little")
            else:
                self._write(at, n, int.from_bytes(data[done:done + n], "little"))
            done += n
        return bytes(out) if data is None else done

    def _read(self, pos: int, n: int) -> int:
        kind = self.kind[pos]
        if kind is None:
            return self.vdev.pdev.cfg_read(pos, n)  # vfio_raw_config_read
        if kind == BASIC and R.PCI_BASE_ADDRESS_0 <= pos < PCI_ROM_ADDRESS + 4 \
                and self.bardirty:
            self.bar_fixup()
        val = self._vread(pos, n)
        virt = int.from_bytes(self.virt[pos:pos + n], "little")
        if virt != _ones(n):  # some bits pass through
            phys = self.vdev.pdev.cfg_read(pos, n)
            val = (phys & ~virt) | (val & virt)
        return val & _ones(n)

    def _default_write(self, pos: int, n: int, val: int) -> None:
        """vfio_default_config_write."""
        write = int.from_bytes(self.wr[pos:pos + n], "little")
        if not write:
            return
        virt = int.from_bytes(self.virt[pos:pos + n], "little")
        if write & virt:
            v = self._vread(pos, n)
            self._vwrite(pos, n, (v & ~(write & virt)) | (val & write & virt))
        if write & ~virt:
            pdev = self.vdev.pdev
            p = pdev.cfg_read(pos, n)
            pdev.cfg_write(pos, n, (p & ~(write & ~virt)) | (val & write & ~virt))

    def _write(self, pos: int, n: int, val: int) -> None:
        kind = self.kind[pos]
        if kind is None:
            self.vdev.pdev.cfg_write(pos, n, val)  # vfio_raw_config_write
        elif kind == BASIC:
            self._basic_write(pos, n, val)
        elif kind == PM:
            self._default_write(pos, n, val)
            if pos - self.start[pos] == R.PCI_PM_CTRL:
                self.vdev.lock_and_set_power_state(
                    R.D3HOT if val & R.PCI_PM_CTRL_STATE_MASK == 3 else
                    R.D0 if not val & R.PCI_PM_CTRL_STATE_MASK else "D1/D2")
        elif kind == EXP:
            self._exp_write(pos, n, val)
        else:
            self._default_write(pos, n, val)

    def _basic_write(self, pos: int, n: int, val: int) -> None:
        """vfio_basic_config_write: COMMAND's MEMORY side effects under memory_lock."""
        vdev = self.vdev
        if R.PCI_BASE_ADDRESS_0 <= pos < PCI_ROM_ADDRESS + 4:
            self.bardirty = True
        if pos != R.PCI_COMMAND:
            self._default_write(pos, n, val)
            return
        new_mem = bool(val & R.PCI_COMMAND_MEMORY)
        if not new_mem:
            vdev.memory_lock.down_write()
            for ev in vdev.tsm_command_events(val):  # the TSM before the zap (designs.py)
                vdev.tsm_notify(ev)
            vdev.zap_bars()
            vdev.dma_buf_move(True)
        else:
            vdev.memory_lock.down_write()
            for ev in vdev.tsm_command_events(val):  # a BME clear
                vdev.tsm_notify(ev)
        try:
            self._default_write(pos, n, val)
            mask = R.PCI_COMMAND_MEMORY | R.PCI_COMMAND_IO
            self._vwrite(R.PCI_COMMAND, 2, (self.virt_command() & ~mask) | (val & mask))
            if vdev.memory_enabled():
                vdev.dma_buf_move(False)
        finally:
            vdev.memory_lock.up_write()
        vdev.kernel.sched.emit("vfio", "command", dev=vdev.name, val=val & 0xFFFF,
                               mse=new_mem)

    def _exp_write(self, pos: int, n: int, val: int) -> None:
        """vfio_exp_config_write: a virtual BCR_FLR starts a reset; READRQ to the device."""
        vdev = self.vdev
        cap = self.start[pos]
        self._default_write(pos, n, val)
        ctrl_reg = cap + R.PCI_EXP_DEVCTL
        if not pos <= ctrl_reg < pos + n:
            return
        ctrl = self._vread(ctrl_reg, 2)
        rq = ctrl & PCI_EXP_DEVCTL_READRQ
        hw = vdev.pdev.cfg_read(ctrl_reg, 2)
        if hw & PCI_EXP_DEVCTL_READRQ != rq:
            vdev.pdev.cfg_write(ctrl_reg, 2, (hw & ~PCI_EXP_DEVCTL_READRQ) | rq)
        if ctrl & R.PCI_EXP_DEVCTL_BCR_FLR:
            self._vwrite(ctrl_reg, 2, ctrl & ~R.PCI_EXP_DEVCTL_BCR_FLR)
            if vdev.pdev.cfg_read(cap + R.PCI_EXP_DEVCAP, 4) & R.PCI_EXP_DEVCAP_FLR:
                vdev.zap_and_down_write_memory_lock(FLR)
                try:
                    vdev.dma_buf_move(True)
                    vdev.pci_try_reset_function()
                    if vdev.memory_enabled():
                        vdev.dma_buf_move(False)
                finally:
                    vdev.memory_lock.up_write()
