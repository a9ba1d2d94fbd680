"""What the benchmark commands (``benchmarks/commands``) run: worlds, tasks, optimizers, measurements and reports.
Nothing here imports a command."""
