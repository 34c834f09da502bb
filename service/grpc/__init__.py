"""The Open Inference Protocol's gRPC service (``inference.GRPCInferenceService``, as Triton and KServe
define it): another door into the same model runtimes as HTTP, with the same rules (docs/architecture.md).

``server.py`` runs it (``python -m service.grpc``, started by the launcher), ``servicer.py`` holds the
methods, ``messages.py`` turns protobuf messages into the documents every door shares (``web/exchange.py``)
and back, ``status.py`` maps the typed errors onto gRPC status codes, ``proto/`` holds the vendored proto
files and the stubs generated from them (``scripts/grpc_protos.py``).
"""
