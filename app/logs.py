"""Logging for the app and the workers: one line per event, JSON when TRAINBOARD_LOG_FORMAT=json.

Pass context as `extra={"job_id": 7}`; it shows as job_id=7 in text and as a field in JSON.
"""

import json
import logging
import os
import re
from datetime import datetime, timezone

CONTEXT_FIELDS = ("job_id", "attempt", "worker_id", "slot")
# Query parameters whose values the access log leaves out: a token someone put in a URL.
SECRET_PARAMETER = re.compile(r"([?&][^=&#]*(?:token|key|secret|password|auth)[^=&#]*=)[^&#]*", re.IGNORECASE)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        event.update({name: getattr(record, name) for name in CONTEXT_FIELDS if hasattr(record, name)})
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS if hasattr(record, name))
        if not context:
            return line
        first, newline, rest = line.partition("\n")
        return f"{first} [{context}]{newline}{rest}"


class RedactQuerySecrets(logging.Filter):
    """Uvicorn's access log without the values of token-like query parameters."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Uvicorn's access record: (client, method, path with query, HTTP version, status).
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, version, status = record.args
            record.args = (client, method, SECRET_PARAMETER.sub(r"\1[redacted]", str(path)), version, status)
        return True


def configure_logging() -> None:
    handler = logging.StreamHandler()
    json_format = os.environ.get("TRAINBOARD_LOG_FORMAT", "text").lower() == "json"
    handler.setFormatter(JsonFormatter() if json_format else TextFormatter())
    handler.addFilter(RedactQuerySecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("TRAINBOARD_LOG_LEVEL", "INFO").upper())
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Uvicorn's loggers go through the same handler, so its lines share the format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True

