"""The simulated exchange: a seeded, pure order-flow model, its protobuf encoding, and the gRPC server.

May import the core (`marketdata.book`, `.instruments`, `.errors`, `.settings`, `.v1`); no other role.
`model` and `wire` are pure; only `server` touches gRPC and the event loop.
"""
