"""A stand-in for `python -m trainer.serving.worker` speaking the real serve protocol, for fast Discord tests.

The answer is derived from the prompt: "long:N" answers N characters in chunks of 40, "env:" says whether
it holds HF_TOKEN, its HF_HUB_OFFLINE and its working directory, "hang" sends one Token and then nothing
ever again (a worker stuck in a kernel or a loop: it reads no more requests either), anything else
answers "echo: <prompt>" one word at a time. Each chunk is a Token event, 20 ms apart. "idle-once" and
"exit-once" play a shared worker that stopped as idle just as the ask came, once per working directory:
the first answers Failed(STOPPED_IDLE) and exits, the second exits without a word (exit code 0).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from protocol.serve import (
    STOPPED_IDLE,
    Failed,
    Finished,
    Generate,
    Ready,
    Shutdown,
    Token,
    decode_request,
    encode,
)


def emit(event) -> None:
    sys.stdout.write(encode(event) + "\n")
    sys.stdout.flush()


def chunks(prompt: str) -> list[str]:
    if prompt == "env:":  # what this worker was given: the sandbox tests ask
        token = "yes" if os.environ.get("HF_TOKEN") else "no"
        return [f"token={token} offline={os.environ.get('HF_HUB_OFFLINE', '')} cwd={os.getcwd()}"]
    if prompt.startswith("long:"):
        text = ("All work and no play makes a long answer. " * 1000)[: int(prompt.removeprefix("long:"))]
        return [text[i : i + 40] for i in range(0, len(text), 40)]
    return [f"{word} " for word in f"echo: {prompt}".split()]


def main() -> int:
    emit(Ready(pid=os.getpid()))
    for line in sys.stdin:
        request = decode_request(line)
        if isinstance(request, Shutdown):
            return 0
        if not isinstance(request, Generate):
            continue
        prompt = request.prompt or request.messages[-1]["content"]
        if prompt in ("idle-once", "exit-once") and not Path(f"{prompt}.done").exists():
            Path(f"{prompt}.done").touch()
            if prompt == "idle-once":
                emit(Failed(id=request.id, kind="cancelled", message=STOPPED_IDLE))
            return 0
        if prompt == "hang":
            emit(Token(id=request.id, variant="adapter", text="I was about to say "))
            while True:
                time.sleep(60)
        for variant in ("base", "adapter") if request.compare else ("adapter",):
            started, pieces = time.monotonic(), chunks(prompt if variant == "adapter" else f"base {prompt}")
            for piece in pieces:
                time.sleep(0.02)
                emit(Token(id=request.id, variant=variant, text=piece))
            emit(Finished(id=request.id, variant=variant, text="".join(pieces), tokens=len(pieces),
                          seconds=time.monotonic() - started))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
