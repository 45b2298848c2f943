"""ResponseBuffer: what a slow client cannot take yet is held, in order, and the app is paused only at the watermark."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.testing import StringTransport

from passenger.http.response_buffer import MEMORY_THRESHOLD, ResponseBuffer


class SlowClient(StringTransport):
    """A client transport that, like Twisted's, pauses its streaming producer past ``limit`` unsent bytes."""

    def __init__(self, limit: int = 65536) -> None:
        super().__init__()
        self.limit = limit
        self.unsent = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        self.unsent += len(data)
        if self.producer is not None and self.unsent > self.limit and self.producerState != "paused":
            self.producerState = "paused"
            self.producer.pauseProducing()

    def writeSequence(self, data: object) -> None:
        for piece in data:  # type: ignore[attr-defined]
            self.write(piece)

    def send(self) -> None:
        """The kernel took everything: the producer may go on."""
        self.unsent = 0
        if self.producer is not None and self.producerState == "paused":
            self.producerState = "producing"
            self.producer.resumeProducing()


class AppConnection:
    """The app side: counts pauses and resumes."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False


def pieces(count: int, size: int = 16384) -> list[bytes]:
    return [b"%015x\n" % i * (size // 16) for i in range(count)]


def make(tmp_path: Path, high_watermark: int = 1 << 30, limit: int = 65536,
         directory: Path | None = None) -> tuple[ResponseBuffer, SlowClient, AppConnection, list[bool]]:
    client = SlowClient(limit)
    stalls: list[bool] = []
    relay = ResponseBuffer(client, str(directory or tmp_path), high_watermark, stalls.append)
    app = AppConnection()
    relay.start(app, direct=False)
    return relay, client, app, stalls


def test_a_client_that_keeps_up_gets_the_bytes_directly(tmp_path: Path) -> None:
    relay, client, app, stalls = make(tmp_path)
    relay.write([b"HTTP/1.1 200 OK\r\n\r\n", b"body"])
    assert client.value() == b"HTTP/1.1 200 OK\r\n\r\nbody"
    assert relay.held == 0 and stalls == [] and not app.paused


def test_a_stalled_client_holds_bytes_in_memory_then_on_disk_and_gets_them_in_order(tmp_path: Path) -> None:
    relay, client, app, stalls = make(tmp_path)
    sent = pieces(64)  # 1 MiB; the client stalls past 64 KiB
    for piece in sent:
        relay.write([piece])
    assert stalls == [True] and not app.paused, "the app goes on: the relay holds"
    assert relay.memory_size <= MEMORY_THRESHOLD, "memory is bounded"
    assert relay.file is not None and os.fstat(relay.file.fileno()).st_size > 0
    assert not list(tmp_path.iterdir()), "the spill file has no name"
    drained: list[bool] = []
    relay.upstream_done(lambda: drained.append(True))
    assert not drained, "the client has not read it all yet"
    while not drained:
        client.send()
    assert client.value() == b"".join(sent)
    assert relay.file is None and relay.held == 0
    assert client.producer is None, "the relay left the transport"


def test_the_app_is_paused_at_the_high_watermark_and_resumed_when_the_client_catches_up(tmp_path: Path) -> None:
    relay, client, app, _ = make(tmp_path, high_watermark=512 * 1024)
    sent = pieces(64)
    for piece in sent:
        relay.write([piece])  # the app's transport may deliver a little more after a pause
    assert app.paused and app.pauses == 1
    assert relay.held >= 512 * 1024
    while relay.held:
        client.send()
    assert not app.paused, "nothing held: the app connection reads again"
    assert client.value() == b"".join(sent)


def test_without_a_usable_disk_the_relay_falls_back_to_back_pressure_and_loses_nothing(tmp_path: Path) -> None:
    relay, client, app, _ = make(tmp_path, directory=tmp_path / "gone")
    sent = pieces(32)
    for piece in sent:
        relay.write([piece])
    assert app.paused, "past the memory part, with no file, the app is paused"
    assert relay.file is None
    while relay.held:
        client.send()
    assert not app.paused
    assert client.value() == b"".join(sent)


def test_a_disk_that_fills_up_keeps_what_came_after_in_memory_in_order(tmp_path: Path) -> None:
    relay, client, app, _ = make(tmp_path)
    sent = pieces(24)
    for piece in sent[:16]:
        relay.write([piece])
    assert relay.file is not None and not app.paused
    real_file = relay.file
    relay.file = full = open("/dev/full", "wb", buffering=0)  # every write fails with ENOSPC
    relay.write([sent[16]])
    relay.file = real_file
    full.close()
    for piece in sent[17:]:
        relay.write([piece])
    assert app.paused and list(relay.tail) == sent[16:]
    while relay.held:
        client.send()
    assert client.value() == b"".join(sent)
    assert not app.paused


def test_a_complete_response_with_nothing_held_finishes_at_once(tmp_path: Path) -> None:
    relay, client, _, _ = make(tmp_path)
    relay.write([b"small"])
    drained: list[bool] = []
    relay.upstream_done(lambda: drained.append(True))
    assert drained == [True] and client.producer is None


def test_a_client_that_goes_away_drops_what_is_held(tmp_path: Path) -> None:
    relay, _, _, _ = make(tmp_path)
    for piece in pieces(32):
        relay.write([piece])
    file = relay.file
    assert file is not None
    drained: list[bool] = []
    relay.upstream_done(lambda: drained.append(True))
    relay.stopProducing()
    assert relay.held == 0 and file.closed and not drained


def test_a_tunnel_is_never_held(tmp_path: Path) -> None:
    client = SlowClient()
    relay = ResponseBuffer(client, str(tmp_path), 1 << 30, lambda stalled: None)
    app = AppConnection()
    relay.start(app, direct=True)
    relay.pauseProducing()
    assert app.paused, "a tunnel's client pauses the app connection itself"
    relay.resumeProducing()
    assert not app.paused


def test_the_send_deadline_follows_the_client(tmp_path: Path) -> None:
    relay, client, _, stalls = make(tmp_path)
    for piece in pieces(8):
        relay.write([piece])
    client.send()
    assert stalls[:2] == [True, False], "stalled, then reading again"
