"""``python -m bench [--quick] [--only NAME ...] [--out FILE] [--device cpu|cuda]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import BENCHMARKS, OPTIONAL, RESULTS, run_suite
from bench.common import Settings


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small settings (a few minutes)")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these ({', '.join(BENCHMARKS)}; "
        f"{', '.join(sorted(OPTIONAL))} only when named); repeatable or comma-separated",
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="results file to append to")
    p.add_argument("--no-write", action="store_true", help="print only, append nothing")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", default="", help="free text stored with the run (e.g. machine load)")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run every benchmark in this process (peak memory is then cumulative)",
    )
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    only = [n.strip() for item in a.only for n in item.split(",") if n.strip()]
    unknown = [n for n in only if n not in BENCHMARKS]
    if unknown:
        print(
            f"error: unknown benchmark(s) {', '.join(unknown)} "
            f"(choose from {', '.join(BENCHMARKS)})",
            file=sys.stderr,
        )
        return 2
    settings = Settings(quick=a.quick, device=a.device, tiny=a.tiny, seed=a.seed)
    run_suite(settings, only or None, None if a.no_write else a.out, not a.in_process, a.note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
