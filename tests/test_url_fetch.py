"""trainer.data.url_fetch: dataset URLs never reach this machine or its private network
(SSRF), follow only checked https redirects, finish within their deadline or fail, and are never shown
with their secrets (in errors, Discord, the CLI and the log)."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.config import Config
from bot.jobs.service import Requester
from bot.jobs.specs import make_spec, name_from_dataset
from bot.logging_setup import setup_logging
from protocol.errors import UserError
from protocol.job_spec import DatasetSpec, JobSpec, Limits, spec_problems
from protocol.sources import redact_url
from storage.store import Store
from tests.discord_helpers import bot_config, embed_field, running_bot
from tests.fake_discord.fixture import fake_discord_fixture  # noqa: F401 - the fake_discord fixture
from tests.service_helpers import open_service, shut
from tests.url_servers import (
    JSONL_BODY,
    LoopbackServer,
    body,
    redirect,
    trickle,
    truncated,
    write_certificate,
)
from tests.worker_helpers import worker_env
from trainer.data.sources import read_records
from trainer.data.url_fetch import FetchPolicy, open_url

LOOPBACK = ("127.0.0.1",)  # the admin's allow-list entry that lets a test reach its loopback server


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def trusted(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The test certificate trusted as the worker would trust it: were a refused URL connected to, its
    download would succeed."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    return certificate


def limits(**changes: object) -> Limits:
    return Limits(**{"max_dataset_bytes": 1 << 20, "max_rows": 1000, **changes})  # type: ignore[arg-type]


def read(url: str, tmp_path: Path, **changes: object):
    return read_records(DatasetSpec(source=url), tmp_path / "downloads", limits(**changes))


def refusal(url: str, tmp_path: Path, **changes: object) -> UserError:
    with pytest.raises(UserError) as caught:
        read(url, tmp_path, **changes)
    assert caught.value.hint, "every user error says what to do"
    return caught.value


def fetch(url: str, policy: FetchPolicy, **kwargs: object) -> bytes:
    with open_url(url, policy, **kwargs) as download:  # type: ignore[arg-type]
        return b"".join(download.chunks())


# ---------------------------------------------------------------------------------------------
# Refused before connecting: a real server listens behind every one of these URLs


def test_urls_that_name_this_machine_are_refused_before_connecting(tmp_path: Path, trusted) -> None:
    with (
        LoopbackServer({"/x.jsonl": body()}, tls=trusted) as v4,
        LoopbackServer({"/x.jsonl": body()}, tls=trusted, address="::1") as v6,
    ):
        port = v4.port
        literal = "127.0.0.1 is a loopback address"
        cases = [
            (f"https://127.0.0.1:{port}/x.jsonl", literal),
            (f"https://127.1:{port}/x.jsonl", literal),
            (f"https://2130706433:{port}/x.jsonl", literal),
            (f"https://0x7f.0.0.1:{port}/x.jsonl", literal),
            (f"https://0x7f000001:{port}/x.jsonl", literal),
            (f"https://0177.0.0.1:{port}/x.jsonl", literal),
            (
                f"https://[::ffff:127.0.0.1]:{port}/x.jsonl",
                "::ffff:7f00:1 is a loopback address (IPv4-mapped)",
            ),
            (f"https://0.0.0.0:{port}/x.jsonl", "0.0.0.0 is an unspecified ('this network') address"),
            (f"https://localhost:{port}/x.jsonl", "localhost resolves to a loopback address"),
            (f"https://LOCALHOST.:{port}/x.jsonl", "localhost resolves to a loopback address"),
            (f"https://[::1]:{v6.port}/x.jsonl", "::1 is a loopback address"),
        ]
        refused = 0
        for url, why in cases:
            error = refusal(url, tmp_path)
            assert error.message == (
                f"{url.replace('LOCALHOST', 'localhost')}: {why}; "
                "dataset URLs may not reach this server or its network"
            )
            assert "defaults.limits.allowed_url_hosts" in error.hint
            refused += 1
        # What the admin's allow-list opens, with the same server and certificate: the data was there.
        assert read(f"https://127.0.0.1:{port}/x.jsonl", tmp_path, allowed_url_hosts=LOOPBACK).rows
        assert (v4.connections, v6.connections) == (1, 0)  # only the allowed read
    print(f"\nURLs tried: {len(cases)}, refused before connecting: {refused}")


def test_every_address_a_name_resolves_to_is_checked() -> None:
    """A DNS answer with one public and one private address is refused, whichever comes first, and the
    message names no address (it would map this network's names for whoever asks)."""
    for answer in (["93.184.216.34", "10.0.0.7"], ["10.0.0.7", "93.184.216.34"]):
        with pytest.raises(UserError) as caught:
            fetch("https://data.example/x.jsonl", FetchPolicy(timeout_s=2), resolver=lambda *_, a=answer: a)
        assert caught.value.message == (
            "https://data.example/x.jsonl: data.example resolves to a private network address; "
            "dataset URLs may not reach this server or its network"
        )


def test_the_checked_address_is_the_one_connected_to(trusted, monkeypatch: pytest.MonkeyPatch) -> None:
    """One lookup, through the checker's resolver; the connection goes to that address and TLS verifies
    the URL's name (Host header and SNI) rather than the address."""
    lookups: list[object] = []

    def no_second_lookup(host: object, *args: object, **kwargs: object) -> object:
        lookups.append(host)
        raise OSError(f"a second lookup of {host}")

    resolved: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        resolved.append((host, port))
        return ["127.0.0.1"]

    with LoopbackServer({"/x.jsonl": body()}, tls=trusted) as server:
        monkeypatch.setattr(socket, "getaddrinfo", no_second_lookup)
        policy = FetchPolicy(frozenset({"data.test"}))
        assert fetch(server.url("/x.jsonl?sig=1", host="data.test"), policy, resolver=resolver) == JSONL_BODY
    assert resolved == [("data.test", server.port)] and lookups == []
    assert server.requests == [("/x.jsonl?sig=1", f"data.test:{server.port}", "data.test")]


def test_credentials_in_a_url_are_refused(tmp_path: Path, trusted) -> None:
    with LoopbackServer({"/x.jsonl": body()}, tls=trusted) as server:
        url = f"https://alice:pa55word@127.0.0.1:{server.port}/x.jsonl?sig=secret"
        error = refusal(url, tmp_path, allowed_url_hosts=LOOPBACK)  # only the credentials stop it
        assert server.connections == 0
    assert error.message == (
        f"https://127.0.0.1:{server.port}/x.jsonl: URLs with a user name or password (user:password@) "
        "are refused"
    )


def test_the_url_limits_are_checked_with_the_spec() -> None:
    spec = JobSpec(
        base_model="m",
        dataset=DatasetSpec("d"),
        limits=Limits(
            download_timeout_s=0.0, allowed_url_hosts=("data.corp", "[::1]", "127.0.0.1:8080", "https://x")
        ),
    )
    assert spec_problems(spec) == [
        "limits.allowed_url_hosts: '127.0.0.1:8080' is not a host name or address (no scheme or port)",
        "limits.allowed_url_hosts: 'https://x' is not a host name or address (no scheme or port)",
        "limits.download_timeout_s: must be a finite number > 0 (got 0.0)",
    ]


# ---------------------------------------------------------------------------------------------
# Redirects


def test_a_redirect_to_a_denied_address_is_refused_after_the_redirect(tmp_path: Path, trusted) -> None:
    with LoopbackServer({"/x.jsonl": body()}, tls=trusted) as target:
        routes = {"/start": redirect(target.url("/x.jsonl?sig=secret", host="localhost"))}
        with LoopbackServer(routes, tls=trusted) as allowed:
            error = refusal(allowed.url("/start?token=abc"), tmp_path, allowed_url_hosts=LOOPBACK)
            assert [path for path, _host, _sni in allowed.requests] == ["/start?token=abc"]
            assert target.connections == 0
    assert error.message == (
        f"https://localhost:{target.port}/x.jsonl (redirected from {allowed.url('/start')}): "
        "localhost resolves to a loopback address; dataset URLs may not reach this server or its network"
    )


def test_a_redirect_from_https_to_http_is_refused(tmp_path: Path, trusted) -> None:
    """Even to a host the allow-list opens to plain http: a redirect never downgrades."""
    with LoopbackServer({"/x.jsonl": body()}) as plain:
        with LoopbackServer({"/start": redirect(plain.url("/x.jsonl"))}, tls=trusted) as secure:
            error = refusal(secure.url("/start"), tmp_path, allowed_url_hosts=LOOPBACK)
        assert plain.connections == 0
    assert error.message == (
        f"{secure.url('/start')}: redirected from https to plain http ({plain.url('/x.jsonl')}), "
        "which is refused"
    )


def test_redirects_are_bounded(tmp_path: Path, trusted) -> None:
    routes = {f"/hop/{n}": redirect(f"/hop/{n + 1}") for n in range(20)}
    with LoopbackServer(routes, tls=trusted) as server:
        error = refusal(server.url("/hop/0"), tmp_path, allowed_url_hosts=LOOPBACK)
        assert len(server.requests) == 6  # the URL and five redirects
    assert (
        error.message
        == f"{server.url('/hop/5')} (redirected from {server.url('/hop/4')}): more than 5 redirects"
    )


def test_a_redirect_to_a_named_file_takes_its_type_from_the_final_url(tmp_path: Path, trusted) -> None:
    routes = {"/a": redirect("/b", 301), "/b": redirect("/x.jsonl", 307), "/x.jsonl": body()}
    with LoopbackServer(routes, tls=trusted) as server:
        records = read(server.url("/a"), tmp_path, allowed_url_hosts=LOOPBACK)
    assert records.rows == [{"text": "one"}, {"text": "two"}]


# ---------------------------------------------------------------------------------------------
# Time and length


@pytest.mark.parametrize("in_headers", [True, False], ids=["headers", "body"])
def test_a_trickling_server_hits_the_total_deadline(tmp_path: Path, trusted, in_headers: bool) -> None:
    """A byte every 0.1 s never trips a per-read timeout; the one deadline for the download does."""
    with LoopbackServer({"/slow.jsonl": trickle(in_headers, for_s=10)}, tls=trusted) as server:
        started = time.monotonic()
        error = refusal(
            server.url("/slow.jsonl"), tmp_path, allowed_url_hosts=LOOPBACK, download_timeout_s=1.0
        )
        elapsed = time.monotonic() - started
    assert error.message == (
        f"{server.url('/slow.jsonl')}: the download took longer than 1 s (defaults.limits.download_timeout_s)"
    )
    assert elapsed < 4, elapsed  # 1 s, plus slack for a loaded machine; the trickle would go on for 10
    assert list((tmp_path / "downloads").glob("*")) == []


def test_a_body_shorter_than_its_content_length_is_refused(tmp_path: Path, trusted) -> None:
    with LoopbackServer(
        {"/cut.jsonl": truncated(b'{"text": "one"}\n', announced=100)}, tls=trusted
    ) as server:
        error = refusal(server.url("/cut.jsonl"), tmp_path, allowed_url_hosts=LOOPBACK)
    assert (
        error.message
        == f"{server.url('/cut.jsonl')}: the download was cut short (16 bytes of the 100 it announced)"
    )
    assert list((tmp_path / "downloads").glob("*")) == []  # no partial file left behind


# ---------------------------------------------------------------------------------------------
# What is shown of a URL


def test_redact_url_keeps_only_scheme_host_port_and_path() -> None:
    cases = {
        "https://bob:pw@data.example.com:8443/chat.jsonl?X-Amz-Signature=s3cr3t#top": (
            "https://data.example.com:8443/chat.jsonl"
        ),
        "HTTPS://Data.Example.com/a.jsonl?sig=1": "https://data.example.com/a.jsonl",
        "https://[::1]:8443/a.jsonl?sig=1": "https://[::1]:8443/a.jsonl",
        "https://bob:pw@[::1/a.jsonl?sig=1": "https://[::1/a.jsonl",  # not parseable: cut as text
        "https://h:99999/a.jsonl?sig=1": "https://h:99999/a.jsonl",
        "org/name": "org/name",
    }
    assert {url: redact_url(url) for url in cases} == cases
    assert name_from_dataset("https://bob:pw@data.example.com?sig=1") == "data.example"  # the adapter's name


def test_errors_and_origins_never_show_the_query(tmp_path: Path, trusted) -> None:
    routes = {"/bad.jsonl": body(b'{"text": "one"}\n{"text": \n')}
    with LoopbackServer(routes, tls=trusted) as server:
        missing = refusal(server.url("/missing.jsonl?sig=secret"), tmp_path, allowed_url_hosts=LOOPBACK)
        bad = refusal(server.url("/bad.jsonl?sig=secret"), tmp_path, allowed_url_hosts=LOOPBACK)
    assert missing.message == f"{server.url('/missing.jsonl')}: download failed with HTTP 404 Not Found"
    assert bad.message.startswith(f"{server.url('/bad.jsonl')} line 2: not valid JSON"), bad.message


# ---------------------------------------------------------------------------------------------
# Across the process boundary: the spec carries the allow-list to the submit-time check's subprocess


async def test_an_allowed_host_passes_the_submit_time_check_in_its_subprocess(tmp_path: Path, trusted):
    """The spec's limits reach trainer.data.check as the job's worker gets them, and the worker trusts
    the certificates SSL_CERT_FILE names (passed through bot/workers/environment.py)."""
    service = await open_service(tmp_path / "home", start=False)
    try:
        with LoopbackServer({"/x.jsonl": body()}, tls=trusted) as server:
            spec = JobSpec(
                base_model="fake/model",
                dataset=DatasetSpec(source=server.url("/x.jsonl?sig=1")),
                limits=limits(allowed_url_hosts=LOOPBACK),
            )
            job = await service.submit(spec, Requester("local:alice"))
            assert [path for path, _host, _sni in server.requests] == ["/x.jsonl?sig=1"]
        assert job.state == "queued" and job.spec.limits.allowed_url_hosts == LOOPBACK
    finally:
        await shut(service)


# ---------------------------------------------------------------------------------------------
# Through Discord: the submit-time data check refuses the URL, in the person's own reply


@pytest.fixture
def debug_log(tmp_path: Path):
    """The bot process's log file as `qlora-bot run -v` writes it (its console copy left out: this test
    reads the file); the root logger is restored after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    path = setup_logging(tmp_path / "logs", [], verbose=True)
    for handler in root.handlers[:]:
        if handler not in saved[0] and not isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
    yield path
    for handler in root.handlers:
        if handler not in saved[0]:
            handler.close()
    root.handlers[:], root.level = saved


async def test_finetune_with_a_url_to_this_machine_is_refused_before_connecting(
    fake_discord, tmp_path: Path, trusted, debug_log: Path
) -> None:
    fake = fake_discord
    config = bot_config(tmp_path / "home", fake, base_models=("fake/model",))
    with LoopbackServer({"/x.jsonl": body()}, tls=trusted) as server:
        async with running_bot(fake, config) as (_bot, service):
            url = server.url("/x.jsonl?sig=secret")
            call = await fake.slash("finetune", {"base_model": "fake/model", "dataset": url})
            [answer] = await call.wait_followups(1, timeout=30)
            assert await service.list() == []
        assert server.connections == 0
    assert call.ephemeral
    assert answer.content.startswith(
        f"https://127.0.0.1:{server.port}/x.jsonl: 127.0.0.1 is a loopback address; "
        "dataset URLs may not reach this server or its network."
    ), answer.content
    sent_to_discord = json.dumps([request.body for request in fake.requests], default=str)
    assert "sig=secret" not in sent_to_discord and "secret" not in answer.content
    check_log = config.logs_dir() / "data-check.log"
    assert not check_log.exists() or "secret" not in check_log.read_text()
    for handler in logging.getLogger().handlers:
        handler.flush()
    logged = debug_log.read_text()
    # The path was exercised: discord.py logged the gateway event that carries the option's value.
    assert "INTERACTION_CREATE" in logged and f"127.0.0.1:{server.port}/x.jsonl?[secret]" in logged
    assert "sig=secret" not in logged


SIGNED = "https://bob:pa55word@data.example.com:8443/chat.jsonl?X-Amz-Signature=s3cr3t#top"


async def _cancelled_job_on(config: Config, source: str, owner: str) -> None:
    """A job as /finetune would have made it (the data check aside), ended before it ran."""
    spec = make_spec(
        config.defaults, base_model="fake/model", dataset=DatasetSpec(source), name=None, lora={}, training={}
    )
    async with await Store.open(config.database_path(), jobs_dir=config.jobs_dir()) as store:
        job, _ = await store.create_job(
            owner=owner,
            name=spec.name or "adapter",
            spec=spec,
            jobs_dir=config.jobs_dir(),
        )
        await store.finish_job(job.id, "cancelled", error_kind="cancelled", error_message="cancelled")


async def test_a_url_dataset_is_shown_without_its_secrets_in_discord_and_the_cli(fake_discord, tmp_path):
    fake = fake_discord
    config = bot_config(tmp_path / "home", fake, base_models=("fake/model",))
    await _cancelled_job_on(config, SIGNED, owner=f"discord:{fake.user.id}")
    async with running_bot(fake, config):
        call = await fake.slash("job", {"id": 1})
        [answer] = await call.wait_followups(1)
    assert embed_field(answer, "Dataset") == "https://data.example.com:8443/chat.jsonl"
    assert answer.embeds[0]["title"] == "Job 1 · chat"
    sent_to_discord = json.dumps([request.body for request in fake.requests], default=str)
    assert "s3cr3t" not in sent_to_discord and "pa55word" not in sent_to_discord

    env = {**worker_env(), "QLORA_BOT_HOME": str(config.data_dir())}
    shown = subprocess.run(
        [sys.executable, "-m", "bot.cli", "job", "1"], capture_output=True, text=True, env=env, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert "  dataset     https://data.example.com:8443/chat.jsonl\n" in shown.stdout, shown.stdout
    assert "s3cr3t" not in shown.stdout + shown.stderr and "pa55word" not in shown.stdout + shown.stderr
