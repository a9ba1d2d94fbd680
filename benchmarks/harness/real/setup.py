"""What ``python -m benchmarks run`` sets up before any optimizer runs: the task's seeded splits, the student and
teacher LMs, and the student's adapter. Shared by the main job and the optimizer comparison."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dspy

TASK_SIZES = {"reviews": (12, 12), "multiarith": (20, 20), "gsm8k": (20, 20), "humaneval": (10, 10),
              "simulated": (20, 20)}


@dataclass
class Setup:
    """A task ready to run: disjoint train / validation / test splits, program factory, metric, LMs."""

    task: str
    description: str
    trainset: list[dspy.Example]
    valset: list[dspy.Example]
    testset: list[dspy.Example]
    program: Callable[[], dspy.Module]
    metric: Callable[..., Any]
    student: dspy.LM
    teacher: dspy.LM
    adapter: dspy.Adapter
    embedded: bool = False
    notes: list[str] = field(default_factory=list)


def is_embedded(spec: str) -> bool:
    return spec == "local" or spec.endswith(".gguf")


def make_lm(spec: str, *, api_base: str | None, max_tokens: int, temperature: float, n_ctx: int,
            name: str | None = None, n_threads: int | None = None) -> dspy.LM:
    """An LM from a flag value: 'local', a .gguf path, or a litellm model string. ``name`` renames an embedded
    model (so a teacher that is the same file as the student keeps its own model string and token counts);
    ``n_threads`` is an embedded model's CPU threads (llama.cpp's default when None)."""
    if is_embedded(spec):
        from dspy_concept_distill.lms import local_lm

        threads = {} if n_threads is None else {"n_threads": n_threads}
        return local_lm(None if spec == "local" else spec, model_name=name, max_tokens=max_tokens,
                        temperature=temperature, n_ctx=n_ctx, **threads)
    kwargs: dict = {"max_tokens": max_tokens, "temperature": temperature}
    if api_base:
        kwargs.update(api_base=api_base, api_key=os.environ.get("CD_API_KEY", "none"))
    return dspy.LM(spec, **kwargs)


def sizes(args: argparse.Namespace) -> tuple[int, int, int]:
    n_train, n_val = TASK_SIZES[args.task]
    n_train = n_train if args.n_train is None else args.n_train
    n_val = n_val if args.n_val is None else args.n_val
    return n_train, n_val, args.n_test or 0


def build(args: argparse.Namespace) -> Setup:
    """The task and LMs the flags ask for (the simulated world when ``--task simulated``)."""
    n_train, n_val, n_test = sizes(args)
    if args.task == "simulated":
        return _simulated(n_train, n_val, n_test, args.seed)
    from .tasks import load_task

    task = load_task(args.task, n_train=n_train, n_val=n_val, n_test=n_test, seed=args.seed,
                     data_dir=args.data_dir, hub=args.hub, allow_weak_sandbox=args.allow_weak_sandbox)
    student = make_lm(args.student, api_base=args.student_api_base, max_tokens=args.student_max_tokens,
                      temperature=0.0, n_ctx=args.n_ctx, n_threads=args.model_threads)
    same = args.teacher == args.student and args.teacher_api_base == args.student_api_base
    teacher_name = "smollm2-135m-as-teacher" if same and args.teacher == "local" else None
    if same and is_embedded(args.teacher) and args.teacher != "local":
        teacher_name = f"{os.path.basename(args.teacher).rsplit('.', 1)[0].lower()}-as-teacher"
    teacher = make_lm(args.teacher, api_base=args.teacher_api_base, max_tokens=args.teacher_max_tokens,
                      temperature=0.0, n_ctx=args.n_ctx, name=teacher_name, n_threads=args.model_threads)
    embedded = is_embedded(args.student)
    use_json = (args.adapter or ("json" if embedded else "chat")) == "json"
    return Setup(args.task, task.description, task.trainset, task.valset, task.testset, task.program, task.metric,
                 student, teacher, dspy.JSONAdapter() if use_json else dspy.ChatAdapter(), embedded)


def _simulated(n_train: int, n_val: int, n_test: int, seed: int) -> Setup:
    from dspy_concept_distill.testing import SimulatedTask

    sim = SimulatedTask.create(n_train, n_val, seed=seed)
    testset = sim.world.split(n_test, 0)[0] if n_test else []  # fresh examples: disjoint from train and val

    def program() -> dspy.Module:
        return dspy.ChainOfThought("question -> answer: float")

    return Setup("simulated", "simulated world (scripted student and teacher; no real model)", sim.trainset,
                 sim.valset, testset, program, sim.world.metric, sim.world.student_lm(), sim.world.teacher_lm(),
                 dspy.ChatAdapter(), notes=["scripted student and teacher (not real models)"])
