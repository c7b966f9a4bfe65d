"""Render chat templates in a child process with a deadline per render and a memory cap.

A chat template is code from whoever published the tokenizer or the adapter. Jinja's sandbox keeps it away
from the system, not from looping for hours or building a 10 GB string. A separate process is chosen over a
counting sandbox because killing it stops everything, work inside C included (one huge string
multiplication, a regex), which a loop counter never sees; and a signal cannot interrupt a thread other
than the main one. `python -m trainer.data.template_sandbox` is the child; TemplateRenderer its parent side.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from trainer.worker_io import reserve_stdout

Chat = tuple[Sequence[Mapping[str, str]], bool]  # (messages, add_generation_prompt)

MEMORY_MB = 1024  # the child's allowance on top of what it needs to start
# No model reads a prompt this long; a template that writes more is a bomb, not a format.
MAX_RENDERED_CHARS = 16 << 20
START_TIMEOUT_S = 120.0  # importing transformers' template code on a loaded machine; not a render's time
# The child needs these to start Python and import transformers; nothing else, above all no token.
_PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONHOME", "VIRTUAL_ENV")


class RenderTimeout(Exception):
    """A render took longer than its deadline; the child was killed."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"took longer than {seconds:g} s to render")
        self.seconds = seconds


class RenderFailed(Exception):
    """The template raised, wrote too much, needed too much memory, or the child died."""


class TemplateRenderer:
    """The parent side: one child at a time, started on the first render and after any kill. Thread-safe."""

    def __init__(self, *, memory_mb: int = MEMORY_MB, max_chars: int = MAX_RENDERED_CHARS) -> None:
        self.memory_mb = memory_mb
        self.max_chars = max_chars
        self.starts = 0  # children started: a kill shows as one more
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._owner = 0  # the pid that started it: a forked copy of this object must not share its pipes
        self._pending = bytearray()

    def render(
        self, template: str, chats: Sequence[Chat], variables: Mapping[str, Any], timeout_s: float
    ) -> list[str]:
        """Each chat rendered with `template` (and `variables`, the tokenizer's special tokens), as
        transformers' apply_chat_template(tokenize=False) would; each render gets `timeout_s` seconds."""
        if not chats:
            return []
        request = {
            "template": template,
            "variables": dict(variables),
            "chats": [[list(m), g] for m, g in chats],
        }
        with self._lock:
            process = self._running()
            try:
                assert process.stdin is not None
                process.stdin.write(json.dumps(request).encode() + b"\n")
                process.stdin.flush()
            except OSError:
                self._stop()
                raise RenderFailed("the template renderer stopped before it read the template") from None
            texts = []
            for _ in chats:
                reply = self._reply(process, timeout_s)
                if reply.get("exit"):
                    self._stop()  # it is exiting: the next render starts another
                if "error" in reply:
                    raise RenderFailed(reply["error"])
                texts.append(reply["text"])
            return texts

    def close(self) -> None:
        with self._lock:
            self._stop(graceful=True)

    def _running(self) -> subprocess.Popen:
        process = self._process
        if process is not None and process.poll() is None and self._owner == os.getpid():
            return process
        if self._owner == os.getpid():
            self._stop()
        self._process, self._owner, self._pending = None, os.getpid(), bytearray()
        source_root = str(Path(__file__).resolve().parents[2])  # the same code as the parent runs
        env = {name: os.environ[name] for name in _PASSED_ENV if name in os.environ}
        env |= {"PYTHONPATH": os.pathsep.join(filter(None, [source_root, os.environ.get("PYTHONPATH")]))}
        env |= {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "trainer.data.template_sandbox", "--memory-mb", str(self.memory_mb)]
        command += ["--max-chars", str(self.max_chars)]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._process = process
        self.starts += 1
        try:
            self._reply(process, START_TIMEOUT_S)  # {"ready": true}
        except RenderTimeout:
            raise RenderFailed(f"the template renderer did not start within {START_TIMEOUT_S:g} s") from None
        return process

    def _reply(self, process: subprocess.Popen, timeout_s: float) -> dict[str, Any]:
        """The child's next line; past the deadline the child is killed and RenderTimeout raised."""
        assert process.stdout is not None
        fd = process.stdout.fileno()
        readable = select.poll()  # not select.select: it fails on descriptors above 1023
        readable.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout_s
        while (end := self._pending.find(b"\n")) < 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not readable.poll(max(1, int(remaining * 1000))):
                self._stop()
                raise RenderTimeout(timeout_s)
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                code = process.wait()
                self._stop()
                raise RenderFailed(f"the template renderer stopped (exit code {code})")
            self._pending += chunk
        line = bytes(self._pending[:end])
        del self._pending[: end + 1]
        return json.loads(line)

    def _stop(self, graceful: bool = False) -> None:
        process, self._process = self._process, None
        self._pending = bytearray()
        if process is None or self._owner != os.getpid():
            return
        if graceful and process.stdin is not None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                process.stdin.close()  # EOF: the child exits on its own
                process.wait(2)
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None and not stream.closed:
                with contextlib.suppress(OSError):
                    stream.close()


