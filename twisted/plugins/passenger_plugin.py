"""The ``twistd passenger`` / ``twist passenger`` plugin: a lazy ServiceMaker.

Imports nothing but ServiceMaker and the Reactor description, so plugin
discovery never installs a reactor.
"""
from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

passenger = ServiceMaker(
    "passenger",
    "passenger.tap",
    "Run any web app behind a least-busy pool of its processes (Passenger GLS style).",
    "passenger",
)

passenger_epoll = Reactor(
    "passenger-epoll",
    "passenger.reactor",
    "epoll without a legacy log context per event (the default of twistd passenger on Linux)",
)
