"""A PostgreSQL node's ear: one connection of its own that LISTENs on the schema's channel.

A notification's payload is ``kind:sender``: ``w`` (work was handed over) wakes
``wait_for_work``; ``k`` (an operator's command) is handed to ``on_control``, on the loop;
``s`` (a node's own sync) settles a ``changed`` call; any kind from another node marks that
others wrote. A lost connection is made again with a growing pause; after such a gap everyone
waiting is woken, since anything may have been written while nobody listened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from qtasks_cli.errors import StoreError
from qtasks_cli.store.postgres_conn import scrub
from qtasks_cli.store.postgres_schema import CONTROL_KIND

log = logging.getLogger(__name__)

SYNC_TIMEOUT = 5.0  # seconds changed() waits for its own notification to come back
LISTEN_RETRY = (0.5, 30.0)  # first and longest pause before reconnecting the listener


class Listener:
    """The listening task of one node (``node_id``) and what it tells the store."""

    def __init__(
        self,
        *,
        connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]],
        channel: str,
        node_id: str,
        location: str,
        url: str,
        on_control: Callable[[], None],
    ) -> None:
        self._connect = connect
        self._channel = channel
        self._node_id = node_id
        self._location = location
        self._url = url
        self._on_control = on_control
        self._task: asyncio.Task[None] | None = None
        self.listening = False
        self._work = asyncio.Event()
        self._others_wrote = False
        self._syncs: dict[str, asyncio.Future[None]] = {}

    async def start(self) -> None:
        """Start the listening task and wait until it listens or failed once."""
        if self._task is not None:
            return
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._listen(ready), name="qtasks-pg-listen")
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._task.done():
            self._task.result()  # raises what ended it

    async def stop(self) -> None:
        """Stop listening (the task is cancelled and awaited)."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def cancel_syncs(self) -> None:
        """Cancel the ``changed`` calls still waiting for their notification."""
        for future in self._syncs.values():
            future.cancel()

    async def _listen(self, ready: asyncio.Event) -> None:
        pause, longest = LISTEN_RETRY
        while True:
            try:
                conn = await self._connect()
                try:
                    await conn.execute(f'LISTEN "{self._channel}"')
                    self.listening = True
                    ready.set()
                    pause = LISTEN_RETRY[0]
                    async for note in conn.notifies():
                        self._on_notify(note.payload)
                finally:
                    self.listening = False
                    with contextlib.suppress(Exception):
                        await conn.close()
            except (psycopg.Error, StoreError) as exc:
                log.warning(
                    "%s: not listening for notifications (%s); retrying in %.1fs",
                    self._location,
                    scrub(str(exc), self._url),
                    pause,
                )
            # Anything could have been written while nobody listened.
            self._wake_everyone()
            ready.set()
            await asyncio.sleep(pause)
            pause = min(pause * 2, longest)

    def _on_notify(self, payload: str) -> None:
        kind, _, sender = payload.partition(":")
        if kind == "s":
            future = self._syncs.pop(sender, None)
            if future is not None and not future.done():
                future.set_result(None)
            return
        if sender != self._node_id:
            self._others_wrote = True
        if kind == "w":
            self._work.set()
        elif kind == CONTROL_KIND:
            self._on_control()

    def _wake_everyone(self) -> None:
        self._others_wrote = True
        self._work.set()
        self._on_control()  # a command may have been announced while nobody listened
        for future in self._syncs.values():
            if not future.done():
                future.set_result(None)
        self._syncs.clear()

    async def wait_for_work(self, timeout: float) -> bool:
        """Return True as soon as a request is handed over (or the listener reconnected),
        False after ``timeout`` seconds; starts listening on first use."""
        if self._task is None:
            await self.start()
            return True  # requests written before we listened are not announced again
        if not self._work.is_set():
            try:
                await asyncio.wait_for(self._work.wait(), timeout)
            except asyncio.TimeoutError:
                return False
        self._work.clear()
        return True

    async def changed(self, send: Callable[[str], Awaitable[None]]) -> bool:
        """True when another node wrote since the last call: ``send`` notifies this node's
        sync payload, and the answer waits for it to come back (notifications arrive in
        commit order, so every earlier write of another node has been seen by then)."""
        if self._task is None:
            await self.start()
            return True
        if not self.listening:
            return True
        token = secrets.token_hex(8)
        arrived: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._syncs[token] = arrived
        try:
            await send(f"s:{token}")
            await asyncio.wait_for(arrived, SYNC_TIMEOUT)
        except asyncio.TimeoutError:
            log.debug("%s: own notification did not come back in %ss", self._location, SYNC_TIMEOUT)
            self._others_wrote = True
        finally:
            self._syncs.pop(token, None)
        others, self._others_wrote = self._others_wrote, False
        return others
