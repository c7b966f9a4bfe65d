"""`qlora-bot ask` reuses a running serve worker through its Unix socket: one an earlier ask left (until it
is idle), or the bot's; a dead worker's socket is replaced, and two asks at once start one worker."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.config import Config, PathsConfig, ServeConfig
from bot.workers.serve_socket import SharedServeClient
from protocol.serve import Failed, Finished, Generate, Token
from tests.processes import processes_naming, stop_processes_naming
from tests.serve_helpers import build_adapter
from tests.test_ask import request_for
from tests.worker_helpers import worker_env

PID_LINE = re.compile(r"\[serve worker pid (\d+), (started for later asks|already running)\]")


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    return build_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapters") / "adapter-1", seed=1)


@pytest.fixture
def home(tmp_path):
    """The data directory, and every serve worker an ask left there stopped at the end."""
    home = tmp_path / "home"
    yield home
    stop_processes_naming(f"{home}/serve/")


def write_config(tmp_path: Path, idle_timeout_s: float) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f"[serve]\nidle_timeout_s = {idle_timeout_s}\nmax_new_tokens_limit = 2000\n")
    return path


def ask_command(config: Path, adapter: Path) -> list[str]:
    return [sys.executable, "-m", "bot.cli", "ask", "--config", str(config), "--adapter", str(adapter)]


def ask_env(home: Path) -> dict[str, str]:
    return {**worker_env(), "QLORA_BOT_HOME": str(home)}


def ask(config: Path, adapter: Path, home: Path) -> tuple[int, bool, str]:
    """One `qlora-bot ask` run: the answering worker's pid, whether this ask started it, its stderr."""
    result = subprocess.run(
        [*ask_command(config, adapter), "--max-new-tokens", "4", "hello"],
        capture_output=True,
        text=True,
        env=ask_env(home),
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    return _pid_of(result.stderr)


def _pid_of(stderr: str) -> tuple[int, bool, str]:
    found = PID_LINE.search(stderr)
    assert found, stderr
    return int(found.group(1)), found.group(2).startswith("started"), stderr


def sockets(home: Path) -> list[Path]:
    return sorted((home / "serve").glob("*.sock"))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's reaping is left


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_successive_asks_share_one_worker_until_it_is_idle(tmp_path, home, adapter):
    config = write_config(tmp_path, idle_timeout_s=15.0)
    first_pid, started, first_err = ask(config, adapter, home)
    assert started and "loading base model" in first_err
    assert alive(first_pid)  # it outlived the ask that started it
    socket_file = sockets(home)[0]
    assert stat.S_IMODE(socket_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "serve").stat().st_mode) == 0o700

    second_pid, started, second_err = ask(config, adapter, home)
    assert second_pid == first_pid and not started
    assert "loading base model" not in second_err  # the base model was loaded once

    # Idle with no client: it removes its socket and exits; the next ask starts (and loads) afresh.
    wait_until(lambda: not alive(first_pid) and not socket_file.exists())
    third_pid, started, third_err = ask(config, adapter, home)
    assert third_pid != first_pid and started and "loading base model" in third_err


def test_the_socket_of_a_killed_worker_is_replaced(tmp_path, home, adapter):
    config = write_config(tmp_path, idle_timeout_s=120.0)
    first_pid, _, _ = ask(config, adapter, home)
    os.killpg(first_pid, signal.SIGKILL)
    wait_until(lambda: not alive(first_pid))
    assert len(sockets(home)) == 1  # stale: the file is left, nothing answers it
    second_pid, started, _ = ask(config, adapter, home)
    assert second_pid != first_pid and started


