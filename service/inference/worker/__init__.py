"""onnxruntime in model worker processes, outside the server's process and its GIL.

``protocol``: the messages and their frames; ``child``: the worker process's main loop;
``pool``: the server's side, ``ProcessExecutor`` (a ``batcher.Executor``).
"""
