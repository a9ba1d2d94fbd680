"""Bad input fails fast, before any LM call, with a message that names the problem."""

import dspy
import pytest

from dspy_concept_distill import ConceptDistillation


@pytest.fixture
def lms(world):
    student, teacher = world.student_lm(), world.teacher_lm()
    dspy.configure(lm=student)
    yield student, teacher
    assert student.engine.calls == 0 and teacher.engine.calls == 0, "an LM was called before the input was checked"


@pytest.fixture
def data(world):
    return world.split(10, 10)


def compile_with(teacher, metric, program=None, **kwargs):
    program = program or dspy.Predict("question -> answer")
    return ConceptDistillation(metric=metric, teacher_lm=teacher).compile(program, **kwargs)


def test_empty_trainset(lms, world):
    with pytest.raises(ValueError, match="trainset is empty"):
        compile_with(lms[1], world.metric, trainset=[])


def test_no_metric(lms):
    with pytest.raises(ValueError, match="needs a metric"):
        ConceptDistillation(metric=None, teacher_lm=lms[1])


def test_metric_that_cannot_take_an_example_and_prediction(lms):
    with pytest.raises(TypeError, match="must accept"):
        ConceptDistillation(metric=lambda: 1.0, teacher_lm=lms[1])
    with pytest.raises(TypeError, match="callable"):
        ConceptDistillation(metric="accuracy", teacher_lm=lms[1])


def test_no_teacher(lms, world):
    with pytest.raises(ValueError, match="needs a teacher_lm"):
        ConceptDistillation(metric=world.metric, teacher_lm=None)
    with pytest.raises(TypeError, match=r"teacher_lm must be a dspy\.LM"):
        ConceptDistillation(metric=world.metric, teacher_lm="openai/gpt-4o")


def test_program_without_predictors(lms, world, data):
    class Empty(dspy.Module):
        def forward(self, question):
            return dspy.Prediction(answer="x")

    with pytest.raises(ValueError, match="no predictors"):
        compile_with(lms[1], world.metric, Empty(), trainset=data[0], valset=data[1])


def test_examples_without_inputs(lms, world, data):
    train = list(data[0])
    train[3] = dspy.Example(question="Q?", answer=1)
    with pytest.raises(ValueError, match=r"trainset\[3\] has no input fields.*with_inputs"):
        compile_with(lms[1], world.metric, trainset=train, valset=data[1])
    with pytest.raises(TypeError, match=r"valset\[0\] is a dict"):
        compile_with(lms[1], world.metric, trainset=data[0], valset=[{"question": "Q?"}])


def test_valset_too_small_to_measure_a_gain(lms, world, data):
    with pytest.raises(ValueError, match="valset has 3 examples; at least 5"):
        compile_with(lms[1], world.metric, trainset=data[0], valset=data[1][:3])
    with pytest.raises(ValueError, match="too few to hold out a valset"):
        compile_with(lms[1], world.metric, trainset=data[0][:5])


def test_no_student_lm_configured(world, data):
    dspy.configure(lm=None)
    with pytest.raises(ValueError, match="no student LM"):
        compile_with(world.teacher_lm(), world.metric, trainset=data[0], valset=data[1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"auto": "extreme"}, "auto must be one of"),
        ({"rounds": 0}, "rounds must be at least 1"),
        ({"mistakes_per_batch": 2.5}, "mistakes_per_batch must be an integer"),
        ({"min_gain": -0.1}, "min_gain must be a number >= 0"),
        ({"max_student_calls": -1}, "max_student_calls must be at least 0"),
        ({"val_fraction": 1.5}, "val_fraction must be between 0 and 1"),
    ],
)
def test_bad_parameters(lms, world, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConceptDistillation(metric=world.metric, teacher_lm=lms[1], **kwargs)


def test_unknown_compile_arguments(lms, world, data):
    # (other optimizers' compile arguments, such as requires_permission_to_run, are taken: tests/test_swapping_in.py)
    with pytest.raises(TypeError, match=r"compile\(\) got unexpected keyword arguments: 'bogus': not a parameter"):
        compile_with(lms[1], world.metric, trainset=data[0], valset=data[1], bogus=False)


def test_get_params_holds_only_parameters(lms, world):
    params = ConceptDistillation(metric=world.metric, teacher_lm=lms[1], seed=5).get_params()
    assert params["seed"] == 5 and params["auto"] == "light"
    assert not any(isinstance(v, (list, dict)) for v in params.values())
