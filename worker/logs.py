"""Structured logs: one event per line, key=value on a console or JSON for machines."""

import logging
import sys

import structlog

from worker.settings import FleetSettings

# Their DEBUG is a wire dump (every signed AWS request, every SSH packet): it buries the
# fleet's own debug events and costs more than the steps, so they stop at INFO.
WIRE_LEVEL_LIBRARIES = ("botocore", "boto3", "urllib3", "s3transfer", "httpcore", "paramiko")


def configure_logging(settings: FleetSettings) -> None:
    level = logging.getLevelName(settings.log_level.upper())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if settings.log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    for name in WIRE_LEVEL_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.INFO))
