"""The composition root: the ``keel`` command and the wiring of services into processes.

Services import the kit (``service_kit``) and never each other; this package is the one
place that imports several of them."""
