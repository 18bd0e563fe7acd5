"""The kit every Keel service shares: configuration, the gRPC server bootstrap,
tenant authentication, database setup, the event bus, group commit and the clock.

Services import the kit; the kit imports no service. The ``keel`` command that wires
services into processes is :mod:`keel_app`.
"""
