"""Formats of the values apps write into a node row. The same patterns are CHECK
constraints in migrations/sql; tests/test_schema.py checks that they match.

A release's version and artifact URL also reach the host agent, so their grammar has one
home that every reader takes as it is: models/grammar/*.ere, each one regular expression
in the subset that Python's `re`, Postgres's `~` and bash's `[[ =~ ]]` read alike (no
escapes but `\\.`, no shorthand classes, no lookaround, bounds of at most 255).
tests/test_grammar.py feeds one corpus to each reader and requires the same verdicts."""

import re
from pathlib import Path
from typing import Final, Literal

Network = Literal["regtest", "testnet", "testnet4", "signet", "mainnet"]

NAME: Final = r"^[a-z][a-z0-9-]{0,61}[a-z0-9]$"
OWNER: Final = r"^[!-~]{1,200}$"
REGION: Final = r"^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$"
INSTANCE_TYPE: Final = r"^[a-z][a-z0-9-]*\.[a-z0-9]+$"
GRAMMAR: Final = Path(__file__).resolve().parent / "grammar"


def _grammar(name: str) -> str:
    return (GRAMMAR / f"{name}.ere").read_text().rstrip("\n")


# Semantic versioning's core (no leading zeros) and pre-release (dot-separated, none
# empty), without build metadata; an optional leading v as release tags have.
VERSION: Final = _grammar("version")
# https://, http:// (the SHA-256 pins the artifact) or s3://, a conservative character set
# (no whitespace, controls, quotes, query, fragment or credentials), bounded length.
ARTIFACT_URL: Final = _grammar("artifact_url")

# The longest value of each app-written column: CHECK constraints in
# migrations/sql/0006_apilimits.sql (name and owner: their patterns), the API's schemas and
# tests/test_api_limits.py say the same. AWS's longest region name has 14 characters and
# its longest instance type 19.
MAX_LENGTH: Final[dict[str, int]] = {"name": 63, "owner": 200, "region": 32, "instance_type": 32}

RULES: Final[dict[str, tuple[str, str]]] = {
    "name": (NAME, "2-63 characters: lowercase letters, digits and '-', starting with a letter"),
    "owner": (OWNER, "1-200 printable characters without spaces"),
    "region": (REGION, "an AWS region such as eu-west-1"),
    "instance_type": (INSTANCE_TYPE, "an EC2 instance type such as t3.small"),
    "version": (
        VERSION,
        "a release version such as 0.9.1 or v0.9.1-rc.1 (semantic versioning, no build part)",
    ),
    "artifact_url": (
        ARTIFACT_URL,
        "https://, http:// or s3:// and a path of letters, digits and ._~%+=,-",
    ),
}


def problem(field: str, value: str) -> str | None:
    """A one-line description of what is wrong with value, or None when it is well formed."""
    pattern, rule = RULES[field]
    longest = MAX_LENGTH.get(field)
    if longest is not None and len(value) > longest:
        # Not the value itself: it may be megabytes.
        return f"bad {field.replace('_', ' ')}: {len(value)} characters, at most {longest}"
    if re.fullmatch(pattern, value):
        return None
    label = "artifact URL" if field == "artifact_url" else field.replace("_", " ")
    return f"bad {label} {value!r}: {rule}"
