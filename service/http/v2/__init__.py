"""The Open Inference Protocol (KServe v2) over HTTP, with Triton's sequence and binary extensions.

``codec`` reads and writes the HTTP wire format (JSON tensors, binary tensor data,
compressed bodies), ``errors`` turns core errors into ``{"error": ...}`` with Triton's
status codes and ``routes`` is the thin HTTP layer. What the requests do (tensor names
over a manifest, sequences, inference) is shared with the gRPC door in ``service.oip``.
"""
