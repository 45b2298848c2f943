"""The part of Twisted's ``Protocol`` that the relay's connections use, as a plain class.

``FrontProtocol`` and ``UpstreamConnection`` run for every request.  They are
compiled with mypyc when the package is built (setup.py), and a compiled class
cannot extend a Python class such as ``twisted.internet.protocol.Protocol``;
Twisted only needs ``IProtocol``'s methods, which this class provides.
"""

from __future__ import annotations

from typing import Any

from httptools import HttpRequestParser, HttpResponseParser
from twisted.internet.interfaces import ILoggingContext, IProtocol
from twisted.python.failure import Failure
from zope.interface import classImplements


class ConnectionProtocol:
    """``IProtocol`` as ``Protocol`` implements it: a transport, and callbacks that do nothing."""

    #: The connection's transport, from ``makeConnection`` on.
    transport: Any = None
    connected: int = 0

    def makeConnection(self, transport: Any) -> None:
        self.connected = 1
        self.transport = transport
        self.connectionMade()

    def connectionMade(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        pass

    def logPrefix(self) -> str:
        return self.__class__.__name__


classImplements(ConnectionProtocol, IProtocol, ILoggingContext)


class NoCallbacks:
    """What the parser of a closed connection calls back: nothing.

    A connection's parser holds the connection's bound methods (its callbacks), and
    the connection holds the parser: a cycle that only the garbage collector frees,
    in the pass of whatever generation the connection has reached.  When a
    connection closes, it swaps its parser for one of these, so that reference
    counting frees it at once (a full pass over 10,000 connections took 68 ms)."""


#: The parsers of every closed connection (never fed).
CLOSED_REQUEST_PARSER = HttpRequestParser(NoCallbacks())
CLOSED_RESPONSE_PARSER = HttpResponseParser(NoCallbacks())
