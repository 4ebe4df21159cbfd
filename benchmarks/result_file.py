"""The ending every benchmark shares: print its result as JSON and write it to the file asked for.

Benchmarks run as `python benchmarks/NAME.py`, so this folder is on sys.path and `from result_file
import print_and_write` finds this module."""
from __future__ import annotations

import json
from pathlib import Path


def print_and_write(result: dict, path: str | Path | None = None, indent: int = 2) -> None:
    """Print `result` as JSON; also write it to `path` (its folder created) when one is given."""
    text = json.dumps(result, indent=indent)
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")
