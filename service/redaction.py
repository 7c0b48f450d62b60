"""Secrets never reach a log line: a ``logging.Filter`` that redacts them from every record.

``install`` puts ``RedactSecrets`` on the root logger's handlers, so every record they
write is cleaned, whichever logger made it (the service's own, the HTTP server's, a
library's): API keys in a query string (``?api_key=…``, ``access_token``, ``token``), the
value of ``Authorization`` and ``Bearer`` credentials, and the WebSocket subprotocol
``bearer.<key>``. The message, its arguments, string ``extra`` fields and a formatted
traceback are all cleaned.
"""

from __future__ import annotations

import logging
import re

REDACTED = "[redacted]"

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # query parameters that carry credentials: api_key=…, apikey=…, access_token=…, token=…
    (
        re.compile(r"(?i)\b((?:api[_-]?key|access[_-]?token|token|key)=)[^&\s\"'#;,)]+"),
        r"\1" + REDACTED,
    ),
    # Authorization: <scheme> <credentials>, or the bare value
    (re.compile(r"(?i)\b(authorization[\"']?\s*[:=]\s*[\"']?)[^\"'\r\n,}]+"), r"\1" + REDACTED),
    (re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+"), r"\1" + REDACTED),
    # the WebSocket subprotocol that carries a key: bearer.<key>
    (re.compile(r"(?i)\b(bearer\.)[^\s\"',;\]]+"), r"\1" + REDACTED),
]

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


def redact(text: str) -> str:
    """``text`` with every credential the patterns know replaced by ``[redacted]``."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_if_needed(text: str) -> str:
    """``redact(text)``, with one quick scan first: text that none of the patterns can match
    (the common request path or request id) comes back as it is."""
    if "=" not in text and ":" not in text and "bearer" not in text.lower():
        return text  # every pattern needs "=", ":" or the word "bearer"
    return redact(text)


class RedactSecrets(logging.Filter):
    """Cleans each record in place; never drops one."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg = cleaned
            record.args = None
        for name, value in list(record.__dict__.items()):
            if name not in _STANDARD and isinstance(value, str):
                setattr(record, name, redact(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Add ``RedactSecrets`` to each handler of ``logger`` (the root logger by default)."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())
