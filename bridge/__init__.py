"""The FastAPI bridge: Redis pub/sub in, WebSocket clients out.

`bridge.app` holds the routes and the server entry (`create_app`, `run`);
`bridge.hub` owns the Redis subscriptions and the local sockets; `bridge.sockets`
is the per-socket latest-only sender; `bridge.metrics` the Prometheus view of it all.
"""
