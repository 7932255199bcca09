"""passthru.uapi against the kernel's C headers (gcc + Debian linux-libc-dev 7.3, unpacked).

The header directory is $PASSTHRU_UAPI_HEADERS, else ~/.cache/passthru/uapi-headers/usr/include
(what tools/fetch-headers.sh makes); the first that holds linux/iommufd.h is used. Without
one, or without gcc, the header tests skip and say why.
drivers/iommu/iommufd/iommufd_test.h is not uAPI: tools/fetch-headers.sh takes it from Debian's
linux-source-7.3 into the same directory, under its kernel-tree path; without it, only the
iommufd_test checks skip, naming the missing file.
The golden-number tests (KERNEL.md, proposals, Python-only names) always run.

One compile per session: the module fixture builds a single C program for every check.
Each struct and each constant is its own test; its failure lists every mismatch by name.
"""

from __future__ import annotations

import ctypes
import os
import types
from pathlib import Path

import pytest

from passthru.uapi import dma_buf, dma_heap, iommufd, iommufd_test, kvm, proposed, udmabuf, vfio
from passthru.uapi.ioctl import _IO

from . import cgen

# Not uAPI: the kernel source's file, which the selftests include by relative path.
IOMMUFD_TEST_H = "drivers/iommu/iommufd/iommufd_test.h"

MIRRORS = {
    "kvm": cgen.Mirror(kvm, ("linux/kvm.h",)),
    "iommufd": cgen.Mirror(
        iommufd,
        ("linux/iommufd.h",),
        # re-exported from iommufd_test, checked there against iommufd_test.h
        python_only=frozenset(iommufd_test.__all__),
    ),
    "vfio": cgen.Mirror(
        vfio,
        ("linux/vfio.h",),
        # include/linux/vfio_pci_core.h, kernel-internal: checked by golden number below
        python_only=frozenset({"VFIO_PCI_OFFSET_SHIFT"}),
    ),
    "dma_buf": cgen.Mirror(dma_buf, ("linux/dma-buf.h",)),
    "dma_heap": cgen.Mirror(dma_heap, ("linux/dma-heap.h",)),
    "udmabuf": cgen.Mirror(udmabuf, ("linux/udmabuf.h",)),
    "iommufd_test": cgen.Mirror(iommufd_test, (IOMMUFD_TEST_H,)),
}
# Mirrors of headers linux-libc-dev does not install: the file whose absence skips them.
OPTIONAL_HEADERS = {"iommufd_test": IOMMUFD_TEST_H}

# Names that are not in the 7.3 headers, with the number they must have.
PYTHON_ONLY_GOLDEN = {
    (vfio, "VFIO_PCI_OFFSET_SHIFT"): 40,
}
PROPOSED_GOLDEN = {
    "IOMMUFD_CMD_VDEVICE_TSM_OP": 0x96,
    "IOMMUFD_CMD_VDEVICE_TSM_OP_AS_POSTED": 0x95,
    "IOMMU_VDEVICE_TSM_OP": 15254,  # _IO(';', 0x96)
    "IOMMU_VDEVICE_TSM_BIND": 1,
    "IOMMU_VDEVICE_TSM_UNBIND": 2,
    "KVM_MEM_VFIO_DMABUF": 1 << 3,
}
# Macros a merged version of a proposal would define: if the headers gain one, say so.
PROPOSED_MACROS = ("IOMMU_VDEVICE_TSM_OP", "KVM_MEM_VFIO_DMABUF")

MIN_VERSION = (7 << 16) | (3 << 8)


def _all_checks() -> tuple[list[cgen.Check], dict[str, str]]:
    checks: list[cgen.Check] = []
    mirror_of: dict[str, str] = {}
    for name, mirror in MIRRORS.items():
        for c in cgen.checks_for(mirror):
            c.owner = f"{name}: {c.owner}"
            checks.append(c)
            mirror_of[c.owner] = name
    return checks, mirror_of


CHECKS, MIRROR_OF = _all_checks()
OWNERS = list(dict.fromkeys(c.owner for c in CHECKS))


def header_dir() -> tuple[Path | None, list[Path]]:
    tried: list[Path] = []
    env = os.environ.get("PASSTHRU_UAPI_HEADERS")
    if env:
        tried.append(Path(env))
    tried += [
        Path.home() / ".cache/passthru/uapi-headers/usr/include",
    ]
    for d in tried:
        if (d / "linux" / "iommufd.h").is_file():
            return d, tried
    return None, tried


def require_header_dir() -> Path:
    """The header directory, or skip the test saying which paths were tried."""
    hdr, tried = header_dir()
    if hdr is None:
        pytest.skip(
            "no uAPI headers: none of "
            + ", ".join(str(p) for p in tried)
            + " has linux/iommufd.h (run tools/fetch-headers.sh, or set PASSTHRU_UAPI_HEADERS)"
        )
    return hdr


