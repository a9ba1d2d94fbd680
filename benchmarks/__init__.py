"""The benchmarks of dspy_concept_distill, one command line: ``python -m benchmarks <command>`` from the repository
root (``python -m benchmarks --help`` lists the commands; benchmarks/README.md has what they measured).

- ``benchmarks/commands/``: one thin module per command (its options and what it runs);
- ``benchmarks/harness/``: what the commands run: simulated worlds and the task family, real tasks and models, the
  optimizer registry, call metering, the HumanEval sandbox, reports. Commands import the harness, never the reverse;
- ``benchmarks/data/``: the data sets shipped with the project; ``benchmarks/results/``: committed results, and
  ``benchmarks/results/local/`` (untracked) where every command writes by default.
"""
