"""The Open Inference Protocol (KServe v2, with Triton's extensions) without a wire format.

Both doors that speak it, HTTP ``/v2`` (``service.http.v2``) and gRPC
(``service.grpc``), read their wire format into ``messages`` and call ``dataplane``:
``tensors`` maps the protocol's stable tensor names onto a model's manifest and
``sequences`` keeps the sequence extension's state through the session manager.
"""
