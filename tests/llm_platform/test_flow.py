"""A stream's gate: a send waits while the client is behind, a stall cuts, the bytes received are counted."""

from __future__ import annotations

import asyncio
import time

from llm_platform import flow
from llm_platform.flow import StreamGate, chunk_framing
from routing import consumers


class Transport:
    """What the gate reads of a Twisted transport: its buffer, and the abort."""

    def __init__(self) -> None:
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


def gate_with(buffered: int) -> tuple[StreamGate, Transport]:
    gate = StreamGate("127.0.0.1:5000")
    transport = Transport()
    transport._tempDataLen = buffered
    gate.transport = transport
    return gate, transport


async def test_a_send_waits_while_the_client_is_behind_and_goes_on_when_it_catches_up():
    gate, transport = gate_with(70_000)
    gate.pauseProducing()
    waiting = asyncio.ensure_future(gate.writable(5))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    gate.resumeProducing()
    await asyncio.wait_for(waiting, 1)
    assert not gate.lost and not transport.aborted


async def test_a_client_that_takes_nothing_for_the_stall_timeout_is_cut():
    gate, transport = gate_with(70_000)
    gate.written = 100_000
    gate.pauseProducing()
    started = time.monotonic()
    await gate.writable(0.2)
    assert 0.2 <= time.monotonic() - started < 1
    assert gate.cut and gate.lost and transport.aborted
    assert gate.delivered() == 30_000  # what was written less what was still buffered at the cut


async def test_a_client_that_leaves_while_behind_ends_the_wait_at_once():
    gate, transport = gate_with(10_000)
    gate.written = 25_000
    gate.pauseProducing()
    waiting = asyncio.ensure_future(gate.writable(5))
    await asyncio.sleep(0.01)
    gate.stopProducing()
    transport._tempDataLen = 0  # the buffer is dropped after the loss: the count was taken before
    await asyncio.wait_for(waiting, 1)
    assert gate.lost and not gate.cut and not transport.aborted
    assert gate.delivered() == 15_000


def test_chunk_framing_is_the_hex_size_and_two_line_ends():
    assert chunk_framing(0) == 0
    assert chunk_framing(15) == len(b"f\r\n\r\n")
    assert chunk_framing(4096) == len(b"1000\r\n\r\n")


def test_the_consumers_read_the_gate_under_the_name_the_server_gives_it():
    assert consumers.STREAM_EXTENSION == flow.STREAM_EXTENSION
