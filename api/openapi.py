"""`python -m api.openapi` writes api/openapi.json, the checked-in OpenAPI document.

The file is written deterministically (sorted keys, fixed indentation), so it changes only
when the API does; tests/test_api_fuzz.py checks that the served document equals it.
"""

import json
import sys
from pathlib import Path
from typing import Any, Final

from api.app import build_app

PATH: Final = Path(__file__).with_name("openapi.json")


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def current() -> str:
    return render(build_app().openapi())


def main(argv: list[str]) -> int:
    """Write the file; with --check, only say whether it is up to date."""
    text = current()
    if "--check" in argv:
        if PATH.read_text() != text:
            print(f"{PATH} is out of date: run python -m api.openapi", file=sys.stderr)
            return 1
        return 0
    PATH.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
