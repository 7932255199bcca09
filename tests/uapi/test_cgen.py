"""The header checker itself: a deliberately wrong mirror must fail where it is wrong, only."""

from __future__ import annotations

import ctypes
import types
from pathlib import Path

import pytest

from . import cgen
from .test_headers import require_header_dir


def _struct(module: types.ModuleType, name: str, fields: list, **extra: object) -> None:
    cls = type(
        name, (ctypes.Structure,), {"_fields_": fields, "__module__": module.__name__, **extra}
    )
    setattr(module, name, cls)


def _fake_mirror() -> cgen.Mirror:
    m = types.ModuleType("fake_uapi")
    u32, u64 = ctypes.c_uint32, ctypes.c_uint64
    _struct(m, "iommu_destroy", [("id", u32), ("size", u32)])  # swapped: offsets wrong
    _struct(m, "iommu_ioas_alloc", [("size", u32), ("flags", u32), ("out_ioas", u32)])
    _struct(m, "no_such_struct", [("x", u32)])
    _struct(
        m, "iommu_ioas_unmap", [("size", u32), ("ioas_id", u32), ("iova", u64), ("length", u64)]
    )
    _struct(
        m,
        "vfio_irq_set",
        [
            ("argsz", u32),
            ("flags", u32),
            ("index", u32),
            ("start", u32),
            ("count", u32),
            ("data", ctypes.c_uint8 * 0),
        ],
    )
    union = type("_u", (ctypes.Union,), {"_fields_": [("group_id", u32), ("devid", u32)]})
    _struct(
        m,
        "vfio_pci_dependent_device",
        [
            ("u", union),
            ("segment", ctypes.c_uint16),
            ("bus", ctypes.c_uint8),
            ("devfn", ctypes.c_uint8),
        ],
        _anonymous_=("u",),
    )
    constants: dict[str, int | str] = {
        "IOMMU_IOAS_MAP": 0x3B86,  # wrong: that is IOAS_UNMAP
        "IOMMU_IOAS_UNMAP": 0x3B86,
        "NO_SUCH_CONSTANT": 1,
        "VFIO_PCI_DEVID_NOT_OWNED": -1,  # a C int -1
        "VFIO_REGION_TYPE_PCI_VENDOR_TYPE": 1 << 31,  # a C (1 << 31)
        "VFIO_DEVICE_API_PCI_STRING": "vfio-pci",
        "VFIO_DEVICE_API_AP_STRING": "vfio-pc",  # wrong
        "VFIO_PCI_NUM_IRQS": 1 << 40,  # does not fit the C int
        "PYTHON_ONLY_THING": 7,
    }
    for name, value in constants.items():
        setattr(m, name, value)
    return cgen.Mirror(m, ("linux/iommufd.h", "linux/vfio.h"), frozenset({"PYTHON_ONLY_THING"}))


def test_checker_reports_each_mismatch_by_name(tmp_path: Path) -> None:
    hdr = require_header_dir()
    mirror = _fake_mirror()
    checks = cgen.checks_for(mirror)
    try:
        cgen.run(checks, mirror.includes, hdr, tmp_path)
    except cgen.ToolMissing as e:
        pytest.skip(str(e))
    failing = {c.owner for c in checks if cgen.mismatch(c) is not None}
    assert failing == {
        "struct iommu_destroy",
        "struct iommu_ioas_alloc",
        "struct no_such_struct",
        "IOMMU_IOAS_MAP",
        "NO_SUCH_CONSTANT",
        "VFIO_DEVICE_API_AP_STRING",
        "VFIO_PCI_NUM_IRQS",
    }
    alloc = [cgen.mismatch(c) for c in checks if c.owner == "struct iommu_ioas_alloc"]
    assert any(m and "out_ioas" in m and "not in the header" in m for m in alloc)
    assert all("PYTHON_ONLY_THING" not in c.owner for c in checks)
