"""The gateway (channels, messages, the event log, webhooks) and the WebSocket bridge."""
