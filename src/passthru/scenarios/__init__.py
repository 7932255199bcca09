"""The built-in scenario library: importing it registers every scenario."""

from . import demos, kvm

__all__ = ["demos", "kvm"]
