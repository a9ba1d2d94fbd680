"""The commands of ``python -m benchmarks``: one module per command, each with ``add_arguments(parser)`` and
``run(args) -> int`` (and ``check(args)`` where options depend on each other); ``benchmarks/cli.py`` lists them.
Commands import ``benchmarks.harness``; nothing in the harness imports a command."""
