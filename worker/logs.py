"""Structured logs: one event per line, key=value on a console or JSON for machines.

The fleet's own events and every library's (uvicorn, httpx, botocore, paramiko, rq) go
through one handler on the root logger and one structlog formatter: with JSON logging,
each line on stderr is a JSON object with the same fields (timestamp, level, logger,
event), whoever logged it."""

import logging
import sys

import structlog

from worker.settings import FleetSettings

# Their DEBUG is a wire dump (every signed AWS request, every SSH packet): it buries the
# fleet's own debug events and costs more than the steps, so they stop at INFO.
WIRE_LEVEL_LIBRARIES = ("botocore", "boto3", "urllib3", "s3transfer", "httpcore", "paramiko")

# What every line carries, added the same way to the fleet's events and to the libraries'.
SHARED_FIELDS: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def renderers(log_format: str) -> list[structlog.types.Processor]:
    if log_format == "json":
        # A traceback becomes one string field: the line stays one JSON object.
        return [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    return [structlog.dev.ConsoleRenderer(colors=False)]


def configure_logging(settings: FleetSettings) -> None:
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    structlog.configure(
        processors=[*SHARED_FIELDS, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=SHARED_FIELDS,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *renderers(settings.log_format),
            ],
        )
    )
    root = logging.getLogger()
    # Ours is the only handler: a library that finds one here adds none of its own (rq).
    root.handlers = [handler]
    root.setLevel(level)
    for name in WIRE_LEVEL_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.INFO))
