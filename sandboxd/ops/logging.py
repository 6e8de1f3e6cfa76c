"""Log output: plain lines or JSON objects on stderr; an execution's fields travel with its record."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Final

EXECUTION_FIELDS: Final = "sandboxd_execution"


def configure_logging(level: str, style: str) -> None:
    """Send logs to stderr, as plain lines or JSON objects."""
    handler = logging.StreamHandler()
    text = TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(JsonFormatter() if style == "json" else text)
    logging.basicConfig(level=level, handlers=[handler], force=True)


class TextFormatter(logging.Formatter):
    """Plain lines; an execution's fields follow its message as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        """Format one record."""
        line = super().format(record)
        fields = getattr(record, EXECUTION_FIELDS, None)
        if fields:
            line += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line; an execution's fields are top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        """Format one record."""
        document: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, EXECUTION_FIELDS, {}),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)
