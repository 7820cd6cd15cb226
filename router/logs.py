"""Where log records go and how they look (`logging:` in router.yaml).

Every record goes to stderr through one handler on the root logger: `text`, a line for people,
or `json`, one JSON object per line for every record (time, level, logger, message, any
fields passed with `extra=`, and the traceback as `exc_info`), for a log pipeline. The access
log (`router.http.access_log`) writes its records to stderr itself, in the same shapes, named
`kvrouter.access`, whatever `--log-level` says.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from router.config import LoggingSettings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_LOGGER = "kvrouter.access"

# The fields of a JSON record besides `time` and the record's `extra` fields, as they are named
# in the output. Stable: log pipelines select on them.
JSON_FIELDS = {"levelname": "level", "name": "logger", "message": "message"}


def utf8_text(value: str) -> str:
    """`value`, with each lone surrogate (a byte that was not UTF-8 where text was expected,
    such as a request header) written out as `\\udcXX`: strict JSON parsers refuse lone
    surrogates, even escaped."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


class _JsonFormatter(JsonFormatter):
    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {k: utf8_text(v) if isinstance(v, str) else v for k, v in log_data.items()}


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of `logging.format`; JSON is ASCII, and any text in it valid UTF-8."""
    if fmt == "json":
        return _JsonFormatter(
            list(JSON_FIELDS),
            rename_fields={k: v for k, v in JSON_FIELDS.items() if k != v},
            timestamp="time",
            json_ensure_ascii=True,
        )
    return logging.Formatter(TEXT_FORMAT)


def configure_logging(settings: LoggingSettings, level: str = "WARNING") -> None:
    """Route every record to stderr in the configured format, at `level`. Replaces the root
    logger's handlers, so calling it again (once the configuration is read) changes the
    format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(settings.format))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
