"""A loopback TCP relay that makes a local registry look far away: every byte arrives half a
round trip late in each direction, each connection carries at most ``--mbit`` Mbit/s, and
opening a connection costs one round trip (the TCP handshake; TLS, when the registry speaks
it, pays its own on top through the relay).

    python -m benchmarks.latency --listen PORT --upstream 127.0.0.1:PORT --rtt-ms 40 --mbit 100

Prints ``ready`` once it listens; SIGTERM ends it. Binds 127.0.0.1 only. The relay runs in a
process of its own so that its CPU is not the copier's; on a 2-core machine it still competes
with the registries and the copier, which the report's CPU columns show.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time

READ_BYTES = 64 * 1024
# How far reading may run ahead of the capped "wire": enough to keep it busy, little enough that
# a slow direction pushes back on the sender as a real path does.
READ_AHEAD_SECONDS = 0.05


class Wire:
    """One direction of one connection: bytes leave ``delay`` seconds after the capped link
    has finished carrying them, in order."""

    def __init__(self, delay: float, bytes_per_second: float) -> None:
        self.delay = delay
        self.rate = bytes_per_second
        self.free_at = time.monotonic()

    def send_time(self, size: int) -> float:
        now = time.monotonic()
        self.free_at = max(self.free_at, now) + (size / self.rate if self.rate else 0.0)
        return self.free_at + self.delay


async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wire: Wire) -> None:
    due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            at, chunk = await due.get()
            if not chunk:
                break
            if (wait := at - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            writer.write(chunk)
            await writer.drain()
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()

    sender = asyncio.create_task(deliver())
    try:
        while chunk := await reader.read(READ_BYTES):
            await due.put((wire.send_time(len(chunk)), chunk))
            if (ahead := wire.free_at - time.monotonic()) > READ_AHEAD_SECONDS:
                await asyncio.sleep(ahead - READ_AHEAD_SECONDS)
    except OSError:
        pass
    finally:
        await due.put((0.0, b""))
        with contextlib.suppress(OSError):
            await sender


async def connection(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                     upstream: tuple[str, int], delay: float, rate: float) -> None:
    try:
        up_r, up_w = await asyncio.open_connection(*upstream)
    except OSError:
        client_w.close()
        return
    await asyncio.sleep(2 * delay)
    await asyncio.gather(relay(client_r, up_w, Wire(delay, rate)),
                         relay(up_r, client_w, Wire(delay, rate)), return_exceptions=True)
    for w in (client_w, up_w):
        with contextlib.suppress(OSError):
            w.close()


async def serve(listen: int, upstream: tuple[str, int], rtt_ms: float, mbit: float) -> None:
    delay, rate = rtt_ms / 2000, (mbit * 1e6 / 8 if mbit > 0 else 0.0)
    server = await asyncio.start_server(
        lambda r, w: connection(r, w, upstream, delay, rate), "127.0.0.1", listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--upstream", required=True, help="HOST:PORT on loopback")
    ap.add_argument("--rtt-ms", type=float, default=40.0)
    ap.add_argument("--mbit", type=float, default=100.0, help="per connection; 0: no cap")
    args = ap.parse_args()
    host, port = args.upstream.rsplit(":", 1)
    if not host.startswith("127."):
        ap.error("upstream must be a loopback address")
    asyncio.run(serve(args.listen, (host, int(port)), args.rtt_ms, args.mbit))


if __name__ == "__main__":
    main()
