"""The pending notifications of one target: bounded, one per key, each due at its own time.

A :class:`KeyedQueue` holds at most one entry per key, and at most ``capacity`` entries:

* ``offer(key, item)`` for a key with an entry *replaces* its item (the latest state of the
  key's incident wins; the entry keeps its place, its due time and its age): that is the collapse.
  For a key without one it adds an entry, or refuses it (``"dropped"``) when the queue is full.
  An item that must not overtake the pending one (``behind(pending, new)`` is true: a resolution
  behind a page not yet delivered) waits behind it instead, as the entry's next item, delivered a
  group interval after it; later offers replace that next item.
* A key's first entry is due at once. An entry offered within ``group_interval_s`` after the key's
  previous delivery is due ``group_interval_s`` after that delivery, so a key's notifications
  reach a target at most once per group interval and everything in between collapses into one.
* The worker takes due entries (``take``, earliest due first) and reports each back: ``done``
  (delivered), ``release`` (to be retried: it stays, due again at once) or ``discard`` (given
  up). An entry replaced while it was out is not removed by ``done``: the newer item stays, due a
  group interval after this delivery.
* :meth:`expire` removes the entries older than a given age (counted by the caller as dropped).

Thread-safe: the dispatcher offers, the target's worker takes; :meth:`wait` sleeps until an
entry may be due.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

__all__ = ["Entry", "KeyedQueue", "Offered"]

T = TypeVar("T")
Offered = Literal["queued", "merged", "dropped"]


@dataclass
class Entry(Generic[T]):
    """One key's pending notification."""

    key: str
    item: T
    version: int  # bumped by every replacement
    queued_at: float  # monotonic: when the key's entry was created (its age counts from here)
    due: float  # monotonic: not to be sent before
    out: bool = False  # taken by the worker, not yet reported back
    pushed: int = 0  # the sequence number of its valid heap item
    next: T | None = None  # waits behind ``item``: sent a group interval after it


class KeyedQueue(Generic[T]):
    def __init__(
        self,
        capacity: int,
        group_interval_s: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.group_interval_s = group_interval_s
        self._now = monotonic
        self._entries: dict[str, Entry[T]] = {}
        # (due, sequence, key): due first, then first come first served; items whose sequence is
        # not their entry's ``pushed`` are stale and skipped.
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._sent: OrderedDict[str, float] = OrderedDict()  # key -> last delivery, oldest first
        self._cond = threading.Condition()

    def __len__(self) -> int:
        with self._cond:
            return len(self._entries)

    def offer(
        self,
        key: str,
        item: T,
        *,
        hold: bool = True,
        behind: Callable[[T, T], bool] | None = None,
    ) -> Offered:
        """Queue ``item`` as ``key``'s latest state (see the module docstring); with ``hold``
        False (a keep-alive re-send) a new entry is due at once, group interval or not."""
        with self._cond:
            now = self._now()
            e = self._entries.get(key)
            if e is not None:
                if e.next is not None or (behind is not None and behind(e.item, item)):
                    e.next = item
                else:
                    e.item = item
                    e.version += 1  # keeps its place and its due time
                return "merged"
            if len(self._entries) >= self.capacity:
                return "dropped"
            self._forget_sent(now)
            last = self._sent.get(key)
            due = now if last is None or not hold else max(now, last + self.group_interval_s)
            e = Entry(key, item, 0, now, due)
            self._entries[key] = e
            self._push(e)
            self._cond.notify_all()
            return "queued"

    def take(self, limit: int, *, ignore_due: bool = False) -> list[tuple[Entry[T], T, int]]:
        """Up to ``limit`` due entries (with ``ignore_due``, any not out), marked out, each with
        its item and version as taken (``offer`` may replace them meanwhile)."""
        with self._cond:
            now = float("inf") if ignore_due else self._now()
            got: list[tuple[Entry[T], T, int]] = []
            while self._heap and len(got) < limit and self._heap[0][0] <= now:
                _, seq, key = heapq.heappop(self._heap)
                e = self._entries.get(key)
                if e is None or e.out or e.pushed != seq:
                    continue  # stale heap item
                e.out = True
                got.append((e, e.item, e.version))
            return got

    def done(self, entry: Entry[T], version: int) -> None:
        """``entry`` was delivered as it was at ``version``."""
        with self._cond:
            now = self._now()
            self._sent[entry.key] = now
            self._sent.move_to_end(entry.key)
            entry.out = False
            if self._entries.get(entry.key) is not entry:
                return
            if entry.version == version and entry.next is not None:  # what waited behind it
                entry.item, entry.next = entry.next, None
                entry.version += 1
            elif entry.version == version:
                del self._entries[entry.key]
                return
            if self._entries.get(entry.key) is entry:  # replaced while out: send the newer later
                entry.due = now + self.group_interval_s
                entry.queued_at = now
                self._push(entry)
                self._cond.notify_all()

    def release(self, entry: Entry[T]) -> None:
        """``entry`` could not be delivered now: it stays, due again at once."""
        with self._cond:
            entry.out = False
            if self._entries.get(entry.key) is entry:
                entry.due = min(entry.due, self._now())
                self._push(entry)
                self._cond.notify_all()

    def discard(self, entry: Entry[T]) -> None:
        """Remove ``entry`` (delivery given up)."""
        with self._cond:
            entry.out = False
            if self._entries.get(entry.key) is entry:
                del self._entries[entry.key]

    def expire(self, max_age_s: float) -> list[Entry[T]]:
        """Remove and return the entries not out and queued more than ``max_age_s`` ago."""
        with self._cond:
            limit = self._now() - max_age_s
            old = [e for e in self._entries.values() if not e.out and e.queued_at < limit]
            for e in old:
                del self._entries[e.key]
            return old

    def next_due(self) -> float | None:
        """Monotonic time at which the earliest entry is due (None: nothing waiting)."""
        with self._cond:
            return self._next_due()

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds, or until something is offered or released; at once
        when an entry is due already."""
        with self._cond:
            due = self._next_due()
            if due is None or due > self._now():
                self._cond.wait(timeout)

    def _next_due(self) -> float | None:
        while self._heap:
            due, seq, key = self._heap[0]
            e = self._entries.get(key)
            if e is not None and not e.out and e.pushed == seq:
                return due
            heapq.heappop(self._heap)
        return None

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _push(self, e: Entry[T]) -> None:
        self._seq += 1
        e.pushed = self._seq
        heapq.heappush(self._heap, (e.due, e.pushed, e.key))
        if len(self._heap) > 4 * len(self._entries) + 64:  # mostly stale: rebuild
            self._heap = [(x.due, x.pushed, x.key) for x in self._entries.values() if not x.out]
            heapq.heapify(self._heap)

    def _forget_sent(self, now: float) -> None:
        """Deliveries older than a group interval no longer delay anything."""
        limit = now - self.group_interval_s
        while self._sent:
            key, at = next(iter(self._sent.items()))
            if at > limit:
                break
            del self._sent[key]
