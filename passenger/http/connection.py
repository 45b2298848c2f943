"""The part of Twisted's ``Protocol`` that the relay's connections use, as a plain class.

``FrontProtocol`` and ``UpstreamConnection`` run for every request.  They are
compiled with mypyc when the package is built (setup.py), and a compiled class
cannot extend a Python class such as ``twisted.internet.protocol.Protocol``;
Twisted only needs ``IProtocol``'s methods, which this class provides.
"""

from __future__ import annotations

from typing import Any

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
