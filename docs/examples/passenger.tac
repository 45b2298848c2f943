"""passenger as one service among others in a twistd application.

    twistd -ny docs/examples/passenger.tac

serves examples/hello (two processes) on http://127.0.0.1:8080/.  Environment:
PORT (8080), INTERFACE (127.0.0.1), APP_ROOT and APP_COMMAND (the app to run:
examples/hello, 'python3 app.py'), APP_INSTANCES (2).

TERM or INT stops it gracefully: in-flight requests finish, then every app
process is stopped, then twistd exits 0.  See docs/embedding.md.
"""

import os

from twisted.application import service

from passenger.embed import PassengerService, load_config

HERE = os.path.dirname(os.path.abspath(__file__))  # twistd -y sets __file__

config = load_config(
    root=os.environ.get("APP_ROOT", os.path.join(HERE, "..", "..", "examples", "hello")),
    start_command=os.environ.get("APP_COMMAND", "python3 app.py"),
    min_instances=int(os.environ.get("APP_INSTANCES", "2")),
    listen=[f"tcp:{os.environ.get('PORT', '8080')}:interface={os.environ.get('INTERFACE', '127.0.0.1')}"],
)

application = service.Application("passenger-example")
services = service.MultiService()  # your own services go here too
services.setServiceParent(application)
PassengerService(config).setServiceParent(services)
