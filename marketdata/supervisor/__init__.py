"""The supervisor behind `marketdata up`: the embedded Redis, free ports, and the child processes of every role.

May import the core (errors, settings); it starts the other roles as processes, never imports them.
"""
