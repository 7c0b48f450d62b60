"""The Open Inference Protocol's gRPC service (Triton's ``inference.GRPCInferenceService``).

One more door over the same core and gate: ``servicer`` reads the protobuf messages
(``convert``), asks the gate (``service.http.gate``) and calls the shared
``service.oip.dataplane.DataPlane``; ``status`` maps the service's errors to gRPC status
codes in one table; ``health`` answers ``grpc.health.v1`` as ``/readyz`` does; ``server``
runs the ``grpc.aio`` server beside the HTTP server and drains it with it.
"""

import os

# The server starts its model worker processes with fork and exec; they need none of
# gRPC's fork handlers, which would otherwise log a line to stderr at each start.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
