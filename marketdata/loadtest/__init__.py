"""The load generator: many WebSocket clients against a bridge, with latency statistics and a report.

May import the core (errors, settings); never the bridge or another role. `latency` and
`measurement` (the plan, the workers' reports, their totals) are pure; `generator` runs in
worker processes, `runner` plans and gathers them, `report` prints the result.
"""