def test_two_asks_at_once_start_one_worker(tmp_path, home, adapter):
    config = write_config(tmp_path, idle_timeout_s=120.0)
    command = [*ask_command(config, adapter), "--max-new-tokens", "4", "hello"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    runs = [subprocess.Popen(command, env=ask_env(home), **pipes) for _ in range(2)]
    outcomes = []
    for run in runs:
        _, stderr = run.communicate(timeout=240)
        assert run.returncode == 0, stderr
        outcomes.append(_pid_of(stderr))
    assert outcomes[0][0] == outcomes[1][0]
    assert sorted(started for _, started, _ in outcomes) == [False, True]  # one started it, one reused it
    assert len(processes_naming(f"{home}/serve/")) == 1


async def test_a_worker_that_dies_fails_the_ask_clearly_and_the_next_ask_starts_another(
    tmp_path, home, adapter, tiny_model_dir
):
    serve = ServeConfig(idle_timeout_s=120.0, max_new_tokens_limit=2000)
    client = SharedServeClient(serve, home / "serve", home / "logs", environ=worker_env())
    try:
        events = []
        async for event in client.generate(request_for(adapter, tiny_model_dir, tokens=2000)):
            events.append(event)
            if isinstance(event, Token) and len(events) == 3:
                os.killpg(client.worker_pid, signal.SIGKILL)
        failed = events[-1]
        assert isinstance(failed, Failed) and failed.kind == "internal"
        assert failed.message == f"the serve worker (pid {client.worker_pid}) stopped unexpectedly"
        assert "ask again to restart it" in failed.hint
        dead = client.worker_pid
        again = [event async for event in client.generate(request_for(adapter, tiny_model_dir))]
        assert isinstance(again[-1], Finished) and client.worker_pid != dead
    finally:
        await client.close()


async def test_qlora_bot_ask_uses_the_bots_serve_worker(tmp_path, home, adapter, tiny_model_dir):
    from bot.cli.run import make_serve_client

    serve = ServeConfig(idle_timeout_s=120.0, max_new_tokens_limit=2000)
    bot_config = Config(paths=PathsConfig(data_dir=str(home)), serve=serve)
    client = make_serve_client(bot_config, service=None)  # the bot's own: it never waits for the GPU here
    client.environ = worker_env()
    try:
        events = [event async for event in client.generate(request_for(adapter, tiny_model_dir))]
        assert isinstance(events[-1], Finished)
        config = write_config(tmp_path, idle_timeout_s=120.0)
        pid, started, stderr = await asyncio.to_thread(ask, config, adapter, home)
        assert pid == client._process.pid and not started
        assert "loading" not in stderr  # base model and adapter were resident in the bot's worker
    finally:
        await client.close()
    assert not sockets(home)  # the bot's worker took its socket with it


async def test_two_clients_may_use_the_same_request_id(home, adapter, tiny_model_dir):
    """The worker namespaces ids by connection: both asks are answered, each with its own answer."""
    serve = ServeConfig(idle_timeout_s=120.0, max_new_tokens_limit=2000)
    clients = [SharedServeClient(serve, home / "serve", home / "logs", environ=worker_env()) for _ in "ab"]
    base = request_for(adapter, tiny_model_dir, tokens=12)
    requests = [
        dataclasses.replace(base, id="same", messages=({"role": "user", "content": prompt},))
        for prompt in ("hello there", "something else entirely")
    ]

    async def answer(client, request) -> str:
        events = [event async for event in client.generate(request)]
        assert isinstance(events[-1], Finished), events[-1]
        return events[-1].text

    try:
        alone = [await answer(clients[0], request) for request in requests]
        together = await asyncio.gather(*(answer(c, r) for c, r in zip(clients, requests, strict=True)))
        assert clients[0].worker_pid == clients[1].worker_pid
        assert list(together) == alone and alone[0] != alone[1]
    finally:
        for client in clients:
            await client.close()


async def test_a_terminal_ask_keeps_the_bots_worker_past_the_bots_idle_time(home, adapter, tiny_model_dir):
    """The bot's client sees only its own asks: a shared worker times itself, counting every client's."""
    from bot.cli.run import make_serve_client

    serve = ServeConfig(idle_timeout_s=3.0, max_new_tokens_limit=2000)
    client = make_serve_client(Config(paths=PathsConfig(data_dir=str(home)), serve=serve), service=None)
    client.environ = worker_env()
    # A terminal client of the same worker: the device the bot chose, as `qlora-bot ask` chooses it.
    terminal = SharedServeClient(
        serve,
        home / "serve",
        home / "logs",
        environ=worker_env(),
        cuda_visible_devices=client.cuda_visible_devices,
    )
    try:
        assert isinstance(
            [e async for e in client.generate(request_for(adapter, tiny_model_dir))][-1], Finished
        )
        pid = client._process.pid
        assert isinstance(
            [e async for e in terminal.generate(request_for(adapter, tiny_model_dir))][-1], Finished
        )
        assert terminal.worker_pid == pid and not terminal.started
        # The bot asks nothing for longer than its idle time, while the terminal client stays connected.
        await asyncio.sleep(serve.idle_timeout_s + 2.0)
        assert client.running and client._process.pid == pid
        events = [e async for e in terminal.generate(request_for(adapter, tiny_model_dir))]
        assert isinstance(events[-1], Finished) and terminal.worker_pid == pid
        # With no client left and nothing asked, the worker stops by itself; the bot's next ask starts one.
        await terminal.close()
        await asyncio.to_thread(wait_until, lambda: not alive(pid), 30.0)
        assert not sockets(home)
        assert isinstance(
            [e async for e in client.generate(request_for(adapter, tiny_model_dir))][-1], Finished
        )
        assert client._process.pid != pid and client.starts == 2
    finally:
        await terminal.close()
        await client.close()


@pytest.mark.parametrize("prompt", ["idle-once", "exit-once"])
async def test_an_ask_that_meets_a_worker_stopping_as_idle_is_answered_by_a_new_one(tmp_path, prompt):
    """The race a self-timed worker brings: it stops as idle just as the bot's ask reaches it (and says
    so, or exits before it could); the ask is sent once more to a new worker, and answered once."""
    from bot.workers.serve_worker import ServeClient
    from tests.test_ask import _fake_serve_env

    client = ServeClient(
        ServeConfig(idle_timeout_s=60.0),
        tmp_path / "serve.log",
        environ=_fake_serve_env(),
        module="fake_serve",
        socket_dir=tmp_path / "serve",
    )
    request = Generate(id="q1", base_model="base", prompt=prompt, max_new_tokens=8)
    try:
        events = [event async for event in client.generate(request)]
    finally:
        await client.close()
    assert not any(isinstance(event, Failed) for event in events), events
    assert [event.text for event in events if isinstance(event, Finished)] == [f"echo: {prompt} "]
    assert client.starts == 2
