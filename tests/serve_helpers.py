"""Drive the real serve worker over its pipes, and build LoRA adapter folders like the trainer saves them."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from protocol.job_folder import ADAPTER_RECORD, AdapterRecord, TrainedSpec, write_file
from protocol.job_spec import DatasetSpec
from protocol.serve import Failed, Finished, Generate, Loading, ServeEvent, Stats, Token, encode
from protocol.serve import decode_event as decode_serve_event
from tests.worker_helpers import worker_env

SYSTEM_LINE_TEMPLATE = (  # the tiny model's ChatML template with a system turn in front
    "{{ bos_token }}{{ '<|im_start|>system\nAnswer in one word.<|im_end|>\n' }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# 10^10 loop steps: hours of CPU in Jinja, yet each step is legal in its sandbox. It writes the messages
# first, so it looks like a chat template until it is rendered.
BOMB_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['content'] }}{% endfor %}"
    "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}"
)


# Token-for-token equality holds in float32 on the CPU; bf16 kernels on a GPU differ in the last bits and a
# near tie can flip a greedy token there, so on a GPU the decoders are compared by their logits instead.
cpu_exact = pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="exact equality is checked in float32 on the CPU"
)


def build_adapter(base_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter whose B matrices are random (not zero), so it changes the model's answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"
    )
    get_peft_model(model, config).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)  # with its chat template, as train.py
    spec = TrainedSpec(base_model=str(base_dir), dataset=DatasetSpec(source="random"))
    record = AdapterRecord(
        spec, data_format="messages", prompt_style="chat", chat_template_source="base model"
    )
    write_file(out / ADAPTER_RECORD, record)
    return out


def build_foreign_adapter(out: Path) -> Path:
    """An adapter of a narrower model (hidden 32, not 64) that names no base model: peft must refuse it."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny_model import build_tokenizer

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    lora = LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(LlamaForCausalLM(config), lora).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def with_template(adapter: Path, out: Path, template: str) -> Path:
    """The same adapter weights, saved with another chat template."""
    from transformers import AutoTokenizer

    shutil.copytree(adapter, out)
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(out)
    return out


@dataclass
class Outcome:
    """Everything the worker said about one request id."""

    events: list[ServeEvent]

    @property
    def finished(self) -> dict[str, Finished]:
        return {event.variant: event for event in self.events if isinstance(event, Finished)}

    @property
    def failed(self) -> Failed | None:
        return next((event for event in self.events if isinstance(event, Failed)), None)

    @property
    def loading(self) -> list[Loading]:
        return [event for event in self.events if isinstance(event, Loading)]

    def streamed(self, variant: str) -> str:
        return "".join(e.text for e in self.events if isinstance(e, Token) and e.variant == variant)

    def text(self, variant: str = "adapter") -> str:
        assert self.failed is None, self.failed
        return self.finished[variant].text


class ServeWorker:
    """`python -m trainer.serving.worker` as a subprocess; a thread collects every event line it writes."""

    def __init__(self, log_path: Path, *flags: str) -> None:
        self.log_path = log_path
        env = worker_env() | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "trainer.serving.worker", *flags],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_path.open("wb"),
            env=env,
        )
        self.events: list[ServeEvent] = []
        self._changed = threading.Condition()
        self._eof = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            event = decode_serve_event(line)  # any non-protocol line on stdout fails here
            with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def send(self, *messages: object) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("".join(encode(m) + "\n" for m in messages).encode())  # type: ignore[arg-type]
        self.process.stdin.flush()

    def send_raw(self, line: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line)
        self.process.stdin.flush()

    def wait_for(self, condition: Callable[[list[ServeEvent]], bool], timeout: float = 90) -> None:
        with self._changed:
            met = self._changed.wait_for(lambda: condition(self.events) or self._eof, timeout)
            if not (met and condition(self.events)):
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise AssertionError(f"worker events so far: {self.events[-10:]}\nworker log tail:\n{tail}")

    def outcome(self, request_id: str) -> Outcome:
        with self._changed:
            return Outcome([e for e in self.events if getattr(e, "id", None) == request_id])

    def ask(self, *requests: Generate, timeout: float = 90) -> dict[str, Outcome]:
        """Send the requests at once, wait until each has ended, return what was said about each."""
        self.send(*requests)
        for request in requests:
            self.wait_for(lambda events, r=request: _ended(events, r), timeout)
        return {request.id: self.outcome(request.id) for request in requests}

    def stats(self) -> list[Stats]:
        with self._changed:
            return [event for event in self.events if isinstance(event, Stats)]

    def end_input(self) -> None:
        """Close stdin: EOF asks the worker to stop."""
        if self.process.stdin and not self.process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):  # the worker may be gone already
                self.process.stdin.close()

    def close(self, timeout: float = 60) -> int:
        """End the input and return the worker's exit status."""
        self.end_input()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def _ended(events: list[ServeEvent], request: Generate) -> bool:
    mine = [e for e in events if getattr(e, "id", None) == request.id]
    if any(isinstance(e, Failed) for e in mine):
        return True
    return sum(isinstance(e, Finished) for e in mine) == (2 if request.compare else 1)


def stop_all(workers: Iterable[ServeWorker]) -> None:
    workers = list(workers)
    for worker in workers:
        worker.end_input()  # all at once: each takes seconds to exit (the torch stack's teardown)
    for worker in workers:
        worker.close()


def first_token(request_id: str) -> Callable[[list[ServeEvent]], bool]:
    return lambda events: any(isinstance(e, Token) and e.id == request_id for e in events)


def ended(request: Generate) -> Callable[[list[ServeEvent]], bool]:
    return lambda events: _ended(events, request)
