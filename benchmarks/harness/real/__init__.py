"""Benchmarks on real tasks and real models: the tasks and their data, the run's set-up (student, teacher,
adapter), the main job, the optimizer comparison on held-out test data, parse failures and server throughput."""
