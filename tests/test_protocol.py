"""protocol/ job_spec and events: every event and the spec survive a round trip; the unknown is refused."""

from __future__ import annotations

import json
import math

import pytest

from protocol.errors import ProtocolError
from protocol.events import (
    EVENT_TYPES,
    PROTOCOL_VERSION,
    Checkpoint,
    Done,
    Error,
    Eval,
    Phase,
    Progress,
    Started,
    decode_event,
    encode_event,
)
from protocol.job_spec import DatasetSpec, JobSpec, LoraSpec, TrainingSpec, spec_problems

EVENTS = [
    Started(pid=1234, attempt_resumes_from="/jobs/1/checkpoints/checkpoint-50"),
    Phase(name="validating", message="data.jsonl: format messages; 10 examples"),
    Progress(
        step=3,
        total_steps=10,
        epoch=0.3,
        tokens_seen=4096,
        tokens_per_s=812.5,
        eta_s=12.0,
        loss=1.25,
        lr=2e-4,
        grad_norm=0.7,
        gpu_mem_gib=5.5,
    ),
    Eval(step=10, eval_loss=1.1),
    Checkpoint(step=10, path="/jobs/1/checkpoints/checkpoint-10"),
    Done(adapter_dir="/jobs/1/adapter", metrics={"final_loss": 0.9, "tokens": 40960}),
    Error(kind="oom", message="the GPU ran out of memory", hint="lower max_length", checkpoint=None),
]


def test_every_event_type_is_covered():
    assert {type(event) for event in EVENTS} == set(EVENT_TYPES.values())


@pytest.mark.parametrize("event", EVENTS, ids=lambda event: type(event).__name__)
def test_round_trip(event):
    line = encode_event(event)
    assert "\n" not in line
    body = json.loads(line)
    assert body["v"] == PROTOCOL_VERSION
    assert EVENT_TYPES[body["type"]] is type(event)
    assert decode_event(line) == event
    assert decode_event(line.encode()) == event


def test_non_finite_numbers_travel_as_null():
    line = encode_event(
        Progress(step=1, total_steps=2, epoch=0.5, tokens_seen=1, tokens_per_s=1.0, loss=math.nan)
    )
    assert decode_event(line).loss is None


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"v": 2, "type": "phase", "name": "training"}', "unsupported protocol version 2"),
        ('{"type": "phase", "name": "training"}', "unsupported protocol version None"),
        ('{"v": 1, "type": "telemetry"}', "unknown event type 'telemetry'"),
        ('{"v": 1, "type": "phase", "name": "dancing"}', "invalid phase event: name: must be one of"),
        ('{"v": 1, "type": "phase", "name": "training", "colour": "red"}', "colour: unknown key"),
        (
            '{"v": 1, "type": "eval", "step": "ten", "eval_loss": 1.0}',
            "step: expected an integer, got a string",
        ),
        ('{"v": 1, "type": "checkpoint", "step": 3}', "path: required key is missing"),
        ('{"v": 1, "type": "error", "kind": "bad", "message": "x"}', "kind: must be one of"),
        ("[1, 2]", "must be a JSON object"),
        ("loading weights 50%", "not a JSON event line"),
    ],
)
def test_decoder_refuses(line, problem):
    with pytest.raises(ProtocolError, match=None) as caught:
        decode_event(line)
    assert problem in str(caught.value)


def test_spec_round_trip_and_strictness():
    spec = JobSpec(
        base_model="meta-llama/Llama-2-7b-hf",
        dataset=DatasetSpec(source="mlabonne/guanaco-llama2-1k", format="text"),
        lora=LoraSpec(r=8, target_modules=("q_proj", "v_proj")),
        training=TrainingSpec(max_steps=100, eval_fraction=0.1),
        resume_from="/data/jobs/1/checkpoints/checkpoint-50",
    )
    assert JobSpec.from_json(spec.to_json()) == spec
    assert spec.lora.resolved_alpha == 16
    data = json.loads(spec.to_json())
    data["training"]["learning_rte"] = 1e-4
    with pytest.raises(ProtocolError, match=r"training\.learning_rte: unknown key"):
        JobSpec.from_json(json.dumps(data))
    with pytest.raises(ProtocolError, match="not valid JSON"):
        JobSpec.from_json("{")


def test_spec_problems_name_the_field():
    spec = JobSpec(
        base_model="m",
        dataset=DatasetSpec(source="d"),
        lora=LoraSpec(r=0, dropout=1.5),
        training=TrainingSpec(
            learning_rate=0,
            eval_fraction=0.9,
            scheduler="zigzag",
            gradient_checkpointing="sometimes",
            memory_limit_gib=0,
        ),
    )
    problems = spec_problems(spec)
    for field in (
        "lora.r",
        "lora.dropout",
        "training.learning_rate",
        "training.eval_fraction",
        "training.scheduler",
        "training.gradient_checkpointing",
        "training.memory_limit_gib",
    ):
        assert any(problem.startswith(field + ":") for problem in problems), field
    good = JobSpec(base_model="m", dataset=DatasetSpec(source="d"))
    assert spec_problems(good) == []


def test_gradient_checkpointing_is_true_false_or_auto_in_json():
    base = json.loads(JobSpec(base_model="m", dataset=DatasetSpec(source="d")).to_json())
    assert base["training"]["gradient_checkpointing"] == "auto"
    for value in (True, False, "auto"):
        base["training"]["gradient_checkpointing"] = value
        assert JobSpec.from_json(json.dumps(base)).training.gradient_checkpointing == value
    base["training"]["gradient_checkpointing"] = 1
    with pytest.raises(ProtocolError, match=r"gradient_checkpointing: expected true or false or a string"):
        JobSpec.from_json(json.dumps(base))
