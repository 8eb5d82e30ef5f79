"""Single flight: concurrent requests for one key share one run of the work.

The work runs in a task of its own, not in the request that started it, so a
caller that goes away (its client disconnected, its request was cancelled)
only stops waiting: everyone else waiting on the same key still gets the
result. Used for cache loads, API-key lookups and identical cold questions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

MISS: Any = object()  # what a probe returns when it found nothing
_RETRY: Any = object()  # what a probe's waiters get when its caller left


class Flight(Generic[T]):
    __slots__ = ("key", "task", "waiters")

    def __init__(self, key: str, task: asyncio.Task[T]) -> None:
        self.key = key
        self.task = task
        self.waiters = 0


class SingleFlight(Generic[T]):
    """``cancel_abandoned``: cancel the work when its last waiter leaves (an
    LLM generation nobody waits for only costs engine time); otherwise it runs
    to the end (a database load still fills the cache for the next caller)."""

    def __init__(self, *, cancel_abandoned: bool = False) -> None:
        self._flights: dict[str, Flight[T]] = {}
        # Keys whose cheap probe (a cache read) one caller is making now.
        self._probes: dict[str, asyncio.Future[Any]] = {}
        self._cancel_abandoned = cancel_abandoned

    def __len__(self) -> int:
        return len(self._flights)

    def get(self, key: str) -> Flight[T] | None:
        return self._flights.get(key)

    def start_or_join(self, key: str, work: Callable[[], Awaitable[T]]) -> tuple[Flight[T], bool]:
        """The flight for ``key`` and whether this call started it. No await
        happens in between, so exactly one concurrent caller starts it."""
        flight = self._flights.get(key)
        if flight is not None:
            return flight, False
        task: asyncio.Task[T] = asyncio.ensure_future(work())  # type: ignore[assignment]
        flight = Flight(key, task)
        self._flights[key] = flight
        task.add_done_callback(lambda t, f=flight: self._finished(f, t))
        return flight, True

    async def wait(self, flight: Flight[T]) -> T:
        flight.waiters += 1
        try:
            # shield: cancelling this caller must not cancel the shared work.
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and self._cancel_abandoned and not flight.task.done():
                # Forget it first: a caller arriving now starts afresh rather
                # than joining work that is being cancelled.
                self._forget(flight)
                flight.task.cancel()

    async def do(self, key: str, work: Callable[[], Awaitable[T]]) -> T:
        flight, _ = self.start_or_join(key, work)
        return await self.wait(flight)

    async def probe_then_load(
        self, key: str, probe: Callable[[], Awaitable[Any]], load: Callable[[], Awaitable[T]]
    ) -> tuple[Any, bool]:
        """``probe()`` (a cache read) in the caller's own task, then, if it
        returns ``MISS``, ``load()`` as a shared flight. Concurrent callers for
        ``key`` wait for the one probe, then join the one load: a burst on a
        cold key costs one probe and one load, and a hit costs no task.

        Returns the value and whether this caller shared someone else's work.
        """
        while True:
            flight = self._flights.get(key)
            if flight is not None:
                return await self.wait(flight), True
            pending = self._probes.get(key)
            if pending is not None:
                outcome = await asyncio.shield(pending)
                if outcome is _RETRY:  # its caller left before deciding: try again
                    continue
                if isinstance(outcome, Flight):
                    return await self.wait(outcome), True
                return outcome, True
            break
        mine: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._probes[key] = mine
        outcome: Any = _RETRY
        try:
            value = await probe()
            if value is not MISS:
                outcome = value
                return value, False
            flight, _ = self.start_or_join(key, load)
            outcome = flight
        finally:
            if self._probes.get(key) is mine:
                del self._probes[key]
            mine.set_result(outcome)
        return await self.wait(flight), False

    def _forget(self, flight: Flight[T]) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]

    def _finished(self, flight: Flight[T], task: asyncio.Task[T]) -> None:
        self._forget(flight)
        # Mark a failure retrieved: if every waiter left, nobody else will,
        # and asyncio would log "exception was never retrieved".
        if not task.cancelled():
            task.exception()
