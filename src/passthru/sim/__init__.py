"""sim: the deterministic scheduler, locks, fault points and the event log."""

from .locks import Completion, Mutex, RwSem, Srcu, WaitQueue, WwAcquireCtx, WwMutex
from .log import Event, EventLog
from .scheduler import Scheduler, SimDeadlock, Task, Violation

__all__ = [
    "Completion",
    "Event",
    "EventLog",
    "Mutex",
    "RwSem",
    "Scheduler",
    "SimDeadlock",
    "Srcu",
    "Task",
    "Violation",
    "WaitQueue",
    "WwAcquireCtx",
    "WwMutex",
]
