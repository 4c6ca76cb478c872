"""Cancellation that a library swallowed still ends the task.

Some client libraries catch the ``CancelledError`` thrown into a read and raise their own
error instead (a read timeout that fires as the task is cancelled becomes redis-py's
``TimeoutError``). A loop that retries on errors would then retry forever, and the event
loop's shutdown (which cancels every task and waits for them) would hang. The task still
counts the cancellation it was asked for (``Task.cancelling()``), so a retrying loop asks
``cancel_requested`` before it retries.
"""

from __future__ import annotations

import asyncio


def cancel_requested() -> bool:
    """Whether the running task has been asked to cancel and has not been un-cancelled."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def raise_if_cancel_requested(exc: BaseException) -> None:
    """In an ``except`` of a retrying loop: end the task if the error hides a cancellation."""
    if cancel_requested():
        raise asyncio.CancelledError from exc
