#!/usr/bin/env python3
"""Answers `Upgrade: echo` with 101 and then echoes every byte; other requests get 426.

Both answers carry X-Pid: the pid of the process that answered.
"""
import asyncio
import os


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    if b"upgrade: echo" not in head.lower():
        writer.write(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\nConnection: close\r\n"
                     b"X-Pid: %d\r\n\r\n" % os.getpid())
        await writer.drain()
        writer.close()
        return
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n"
                 b"X-Pid: %d\r\n\r\nwelcome\n" % os.getpid())
    await writer.drain()
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def main() -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", int(os.environ["PORT"]))
    async with server:
        await server.serve_forever()


asyncio.run(main())
