"""One heap of deadlines, at most one live entry per owner.

Theory of operation
-------------------
Every connection has one deadline, and it moves all the time: later on each sign of progress,
earlier only when a phase with a shorter limit begins. A heap keyed on the deadline gives the
earliest one in O(1), but moving an entry inside a heap costs a search. So an entry is never
moved: the owner remembers the deadline its live entry was pushed at (``owner.timer_at``), and

* a deadline that moves *later* costs nothing now: when the old entry comes due,
  :meth:`Timers.due` sees that the owner's deadline has not passed and pushes it again, once;
* a deadline that moves *earlier* pushes a new entry, and the old one becomes stale.

Stale entries (superseded, or of owners that closed) are skipped when they come due, and swept
out in one pass when they outnumber the live ones: O(1) amortized per push, and never a scan of
all connections per event. The tie-breaker in an entry is the owner's own number, so an entry
costs no new int, and one owner never has two entries with one deadline.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from typing import Any, Protocol

SLACK = 64  # stale entries tolerated beyond two per open owner


class Owner(Protocol):
    """What the heap needs of whatever it times: the deadline it was pushed at, a number, and
    whether it is still open (an entry of a closed owner is stale)."""

    timer_at: float

    @property
    def ident(self) -> int: ...
    @property
    def is_open(self) -> bool: ...


class Timers:
    """The heap; :meth:`arm` after each step, :meth:`due` once per loop pass."""

    __slots__ = ("heap",)

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, Owner]] = []

    def next_at(self) -> float | None:
        """The earliest deadline pushed (perhaps stale, which only wakes the loop early)."""
        return self.heap[0][0] if self.heap else None

    def arm(self, owner: Owner, deadline: float, live: int) -> None:
        """Make sure ``owner`` is woken by ``deadline``; ``live`` owners are open."""
        if deadline < owner.timer_at:
            owner.timer_at = deadline
            heapq.heappush(self.heap, (deadline, owner.ident, owner))
            if len(self.heap) > 2 * live + SLACK:
                self.compact()

    def compact(self) -> None:
        """Drop the stale entries. In place: :meth:`due` may be iterating this very list when
        an :meth:`arm` lands here."""
        heap = self.heap
        heap[:] = [e for e in heap if e[2].is_open and e[0] == e[2].timer_at]
        heapq.heapify(heap)

    def due(self, now: float, deadline_of: Callable[[Any], float]) -> Iterator[Owner]:
        """Pop and yield each owner whose deadline has passed; re-push the ones whose deadline
        moved later. ``deadline_of(owner)`` is its current deadline."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            at, _, owner = heapq.heappop(heap)
            if not owner.is_open or at != owner.timer_at:
                continue  # closed, or superseded by an earlier entry
            owner.timer_at = float("inf")
            deadline = deadline_of(owner)
            if deadline > now:
                owner.timer_at = deadline
                heapq.heappush(heap, (deadline, owner.ident, owner))
                continue
            yield owner
