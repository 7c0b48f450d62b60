"""The Open Inference Protocol (KServe v2) adapter, with Triton's sequence and binary extensions.

``codec`` reads and writes the wire format (JSON tensors, binary tensor data, compressed
bodies), ``tensors`` maps the protocol's stable tensor names onto a model's manifest,
``sequences`` keeps sequence-extension state through the session manager, ``errors``
turns core errors into ``{"error": ...}`` with Triton's status codes and ``routes`` is
the thin HTTP layer over all of them.
"""
