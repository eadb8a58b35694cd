"""An attempt's body: call the job's entry point once, inline or in a child process
(``isolation: process``), and drain a generator it hands back (sync or async), each item
through ``generate_handler``; a generator left unfinished is closed off the loop.
"""

from __future__ import annotations

import functools
import logging
import types
from collections.abc import AsyncIterator, Iterator
from typing import Any

from qtasks_cli import release
from qtasks_cli.calling import HandlerFailed, Run, handle_item, kind_of_cached
from qtasks_cli.entrypoints import CallableKind
from qtasks_cli.models import Isolation

# The executor's logger, as before a run's calls moved out of it: its records keep their name
# (the JSON log's "logger").
log = logging.getLogger("qtasks_cli.executor")


async def call_attempt(run: Run) -> Any:
    """Call the job once and return its result; a generator's result is its handled items.

    This is the one step that ``isolation: process`` replaces.
    """
    job = run.job
    if job.isolation is Isolation.PROCESS:
        from qtasks_cli.isolation.call import call_attempt as call_in_child

        await run.through_gate()
        return await call_in_child(run)
    fn = run.resolve(job.entrypoint)
    handler = run.resolve(job.generate_handler) if job.generate_handler else None
    kind = kind_of_cached(fn)
    if kind is CallableKind.GENERATOR:
        await run.through_gate()
        return await _drain(run, fn(*run.args, **run.kwargs), handler)
    if kind is CallableKind.ASYNC_GENERATOR:
        await run.through_gate()
        return await _drain_async(run, fn(*run.args, **run.kwargs), handler)
    value = await run.call(fn, *run.args, **run.kwargs)  # passes the gate, if any
    # A plain function (a partial, a factory) may hand back a generator: iterate it too.
    # (Exact types: neither can be subclassed, and isinstance would read __class__.)
    if type(value) is types.GeneratorType:
        return await _drain(run, value, handler)
    if type(value) is types.AsyncGeneratorType:
        return await _drain_async(run, value, handler)
    return value


async def _drain(run: Run, gen: Iterator[Any], handler: Any) -> list[Any]:
    """Iterate a sync generator, each step in a thread since it may block. A generator left
    unfinished (a timeout, a cancel) is closed off the loop: its ``finally`` is the job's code
    and may block, so it runs where its last reference is dropped, in release.py's thread."""
    handled: list[Any] = []
    run.items = 0
    end = object()
    finished = False
    try:
        while True:
            item = await run.in_thread(functools.partial(next, gen, end))
            if item is end:
                finished = True
                return handled
            try:
                handled.append(await handle_item(run, handler, item))
            except HandlerFailed:
                await run.in_thread(functools.partial(_close_quietly, gen))
                raise
            finally:
                del item
    finally:
        if not finished:
            release.adopt(gen)


async def _drain_async(run: Run, agen: AsyncIterator[Any], handler: Any) -> list[Any]:
    handled: list[Any] = []
    run.items = 0
    async for item in agen:
        try:
            handled.append(await handle_item(run, handler, item))
        except HandlerFailed:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.debug("%s: closing the generator failed", run.label, exc_info=True)
            raise
    return handled


def _close_quietly(gen: Iterator[Any]) -> None:
    close = getattr(gen, "close", None)
    if close is None:
        return
    try:
        close()
    except BaseException:  # runs in a thread; the handler's failure is the one to report
        log.debug("closing the generator failed", exc_info=True)