# --- the child


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.data.template_sandbox", description=__doc__)
    parser.add_argument("--memory-mb", type=int, default=MEMORY_MB)
    parser.add_argument("--max-chars", type=int, default=MAX_RENDERED_CHARS)
    args = parser.parse_args(argv)
    replies = os.fdopen(reserve_stdout(), "wb")  # prints (transformers' warnings) go to the parent's log
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    from transformers.utils.chat_template_utils import render_jinja_template

    _limit_memory(args.memory_mb)
    _send(replies, {"ready": True})
    for line in sys.stdin.buffer:
        request = json.loads(line)
        for messages, add_generation_prompt in request["chats"]:
            reply = _render_one(render_jinja_template, request, messages, add_generation_prompt, args)
            _send(replies, reply)
            if reply.get("exit"):
                return 1
            if "error" in reply:
                break  # the parent stops reading this request at its first error
    return 0


def _render_one(render: Any, request: dict, messages: list, add_generation_prompt: bool, args: Any) -> dict:
    try:
        rendered, _ = render(
            conversations=[messages],
            chat_template=request["template"],
            add_generation_prompt=add_generation_prompt,
            **request["variables"],
        )
    except MemoryError:
        # Freed or not, this process has hit the bottom of its memory: it reports, exits and is replaced.
        return {"error": f"it needed more than {args.memory_mb} MiB of memory", "exit": True}
    except RecursionError:
        return {"error": "it recursed too deeply"}
    except Exception as error:  # the template's own errors (raise_exception, syntax, types)
        # raise_exception's words are the template author's message to the person: shown as they are.
        from jinja2.exceptions import TemplateError

        text = str(error) if type(error) is TemplateError else f"{type(error).__name__}: {error}"
        return {"error": text[:500]}
    text = rendered[0]
    if len(text) > args.max_chars:
        return {"error": f"it wrote {len(text):,} characters (at most {args.max_chars:,})"}
    return {"text": text}


def _send(replies: BinaryIO, reply: dict[str, Any]) -> None:
    replies.write(json.dumps(reply).encode() + b"\n")
    replies.flush()


def _limit_memory(memory_mb: int) -> None:
    """Address space: what the child holds now plus `memory_mb`; a bigger string raises MemoryError."""
    try:
        import resource

        status = Path("/proc/self/status").read_text()
        size_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmSize:"))
    except (ImportError, OSError, StopIteration):  # not Linux: the deadline still holds
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size_kb * 1024 + (memory_mb << 20)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _exit_with_parent(parent: int) -> None:
    # A killed parent must not leave a child spinning in a template loop: a loop in Python bytecode lets
    # this thread run between its steps.
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
