"""The ``twistd passenger`` / ``twist passenger`` plugin: a lazy ServiceMaker.

Imports nothing but ServiceMaker, so plugin discovery never installs a reactor.
"""
from twisted.application.service import ServiceMaker

passenger = ServiceMaker(
    "passenger",
    "passenger.tap",
    "Run any web app behind a least-busy pool of its processes (Passenger GLS style).",
    "passenger",
)
