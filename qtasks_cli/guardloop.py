"""The guard on the daemon's event loop: its ``add_signal_handler``/``remove_signal_handler`` for
the owned signals, its table of signal callbacks, its task factory and its exception handler are
kept from job code while ``sigguard.guarded(loop=...)`` is active."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtasks_cli.guardstate import Guard, refuse, signal_name


def guard_loop(loop: Any) -> Callable[[], None]:
    """Refuse ``loop.add_signal_handler``/``remove_signal_handler`` for the owned signals (they
    would replace or drop the daemon's callback without touching ``signal.signal``)."""
    add, remove = loop.add_signal_handler, loop.remove_signal_handler

    def add_signal_handler(sig: int, callback: Callable[..., Any], *args: Any) -> None:
        if Guard.active and sig in Guard.owned:
            refuse(f"loop.add_signal_handler({signal_name(sig)}, ...)")
            return
        add(sig, callback, *args)

    def remove_signal_handler(sig: int) -> bool:
        if Guard.active and sig in Guard.owned:
            refuse(f"loop.remove_signal_handler({signal_name(sig)})")
            return False
        result: bool = remove(sig)
        return result

    def set_task_factory(factory: Any) -> None:
        # Every task the daemon makes would go through a job's factory (one that raises:
        # no task is ever made again), and other jobs' tasks in the same burst too.
        if Guard.active:
            refuse("loop.set_task_factory(...)")
            return
        type(loop).set_task_factory(loop, factory)

    def set_exception_handler(handler: Any) -> None:
        # asyncio's default handler formats a job's exception on the loop (looperrors.py).
        if Guard.active:
            refuse("loop.set_exception_handler(...)")
            return
        type(loop).set_exception_handler(loop, handler)

    loop.add_signal_handler = add_signal_handler
    loop.remove_signal_handler = remove_signal_handler
    loop.set_task_factory = set_task_factory
    loop.set_exception_handler = set_exception_handler
    # The class's methods (called as ``Loop.add_signal_handler(loop, ...)``) write the table
    # straight away: guard the table itself.
    plain = getattr(loop, "_signal_handlers", None)
    if type(plain) is dict:
        table = _OwnedTable(plain)
        loop._signal_handlers = table
        Guard.loop_table = table
        Guard.loop_handles = {s: plain[s] for s in Guard.owned if s in plain}

    def undo() -> None:
        del loop.add_signal_handler, loop.remove_signal_handler
        del loop.set_task_factory, loop.set_exception_handler
        table = Guard.loop_table
        if plain is not None and table is not None and loop._signal_handlers is table:
            plain.clear()
            plain.update(table)
            loop._signal_handlers = plain
        Guard.loop_table = None
        Guard.loop_handles = {}

    return undo


class _OwnedTable(dict):  # type: ignore[type-arg]
    """The loop's signal -> callback table, refusing changes to the owned signals' entries."""

    def __setitem__(self, sig: Any, handle: Any) -> None:
        if Guard.active and sig in Guard.owned:
            refuse(f"loop.add_signal_handler({signal_name(sig)}, ...) (through the loop's class)")
            return
        super().__setitem__(sig, handle)

    def __delitem__(self, sig: Any) -> None:
        if Guard.active and sig in Guard.owned:
            refuse(f"loop.remove_signal_handler({signal_name(sig)}) (through the loop's class)")
            raise KeyError(sig)
        super().__delitem__(sig)

    def pop(self, sig: Any, *default: Any) -> Any:
        if Guard.active and sig in Guard.owned:
            refuse(f"removing the loop's handler of {signal_name(sig)}")
            return self.get(sig, *default)
        return super().pop(sig, *default)
