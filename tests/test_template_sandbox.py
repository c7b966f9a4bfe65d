"""trainer/data/template_sandbox.py: chat templates render as transformers renders them, or fail within a
deadline and a memory cap, in a child that is replaced after a kill and never outlives its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.serve_helpers import BOMB_TEMPLATE
from tests.tiny_model import CHAT_TEMPLATE, build_tokenizer
from tests.worker_helpers import worker_env
from trainer.data.template_sandbox import RenderFailed, RenderTimeout, TemplateRenderer

CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture
def renderer():
    renderer = TemplateRenderer(memory_mb=256)
    yield renderer
    renderer.close()


def test_renders_exactly_as_apply_chat_template(renderer, tokenizer):
    chats = [(CHAT, False), (CHAT[:1], True), ([{"role": "system", "content": "be brief"}, *CHAT], True)]
    rendered = renderer.render(CHAT_TEMPLATE, chats, tokenizer.special_tokens_map, timeout_s=30)
    expected = [
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        for messages, generation in chats
    ]
    assert rendered == expected


def test_a_looping_template_is_killed_at_its_deadline_and_the_next_render_works(renderer, tokenizer):
    renderer.render(CHAT_TEMPLATE, [(CHAT, False)], tokenizer.special_tokens_map, timeout_s=30)  # started
    started = time.monotonic()
    with pytest.raises(RenderTimeout, match="took longer than 1 s to render"):
        renderer.render(BOMB_TEMPLATE, [(CHAT, False)], tokenizer.special_tokens_map, timeout_s=1)
    assert 1 <= time.monotonic() - started < 10
    again = renderer.render(CHAT_TEMPLATE, [(CHAT, True)], tokenizer.special_tokens_map, timeout_s=30)
    assert again == [tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)]
    assert renderer.starts == 2  # the looping child was killed and replaced


def test_a_huge_string_fails_on_the_memory_cap_and_the_next_render_works(renderer, tokenizer):
    # 500 MB of "x": past the 256 MiB allowance, so the child's own allocation fails, fast.
    with pytest.raises(RenderFailed, match="needed more than 256 MiB of memory"):
        renderer.render("{{ 'x' * 500000000 }}", [(CHAT, False)], tokenizer.special_tokens_map, timeout_s=30)
    assert renderer.render("{{ 'ok' }}", [(CHAT, False)], {}, timeout_s=30) == ["ok"]


def test_output_beyond_any_prompt_is_refused(tokenizer):
    renderer = TemplateRenderer(max_chars=1000)
    try:
        with pytest.raises(RenderFailed, match="wrote 1,001 characters"):
            renderer.render("{{ 'x' * 1001 }}", [(CHAT, False)], {}, timeout_s=30)
    finally:
        renderer.close()


def test_the_template_own_error_is_reported(renderer):
    with pytest.raises(RenderFailed, match=r"^no system turn$"):  # the author's words, as they are
        renderer.render("{{ raise_exception('no system turn') }}", [(CHAT, False)], {}, timeout_s=30)
    with pytest.raises(RenderFailed, match="UndefinedError: 'nothing' is undefined"):
        renderer.render("{{ nothing.attribute }}", [(CHAT, False)], {}, timeout_s=30)


def test_the_child_gets_no_secrets(renderer, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_for_this_test")
    monkeypatch.setenv("DISCORD_TOKEN", "discord-secret-for-this-test")
    renderer.render("{{ 'ok' }}", [(CHAT, False)], {}, timeout_s=30)
    environ = Path(f"/proc/{renderer._process.pid}/environ").read_bytes()
    assert b"secret-for-this-test" not in environ and b"secret_for_this_test" not in environ


# Loops without writing: a bomb that writes runs into the memory cap in the end, which would end it anyway.
SILENT_LOOP = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
PARENT = """
import sys
from trainer.data.template_sandbox import TemplateRenderer
renderer = TemplateRenderer()
renderer.render("{{ 'ok' }}", [([], False)], {}, timeout_s=60)
print(renderer._process.pid, flush=True)
renderer.render(sys.argv[1], [([], False)], {}, timeout_s=3600)
"""


def test_the_child_dies_with_its_parent_even_mid_render():
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, SILENT_LOOP], stdout=subprocess.PIPE, env=worker_env(), text=True
    )
    child = int(parent.stdout.readline())
    time.sleep(0.5)  # the child is in the loop now
    parent.kill()
    parent.wait()
    try:
        for _ in range(100):
            if not _alive(child):
                break
            time.sleep(0.1)
        assert not _alive(child), "the template child outlived its killed parent"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)  # a failed run must not leave it spinning


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited (init reaps it)


def test_training_fails_a_bomb_in_the_base_model_template_as_a_user_error(tokenizer, monkeypatch):
    """The trainer's tokenization renders through the same child: the job ends with the person's error."""
    import trainer.data.chat_template
    from protocol.errors import UserError
    from trainer.data.formats import ChatExample
    from trainer.data.tokenization import tokenize_examples

    monkeypatch.setattr(trainer.data.chat_template, "RENDER_TIMEOUT_S", 1.0)
    chat = ChatExample(messages=(("user", "Hi"), ("assistant", "Hello.")))
    started = time.monotonic()
    with pytest.raises(UserError) as caught:
        tokenize_examples([chat] * 3, tokenizer, BOMB_TEMPLATE, 512, lambda index: f"line {index + 1}")
    assert caught.value.message == "line 1: the chat template took longer than 1 s to render"
    assert "chat template" in caught.value.hint
    assert time.monotonic() - started < 15  # the first render's deadline, not one per row
