"""Group concurrent calls from one replica into fewer calls to another deployment (group commit).

A call between deployments costs milliseconds of CPU on both sides, often more than the work it
carries (a small map's share of a PINN batch, one SQLite row). `GroupedCalls` sends each item through
one of at most `in_flight` calls under way: a lone item is sent at once (no timer, no added latency),
and items that arrive while every call is busy wait and leave together, at most `max_group` per call,
in the next call that frees up. Under load the groups grow by themselves. Each caller gets its own
item's result, or the exception its group's call raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupedCalls(Generic[Item, Result]):
    """`await calls.submit(item)`: `send(group)` -> one result per item, in order, for groups of items."""

    def __init__(self, send: Callable[[list[Item]], Awaitable[list[Result]]], max_group: int, in_flight: int) -> None:
        self.send, self.max_group, self.in_flight = send, max_group, in_flight
        self._pending: list[tuple[Item, asyncio.Future]] = []
        self._senders: set[asyncio.Task] = set()

    async def submit(self, item: Item) -> Result:
        """The result of `item`, sent in a group with its neighbours; raises what the group's call raised."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if len(self._senders) < self.in_flight:
            self._senders.add(asyncio.create_task(self._drain()))
        return await future

    async def _drain(self) -> None:
        """Send waiting items until none wait; leaves the sender set in the same step as the last check."""
        try:
            while self._pending:
                group, self._pending = self._pending[: self.max_group], self._pending[self.max_group:]
                try:
                    results = await self.send([item for item, _ in group])
                except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
                    for _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for (_, future), result in zip(group, results, strict=True):
                        if not future.done():  # a caller whose client went away has cancelled its future
                            future.set_result(result)
        finally:
            self._senders.discard(asyncio.current_task())
