"""The one private name of ``dspy_concept_distill`` the benchmarks use; everything else they import is public
(``dspy_concept_distill``, ``.lms``, ``.testing``).

``booked_phase``: the context variable holding the phase an LM request is booked under, read by the speed
benchmark's latency-simulating engines to log where each request went (diagnostics only). If the library moves it,
change this line.
"""

from __future__ import annotations

from dspy_concept_distill.runtime.metering import _phase as booked_phase

__all__ = ["booked_phase"]
