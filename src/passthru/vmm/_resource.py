"""Closable wrappers that own what was created through them.

Every wrapper in passthru.vmm holds one kernel resource of the calling process (an fd or a
mapping) and is a context manager. A wrapper *owns* the wrappers created through it (a VM its
vCPUs and guest_memfds, a memfd its mappings): ``close()`` closes those first, newest first,
then releases its own resource, so a ``with`` block leaves nothing behind. This is the Python
ownership tree, like Rust's drop order in rust-vmm, not the kernel's reference counting: the
kernel keeps a VM alive while any vCPU or guest_memfd fd refers to it, and a file alive while
it is mapped. ``close(children=False)`` releases only this resource and leaves the children
open (their owner becomes the caller), which is how a scenario closes a VM fd while its
vCPU is still open.

``close()`` is idempotent. If releasing the resource fails (an OSError from the host), the
wrapper still counts as closed and the error propagates.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from ..host.protocol import Host

_R = TypeVar("_R", bound="Resource")


class Resource:
    """One kernel resource of the calling process (an fd or a mapping), owning the wrappers
    made through it; a context manager whose exit is ``close()`` (see the module docstring)."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self._children: list[Resource] = []
        self._parent: Resource | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called (by you or by this wrapper's owner)."""
        return self._closed

    def _adopt(self, child: _R) -> _R:
        child._parent = self
        self._children.append(child)
        return child

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self!r} is closed")

    def _release(self) -> None:
        """Release this wrapper's own resource (the fd or the mapping)."""
        raise NotImplementedError

    def close(self, *, children: bool = True) -> None:
        """Close the wrappers this one owns (newest first; with ``children=False`` leave them
        open and unowned), then release this one's fd or mapping. Idempotent."""
        if self._closed:
            return
        kids, self._children = self._children, []
        if children:
            for kid in reversed(kids):
                kid.close()
        else:
            for kid in kids:
                kid._parent = None
        self._closed = True
        parent, self._parent = self._parent, None
        if parent is not None and self in parent._children:
            parent._children.remove(self)
        self._release()

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
