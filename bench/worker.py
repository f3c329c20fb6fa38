"""Child process of the suite: ``python -m bench.worker NAME SETTINGS_JSON OUT_JSON``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench import run_one
from bench.common import Settings


def main(argv: list[str]) -> None:
    name, settings, out = argv
    result = run_one(name, Settings(**json.loads(settings)))
    Path(out).write_text(json.dumps(result.to_dict(), default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
