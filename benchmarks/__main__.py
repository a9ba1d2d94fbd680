"""``python -m benchmarks <command> [options]``: see ``benchmarks/cli.py``."""

from .cli import main

raise SystemExit(main())
