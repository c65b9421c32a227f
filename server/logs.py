"""Server logging: `--log-format text` (the default: `TIME LEVEL LOGGER: message`) or `json` (one JSON object
per line on stderr).

A JSON line always has `time` (UTC, ISO 8601 with milliseconds), `level`, `logger` and `message`; records
logged with `extra=fields(EVENT, ...)` add `"event": EVENT` and those values, e.g. an RPC (server/access.py)

    {"time": "...", "level": "info", "logger": "speechadapt.access", "message": "...", "event": "rpc",
     "method": "/speechadapt.v1.Recognizer/Recognize", "peer": "ipv4:127.0.0.1:50522", "code": "OK",
     "duration_ms": 84.2, "caller": "asr-frontend"}

or a job state transition (server/adaptation.py): `"event": "job", "job_id", "from", "to", "reason"`.
"""

from __future__ import annotations

import datetime
import json
import logging

from speechadapt.server.config import LOG_FORMATS
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def fields(event: str, **values) -> dict:
    """The `extra=` of a log call whose JSON line carries `"event": event` and `values`."""
    return {"speechadapt_fields": {"event": event, **values}}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        t = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        out = {"time": t.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "level": record.levelname.lower(),
               "logger": record.name, "message": record.getMessage()}
        out.update(getattr(record, "speechadapt_fields", None) or {})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


def setup(log_format: str = "text", level: int = logging.INFO) -> None:
    """Log to stderr in `log_format` (unless the root logger has handlers already, as basicConfig)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: use {' or '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    if log_format == "json":
        logging.captureWarnings(True)  # Python warnings become JSON lines too, not raw text on stderr
