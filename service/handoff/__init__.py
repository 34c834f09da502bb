"""The hand-off between the HTTP (and gRPC) workers and the model runtimes.

``protocol.py`` is both ends: the shared-memory arenas, the state page and the messages. The rest runs in
the workers: ``grouping.py`` (an event loop's side: every request of a loop turn in one message),
``client.py`` (a request thread's side, for the Flask routes and gunicorn), ``catalog.py`` (what the
runtimes serve, as the workers see it) and ``versions.py`` (models by name and version). The runtime's
own side is ``service/runtime/``.
"""
