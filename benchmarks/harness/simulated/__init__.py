"""The simulated benchmarks: scripted students, teachers and proposers (NOT real models) and what is measured on
them (the task family, the optimizer comparison, speed, racing ahead, noise)."""
