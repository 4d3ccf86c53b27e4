"""The benchmark's latency relay really adds the round trip and caps the bandwidth it claims:
remote-looking figures in docs/performance.md rest on it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from tests.support.registry import free_port

ROOT = Path(__file__).resolve().parents[2]
RTT_MS = 120
MBIT = 8  # 1 MB/s: 256 KiB take ~0.26 s more than the round trip


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _measure(port: int) -> tuple[float, float, float]:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"x")
    await writer.drain()
    await reader.readexactly(1)
    first = time.monotonic() - started  # connect (one round trip) + one exchange
    t0 = time.monotonic()
    writer.write(b"y")
    await writer.drain()
    await reader.readexactly(1)
    small = time.monotonic() - t0
    body = b"z" * (256 * 1024)
    t0 = time.monotonic()
    writer.write(body)
    await writer.drain()
    await reader.readexactly(len(body))
    bulk = time.monotonic() - t0
    writer.close()
    return first, small, bulk


def test_relay_adds_the_round_trip_and_caps_the_rate() -> None:
    async def scenario() -> tuple[float, float, float]:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        upstream = server.sockets[0].getsockname()[1]
        port = free_port()
        relay = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.latency", "--listen", str(port), "--upstream",
             f"127.0.0.1:{upstream}", "--rtt-ms", str(RTT_MS), "--mbit", str(MBIT)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            assert relay.stdout is not None
            line = await asyncio.to_thread(relay.stdout.readline)
            assert line.strip() == "ready"
            return await _measure(port)
        finally:
            relay.terminate()
            relay.wait(10)
            server.close()

    first, small, bulk = asyncio.run(scenario())
    rtt = RTT_MS / 1000
    assert 2 * rtt * 0.9 <= first < 2 * rtt + 1.0
    assert rtt * 0.9 <= small < rtt + 0.5
    # 256 KiB each way over a 1 MB/s link: at least the serialisation time plus the round trip.
    assert bulk >= rtt + 256 * 1024 / (MBIT * 1e6 / 8) * 0.9
