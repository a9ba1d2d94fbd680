"""What runs the program variants: the evaluator and its cache, the thread pool, metering and budgets, the usage
ledger, prices and the cost forecast, the metric adapter and progress display."""
