"""The terminal client: subscribes to the simulator over gRPC and prints verified books as ladders or JSON.

May import the core (book, feed, instruments, errors, settings, v1); no other role.
`ladder` is pure rendering; `terminal` is the shell around gRPC and the screen.
"""
