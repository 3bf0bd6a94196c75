"""What the JSON-writing benches end with: the result, stamped with the date and the command, printed and kept."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def emit(result: dict, out: Path | None) -> None:
    """Print `result` as JSON, with `date` and `command` first, and write it to `out` too when given."""
    text = json.dumps({"date": time.strftime("%Y-%m-%d"), "command": "python " + " ".join(sys.argv), **result},
                      indent=2, default=str)
    print(text)
    if out:
        out.write_text(text + "\n")
