"""The three phases of Concept Distillation and the statistics that decide: ``mistakes`` (phase 1), ``induction`` and
``proposals`` (phase 2, with ``rule_checks`` and ``dedupe``), ``verification``, ``racing`` and ``statistics`` (phase
3), and the optional ``ablation``."""
