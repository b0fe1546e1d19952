#!/usr/bin/env python3
"""A server with a known latency distribution, for `bench/run.py --self-check`.

    python3 bench/known_server.py --port P --classes 0.8:0,0.2:250

Answers every request `200 ok` over HTTP/1.1 keep-alive, after a delay drawn per request from the
classes (share:milliseconds), and counts its own answers by class: that count is the truth the
load generators' measurements are checked against. `GET /counts` answers the counts so far as JSON
({"classes": {"0": n, "250": n}, "cut_off": n}) and is not counted itself. An answer whose client
has already closed the connection when its delay is over (a load generator stopping with calls in
flight) is counted as `cut_off`, not in its class: the client never read it.

asyncio, one thread, standard library only. The delays are sleeps, not work, so the server is not
the bottleneck at the few thousand requests a second of the self-check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


def parse_classes(text: str) -> list[tuple[float, int]]:
    """"0.8:0,0.2:250" -> [(0.8, 0), (0.2, 250)]; the shares must add up to 1."""
    classes = [(float(share), int(ms)) for share, ms in
               (item.split(":") for item in text.split(","))]
    if abs(sum(share for share, _ms in classes) - 1) > 1e-9:
        raise SystemExit(f"known_server: the shares of {text!r} do not add up to 1")
    return classes


class KnownServer:
    def __init__(self, classes: list[tuple[float, int]], seed: int | None):
        self.delays = [ms for _share, ms in classes]
        self.weights = [share for share, _ms in classes]
        self.counts = {str(ms): 0 for ms in self.delays}
        self.cut_off = 0
        self.random = random.Random(seed)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # headers: a GET has no body
                if request_line.split(b" ")[1:2] == [b"/counts"]:
                    body = json.dumps({"classes": self.counts, "cut_off": self.cut_off}).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(body), body))
                    await writer.drain()
                    continue
                delay_ms = self.random.choices(self.delays, self.weights)[0]
                if delay_ms:
                    await asyncio.sleep(delay_ms / 1000)
                if reader.at_eof():
                    self.cut_off += 1
                    return
                self.counts[str(delay_ms)] += 1
                writer.write(RESPONSE)
                await writer.drain()
        except (ConnectionError, IndexError):
            pass
        finally:
            writer.close()


async def serve(port: int, server: KnownServer) -> None:
    listener = await asyncio.start_server(server.handle, "127.0.0.1", port, backlog=4096)
    async with listener:
        await listener.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--classes", type=parse_classes, required=True,
                        help="share:milliseconds,... e.g. 0.8:0,0.2:250")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args()
    asyncio.run(serve(args.port, KnownServer(args.classes, args.seed)))


if __name__ == "__main__":
    main()
