"""`python -m orderwatch` and the `orderwatch` command."""

from __future__ import annotations

import sys


def main() -> int:
    if sys.argv[1:2] == ["run"]:  # before the imports: see orderwatch.ops.early_signals
        from orderwatch.ops.early_signals import hold_early

        hold_early()
    from orderwatch.cli.main import main as cli_main

    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
