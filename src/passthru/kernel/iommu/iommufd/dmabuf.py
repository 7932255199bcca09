"""IOAS_MAP_FILE of a dma-buf (drivers/iommu/iommufd/pages.c iopt_map_dmabuf, 6.19)."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ....errors import kerr
from ...dma_buf.core import DmaBuf

if TYPE_CHECKING:
    from ...fs.file import File
    from .main import Ucmd
    from .pages import IoptPages


def is_dma_buf_file(f: File) -> bool:
    """is_dma_buf_file."""
    return isinstance(f, DmaBuf)


def iopt_alloc_dmabuf_pages(ucmd: Ucmd, f: File, start: int, length: int,
                            writable: bool) -> IoptPages:
    raise kerr(errno.EOPNOTSUPP, "IOMMU_IOAS_MAP_FILE of a dma-buf: not built yet")