def missing_optional(hdr: Path, mirror: str) -> str | None:
    """Why ``mirror`` cannot be checked in ``hdr`` (its header file is missing), or None."""
    rel = OPTIONAL_HEADERS.get(mirror)
    if rel is None or (hdr / rel).is_file():
        return None
    return (
        f"no {hdr / rel} (not installed by linux-libc-dev: tools/fetch-headers.sh extracts it "
        "from Debian's linux-source-7.3)"
    )


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> cgen.Result:
    hdr = require_header_dir()
    present = [m for m in MIRRORS if missing_optional(hdr, m) is None]
    includes = [h for m in present for h in MIRRORS[m].includes]
    try:
        return cgen.run(
            [c for c in CHECKS if MIRROR_OF[c.owner] in present],
            includes,
            hdr,
            tmp_path_factory.mktemp("uapi"),
            probe_macros=PROPOSED_MACROS,
        )
    except cgen.ToolMissing as e:
        pytest.skip(str(e))


def test_header_version(compiled: cgen.Result) -> None:
    v = compiled.version
    assert v >= MIN_VERSION, (
        f"headers are Linux {v >> 16}.{(v >> 8) & 0xFF}.{v & 0xFF}; the mirrors follow 7.3"
    )


@pytest.mark.parametrize("owner", OWNERS)
def test_mirror_matches_header(compiled: cgen.Result, owner: str) -> None:
    if (why := missing_optional(require_header_dir(), MIRROR_OF[owner])) is not None:
        pytest.skip(why)
    problems = [
        msg for c in compiled.checks if c.owner == owner and (msg := cgen.mismatch(c)) is not None
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", PROPOSED_MACROS)
def test_proposal_not_merged_differently(compiled: cgen.Result, name: str) -> None:
    if name not in compiled.defined:
        return
    assert compiled.defined[name] == getattr(proposed, name), (
        f"{name} is now in the headers as {compiled.defined[name]:#x}, "
        f"but passthru.uapi.proposed has {getattr(proposed, name):#x}"
    )


def test_iommufd_header_fully_mirrored() -> None:
    """iommufd.h is mirrored whole: every struct, macro and enum value in the header."""
    import re

    hdr = require_header_dir()
    text = re.sub(r"/\*.*?\*/", "", (hdr / "linux" / "iommufd.h").read_text(), flags=re.S)
    names = set(re.findall(r"^struct (\w+) \{", text, re.M))
    names |= set(re.findall(r"^#define ([A-Z]\w*)", text, re.M))
    names |= set(re.findall(r"^\s*([A-Z][A-Z0-9_]+)\s*[=,]", text, re.M))
    missing = sorted(n for n in names if not hasattr(iommufd, n))
    assert not missing, f"in iommufd.h but not in passthru.uapi.iommufd: {missing}"


def test_iommufd_test_header_fully_mirrored() -> None:
    """iommufd_test.h is mirrored whole: every struct, macro, enum value and member of the
    anonymous union of struct iommu_test_cmd; iommufd re-exports all of it."""
    import re

    hdr = require_header_dir()
    if (why := missing_optional(hdr, "iommufd_test")) is not None:
        pytest.skip(why)
    text = re.sub(r"/\*.*?\*/", "", (hdr / IOMMUFD_TEST_H).read_text(), flags=re.S)
    names = set(re.findall(r"^struct (\w+) \{", text, re.M))
    names |= set(re.findall(r"^#define ([A-Z]\w*)", text, re.M))
    names |= set(re.findall(r"^\s*([A-Z][A-Z0-9_]+)\s*[=,]", text, re.M))
    missing = sorted(n for n in names if not hasattr(iommufd_test, n))
    assert not missing, f"in iommufd_test.h but not in passthru.uapi.iommufd_test: {missing}"
    assert names <= set(iommufd_test.__all__), sorted(names - set(iommufd_test.__all__))
    cmd = re.search(r"^struct iommu_test_cmd \{(.*?)^\};", text, re.M | re.S)
    assert cmd is not None
    members = re.findall(r"^\t\t\} (\w+);", cmd.group(1), re.M)
    assert len(members) > 20
    missing = [m for m in members if not hasattr(iommufd_test.iommu_test_cmd, m)]
    assert not missing, f"union members of struct iommu_test_cmd not mirrored: {missing}"


# --- golden numbers (no headers needed) ---

KERNEL_MD_GOLDEN = {
    # KERNEL.md §3 (rust-vmm iommufd-ioctls)
    (iommufd, "IOMMU_DESTROY"): 15232,
    (iommufd, "IOMMU_IOAS_ALLOC"): 15233,
    (iommufd, "IOMMU_IOAS_MAP"): 15237,
    (iommufd, "IOMMU_IOAS_UNMAP"): 15238,
    # KERNEL.md §1, §5 request numbers, written out
    (dma_heap, "DMA_HEAP_IOCTL_ALLOC"): 0xC0184800,
    (udmabuf, "UDMABUF_CREATE"): 0x40187542,
    (udmabuf, "UDMABUF_CREATE_LIST"): 0x40087543,
    (udmabuf, "UDMABUF_FLAGS_CLOEXEC"): 1,
    (kvm, "KVM_CREATE_GUEST_MEMFD"): 0xC040AED4,
    (kvm, "KVM_SET_USER_MEMORY_REGION2"): 0x40A0AE49,
    (kvm, "KVM_SET_MEMORY_ATTRIBUTES"): 0x4020AED2,
    (kvm, "KVM_CAP_VM_TYPES"): 235,
    (kvm, "KVM_CAP_GUEST_MEMFD_FLAGS"): 244,
    (kvm, "KVM_MEMORY_ATTRIBUTE_PRIVATE"): 1 << 3,
    (vfio, "VFIO_DEVICE_FEATURE_DMA_BUF"): 11,
    (vfio, "VFIO_DEVICE_FEATURE_GET"): 1 << 16,
    (vfio, "VFIO_DEVICE_FEATURE_SET"): 1 << 17,
    (vfio, "VFIO_DEVICE_FEATURE_PROBE"): 1 << 18,
    (vfio, "VFIO_PCI_ROM_REGION_INDEX"): 6,
    (vfio, "VFIO_PCI_CONFIG_REGION_INDEX"): 7,
    (vfio, "VFIO_PCI_VGA_REGION_INDEX"): 8,
    **PYTHON_ONLY_GOLDEN,
}


@pytest.mark.parametrize(
    ("module", "name"), list(KERNEL_MD_GOLDEN), ids=[n for _, n in KERNEL_MD_GOLDEN]
)
def test_golden_number(module: types.ModuleType, name: str) -> None:
    assert getattr(module, name) == KERNEL_MD_GOLDEN[(module, name)]


def test_kernel_md_iommufd_numbering() -> None:
    """KERNEL.md §3: DESTROY 0x80 ... HW_QUEUE_ALLOC 0x94, each _IO(';', nr)."""
    order = [
        "DESTROY", "IOAS_ALLOC", "IOAS_ALLOW_IOVAS", "IOAS_COPY", "IOAS_IOVA_RANGES",
        "IOAS_MAP", "IOAS_UNMAP", "OPTION", "VFIO_IOAS", "HWPT_ALLOC", "GET_HW_INFO",
        "HWPT_SET_DIRTY_TRACKING", "HWPT_GET_DIRTY_BITMAP", "HWPT_INVALIDATE",
        "FAULT_QUEUE_ALLOC", "IOAS_MAP_FILE", "VIOMMU_ALLOC", "VDEVICE_ALLOC",
        "IOAS_CHANGE_PROCESS", "VEVENTQ_ALLOC", "HW_QUEUE_ALLOC",
    ]  # fmt: skip
    for nr, name in enumerate(order, start=0x80):
        assert getattr(iommufd, f"IOMMU_{name}") == (0x3B << 8) | nr, name


def test_iommufd_test_numbers() -> None:
    """IOMMU_TEST_CMD is _IO(IOMMUFD_TYPE, IOMMUFD_CMD_BASE + 32); iommufd_test writes those two
    numbers out (iommufd re-exports it), so they must be iommufd's."""
    assert iommufd_test._IOMMUFD_TYPE == iommufd.IOMMUFD_TYPE
    assert iommufd_test._IOMMUFD_CMD_BASE == iommufd.IOMMUFD_CMD_BASE
    assert iommufd.IOMMU_TEST_CMD == _IO(";", 0xA0) == 0x3BA0
    assert ctypes.sizeof(iommufd.iommu_test_cmd) == 72
    assert iommufd_test.iommu_test_cmd.last.offset == 64  # 16 + the union's 48 (dirty)
    for name in iommufd_test.__all__:
        assert getattr(iommufd, name) is getattr(iommufd_test, name), name


def test_iommufd_test_import_order() -> None:
    """Importing iommufd_test before iommufd still gives iommufd the re-exported names."""
    import subprocess
    import sys

    code = (
        "import passthru.uapi.iommufd_test as T, passthru.uapi.iommufd as I; "
        "assert all(hasattr(I, n) for n in T.__all__)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_kernel_md_vfio_numbering() -> None:
    """KERNEL.md §4: _IO(';', 100 + n)."""
    table = {
        "VFIO_DEVICE_GET_INFO": 7,
        "VFIO_DEVICE_GET_REGION_INFO": 8,
        "VFIO_DEVICE_GET_IRQ_INFO": 9,
        "VFIO_DEVICE_SET_IRQS": 10,
        "VFIO_DEVICE_RESET": 11,
        "VFIO_DEVICE_GET_PCI_HOT_RESET_INFO": 12,
        "VFIO_DEVICE_PCI_HOT_RESET": 13,
        "VFIO_DEVICE_FEATURE": 17,
        "VFIO_DEVICE_BIND_IOMMUFD": 18,
        "VFIO_DEVICE_ATTACH_IOMMUFD_PT": 19,
        "VFIO_DEVICE_DETACH_IOMMUFD_PT": 20,
    }
    for name, n in table.items():
        assert getattr(vfio, name) == 0x3B00 + 100 + n, name


@pytest.mark.parametrize("name", list(PROPOSED_GOLDEN))
def test_proposed_golden(name: str) -> None:
    assert getattr(proposed, name) == PROPOSED_GOLDEN[name]


def test_proposed_tsm_op_layout() -> None:
    t = proposed.iommu_vdevice_tsm_op
    assert ctypes.sizeof(t) == 16
    assert [(n, getattr(t, n).offset) for n, *_ in t._fields_] == [
        ("size", 0),
        ("type", 4),
        ("flags", 8),
        ("vdevice_id", 12),
    ]


def test_proposed_numbers_do_not_collide() -> None:
    requests = {
        getattr(iommufd, n): n for n in dir(iommufd) if n.startswith("IOMMU_") and n.isupper()
    }
    requests = {
        v: n for v, n in requests.items() if isinstance(v, int) and (v >> 8) == iommufd.IOMMUFD_TYPE
    }
    assert proposed.IOMMU_VDEVICE_TSM_OP not in requests, requests.get(
        proposed.IOMMU_VDEVICE_TSM_OP
    )
    assert _IO(iommufd.IOMMUFD_TYPE, proposed.IOMMUFD_CMD_VDEVICE_TSM_OP_AS_POSTED) == (
        iommufd.IOMMU_IOAS_NOIOMMU_GET_PA
    )
    taken = kvm.KVM_MEM_LOG_DIRTY_PAGES | kvm.KVM_MEM_READONLY | kvm.KVM_MEM_GUEST_MEMFD
    assert proposed.KVM_MEM_VFIO_DMABUF & taken == 0


# --- helpers for flexible arrays ---


def test_vfio_with_entries() -> None:
    t = vfio.with_entries(vfio.vfio_device_feature_dma_buf, 3)
    assert ctypes.sizeof(t) == ctypes.sizeof(vfio.vfio_device_feature_dma_buf) + 3 * 16
    assert vfio.with_entries(vfio.vfio_device_feature_dma_buf, 3) is t
    with pytest.raises(TypeError):
        vfio.with_entries(vfio.vfio_region_info, 1)


def test_feature_dma_buf_layout() -> None:
    arg = vfio.feature_dma_buf(2, [(0x1000, 0x2000), (0x8000, 0x1000)], open_flags=2)
    head = vfio.vfio_device_feature.from_buffer_copy(arg)
    assert head.argsz == len(arg) == 8 + 16 + 2 * 16
    assert head.flags == vfio.VFIO_DEVICE_FEATURE_GET | vfio.VFIO_DEVICE_FEATURE_DMA_BUF
    body = vfio.vfio_device_feature_dma_buf.from_buffer_copy(arg, 8)
    assert (body.region_index, body.open_flags, body.flags, body.nr_ranges) == (2, 2, 0, 2)
    ranges = (vfio.vfio_region_dma_range * 2).from_buffer_copy(arg, 8 + 16)
    assert [(r.offset, r.length) for r in ranges] == [(0x1000, 0x2000), (0x8000, 0x1000)]


def test_udmabuf_create_list() -> None:
    arg = udmabuf.create_list([(5, 0, 4096), (6, 8192, 4096)], flags=udmabuf.UDMABUF_FLAGS_CLOEXEC)
    assert len(arg) == 8 + 2 * 24
    head = udmabuf.udmabuf_create_list.from_buffer_copy(arg)
    assert (head.flags, head.count) == (1, 2)
    items = (udmabuf.udmabuf_create_item * 2).from_buffer_copy(arg, 8)
    assert [(i.memfd, i.offset, i.size) for i in items] == [(5, 0, 4096), (6, 8192, 4096)]


def test_kvm_run_exit_union() -> None:
    run = kvm.kvm_run()
    assert kvm.kvm_run.io.offset == kvm.kvm_run.mmio.offset == kvm.kvm_run.memory_fault.offset
    run.mmio.phys_addr = 0x8000
    assert run.io.direction == 0 and run.memory_fault.flags == 0x8000
