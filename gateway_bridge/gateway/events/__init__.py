"""``keel.events.v1.EventService``: ``servicer`` over ``service`` (webhooks and event
subscriptions) over ``store``; ``webhooks`` holds the rules (filters, destinations,
retry schedule) and ``dispatcher`` delivers, signed and retried."""
