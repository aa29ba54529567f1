"""The ingestor: rebuilds verified books from the simulator's stream and publishes them to Redis.

May import the core (book, feed, schema, instruments, errors, settings, backoff, v1); no other role.
`publish_queue` (what to write) and `lease` (who may write: the lease and its fence) are pure;
`ingestor` is the shell that talks gRPC and Redis, `metrics` its Prometheus endpoint.
"""
