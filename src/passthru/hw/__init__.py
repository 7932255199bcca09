"""hw: physical truth (address space, owners), machines as data."""

from .machine import Machine, default_machine
from .physmem import Owner, PhysMem

__all__ = ["Machine", "Owner", "PhysMem", "default_machine"]
