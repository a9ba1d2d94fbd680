"""Scripted LMs and simulated worlds for deterministic tests and simulated benchmarks: NOT real language models.

``worlds`` holds the simulated world (a scripted student and teacher that agree on which rules help), ``scripted``
the base every scripted engine builds on, ``faults`` an engine that injects the faults real providers show, and
``checks`` what a test checks of a compile's evidence (``assert_verified``).
"""

from .checks import assert_verified, verification_problems
from .scripted import OutputSpec, Prompt, ScriptedEngine, format_reply, normalized, unit_hash
from .worlds import (
    ALL,
    PLAIN,
    Concept,
    Distractor,
    ScriptedTeacherEngine,
    SimExample,
    SimulatedStudentEngine,
    SimulatedTask,
    SimulatedWorld,
    default_concepts,
    default_distractors,
    predictor_for,
    student_values,
)

__all__ = ["ALL", "PLAIN", "Concept", "Distractor", "OutputSpec", "Prompt", "ScriptedEngine", "ScriptedTeacherEngine",
           "SimExample", "SimulatedStudentEngine", "SimulatedTask", "SimulatedWorld", "assert_verified",
           "default_concepts", "default_distractors", "format_reply", "normalized", "predictor_for",
           "student_values", "unit_hash", "verification_problems"]
