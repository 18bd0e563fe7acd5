"""The kit every Keel service shares: configuration, the gRPC server bootstrap,
tenant authentication, database setup, the event bus and the ``keel`` command.

Services import the kit; the kit never imports a service, except the ``keel``
command (``keel_app.cli``), which is where the processes are wired together.
"""
