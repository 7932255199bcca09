"""The ioctl dispatch table: handlers by request number, profile predicates, the default."""

from __future__ import annotations

import errno
from types import SimpleNamespace

import pytest

from passthru.errors import kerr
from passthru.kernel.fs.ioctl_table import IoctlTable


def _default(f, proc, cmd, arg):  # noqa: ANN001, ANN202
    raise kerr(errno.ENOTTY, f"ioctl {cmd:#x}: unknown")


def test_dispatch_by_number_with_profile_predicates() -> None:
    t = IoctlTable("test", _default)

    @t.handler(1, 2)
    def one_or_two(f, proc, arg):  # noqa: ANN001, ANN202
        return arg * 10

    @t.handler(3, when=lambda prof: prof.has_three)
    def three(f, proc, arg):  # noqa: ANN001, ANN202
        return 3

    f = SimpleNamespace(kernel=SimpleNamespace(profile=SimpleNamespace(has_three=False)))
    assert t.dispatch(f, None, 1, 4) == 40 and t.dispatch(f, None, 2, 5) == 50
    with pytest.raises(OSError) as ei:
        t.dispatch(f, None, 3, 0)  # the profile does not have it: the default answers
    assert ei.value.errno == errno.ENOTTY
    f.kernel.profile.has_three = True
    assert t.dispatch(f, None, 3, 0) == 3
    with pytest.raises(ValueError):
        t.handler(1)(one_or_two)
    assert 2 in t and 9 not in t
