"""The FastAPI bridge: Redis pub/sub in, WebSocket clients out; stateless, start as many as you like.

It may import the core of `marketdata` (schema, instruments, errors, settings, logs,
backoff, clock), never another role (`marketdata.sim`, `.ingest`, `.client`,
`.loadtest`, `.supervisor`): Redis is its only link to the ingestor.

Rooms: `app` (routes, server), `handshake` (the request-head deadline), `endpoints`,
`control`, `origins`, `limits` (the WebSockets);
`hub`, `topic`, `fanout`, `verify` (sockets, channels, the hot path); `bus`, `subscriptions`,
`feed_state`, `instrument_list` (Redis); `latest_slot`, `frames`, `transport` (a
socket's way out); `metrics`, `tasks`. docs/architecture.md has the whole layout.
"""
