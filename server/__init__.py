"""Mapstream server: HTTP API, WebSocket hub, event store and CLI. The one home of I/O."""
