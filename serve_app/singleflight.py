"""Single flight: concurrent requests for one key share one run of the work.

The work runs in a task of its own, not in the request that started it, so a
caller that goes away (its client disconnected, its request was cancelled)
only stops waiting: everyone else waiting on the same key still gets the
result. Used for cache loads, API-key lookups and identical cold questions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


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

    def _forget(self, flight: Flight[T]) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]

    def _finished(self, flight: Flight[T], task: asyncio.Task[T]) -> None:
        self._forget(flight)
        # Mark a failure retrieved: if every waiter left, nobody else will,
        # and asyncio would log "exception was never retrieved".
        if not task.cancelled():
            task.exception()
