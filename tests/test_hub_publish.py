"""Publishing adapters and fetching them by Hub id: the real huggingface_hub against the loopback fake Hub."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import pytest

from bot.cli.main import main
from bot.hub.model_card import CardFacts, render_card
from bot.hub.public_record import public_record
from bot.hub.publisher import PublishFailed, PublishRequest
from bot.jobs.asking import resolve_adapter
from bot.jobs.service import Requester
from bot.jobs.submission import Upload
from protocol.errors import UserError
from protocol.job_spec import DatasetSpec
from storage.store import Store
from tests.fakes.fake_trainer import write_adapter
from tests.hub_helpers import (
    BAD_TOKEN,
    READ_TOKEN,
    TOKEN,
    access,
    card_metadata,
    fake_hub_fixture,  # noqa: F401 - the fake_hub fixture
    folder_files,
    open_publisher,
    sha256,
)
from tests.service_helpers import fake_spec, open_service, shut

ALICE = Requester(owner="local:alice", is_admin=True)


@pytest.fixture
def adapter_dir(tmp_path):
    folder = tmp_path / "job" / "adapter"
    write_adapter(folder, fake_spec("steps=3"), seed=0.5)
    return folder


async def _settled(service, job_id: int):
    """The job once it ended and its publish step (if any) ended too."""
    job = None
    async for update in service.subscribe(job_id, poll_s=0.1):
        job = update.job
    return job


async def test_a_succeeded_job_is_published_with_its_files_card_and_chart(fake_hub, tmp_path):
    fake_hub.add_repo("fake/model", {"README.md": b"---\nlicense: apache-2.0\n---\n# A base model\n"})
    service = await open_service(tmp_path, hub=access(tmp_path))
    try:
        submitted = await service.submit(fake_spec("steps=4"), ALICE, push=True)
        job = await asyncio.wait_for(_settled(service, submitted.id), 30)
        adapter = await service.store.adapter("demo-1")
    finally:
        await shut(service)
    repo = fake_hub.repos["alice/demo-1"]
    assert (job.state, job.hub_state, job.hub_error) == ("succeeded", "pushed", None)
    assert job.hub_url == f"{fake_hub.url}/alice/demo-1" and job.hub_commit == repo.sha
    assert adapter.hub_repo == "alice/demo-1"
    assert repo.private and len(repo.commits) == 1  # private by default; everything in one commit

    local = folder_files(tmp_path / "jobs" / "1" / "adapter")
    assert set(repo.files) == set(local) | {"loss.png"}
    for name in set(local) - {"README.md", "qlora_bot.json"}:
        assert repo.files[name] == local[name], name
    weights = "adapter_model.safetensors"
    assert sha256(repo.files[weights]) == sha256(local[weights]) and weights in repo.lfs_paths
    assert repo.files["loss.png"].startswith(b"\x89PNG")
    # The job folder holds our card with no repo in it (written when the job succeeded, over trl's); the
    # published one is the same card loading from the repo.
    assert b"# demo-1\n" in local["README.md"] and b"from_pretrained(ADAPTER" in local["README.md"]
    assert (
        b"alice/demo-1" not in local["README.md"]
        and b"This model was trained with TRL" not in local["README.md"]
    )
    published_record = json.loads(repo.files["qlora_bot.json"])
    assert "output_dir" not in published_record["spec"]  # no local paths in a public record
    assert "output_dir" in json.loads(local["qlora_bot.json"])["spec"]  # the local one is untouched

    card = repo.files["README.md"]
    metadata = card_metadata(card)
    assert metadata["library_name"] == "peft" and metadata["base_model"] == "fake/model"
    assert metadata["pipeline_tag"] == "text-generation" and metadata["license"] == "apache-2.0"
    assert "qlora" in metadata["tags"]
    body = card.decode()
    for expected in (
        "| LoRA r | 16 |",
        "| LoRA alpha | 32 |",
        "| learning_rate | 0.0002 |",
        "| grad_accum | 4 |",
        "| Final train loss | 0.5000 |",
        "| Tokens trained on | 400 |",
        "![Training and eval loss by step](loss.png)",
        'AutoPeftModelForCausalLM.from_pretrained("alice/demo-1"',
    ):
        assert expected in body, expected


async def test_no_published_file_names_a_path_of_this_machine(fake_hub, tmp_path):
    home = tmp_path / "home"
    service = await open_service(home, hub=access(tmp_path))
    try:
        upload = Upload(".jsonl", b'{"fake": "steps=3"}\n')  # the dataset lands in the job folder
        submitted = await service.submit(fake_spec("steps=3"), ALICE, push=True, upload=upload)
        job = await asyncio.wait_for(_settled(service, submitted.id), 30)
    finally:
        await shut(service)
    assert job.hub_state == "pushed", job.hub_error
    local = json.loads((Path(job.adapter_path) / "qlora_bot.json").read_text())
    assert local["spec"]["cache_dir"] == str(home / "cache")  # the saved record has the paths...
    repo = fake_hub.repos["alice/demo-1"]
    paths = {
        "data directory": str(home),
        "job folder": job.folder,
        "cache": str(home / "cache"),
        "home directory": str(Path.home()) + "/",
        "temp directory": tempfile.gettempdir() + "/",
    }
    for name, data in repo.files.items():  # ...no uploaded file has any
        for what, path in paths.items():
            assert path.encode() not in data, f"{name} carries the {what} {path}"
    published = json.loads(repo.files["qlora_bot.json"])
    assert published["spec"]["base_model"] == "fake/model"
    assert published["spec"]["dataset"] == {
        "source": "dataset.jsonl",
        "format": "auto",
        "config": None,
        "split": "train",
    }
    assert published["spec"]["lora"]["r"] == 16 and published["spec"]["training"]["learning_rate"] == 2e-4
    assert published["runtime"]["device"] == "cpu" and published["data_format"] == "text"


def test_the_public_record_is_an_allow_list():
    record = {
        "spec": {
            "base_model": "/home/alice/models/llama-7b",
            "base_revision": "abc123",
            "name": "chat",
            "output_dir": "/home/alice/.local/share/qlora-bot/jobs/3",
            "cache_dir": "/home/alice/.local/share/qlora-bot/cache",
            "resume_from": "/home/alice/.local/share/qlora-bot/jobs/3/checkpoints/checkpoint-4",
            "dataset": {
                "source": "https://bob:pw@data.example.com:8443/chat.jsonl?X-Amz-Signature=s3cr3t#top",
                "format": "messages",
                "split": "train",
                "mirror": "/srv/mirror",  # unknown: left out
            },
            "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
            "training": {"learning_rate": 1e-4, "max_steps": 10, "scratch_dir": "/tmp/x", "seed": 1},
            "limits": {"max_rows": 10},
            "future_field": "/home/alice/secret",
        },
        "data_format": "messages",
        "prompt_style": "chat",
        "chat_template_source": "base model",
        "runtime": {"device": "cpu", "torch": "2.13.0", "python": "/home/alice/.venv/bin/python"},
        "environment": {"HOME": "/home/alice"},
    }
    assert public_record(record) == {
        "spec": {
            "base_model": "llama-7b",
            "base_revision": "abc123",
            "name": "chat",
            "dataset": {
                "source": "https://data.example.com:8443/chat.jsonl",
                "format": "messages",
                "split": "train",
            },
            "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
            "training": {"learning_rate": 1e-4, "max_steps": 10, "seed": 1},
        },
        "data_format": "messages",
        "prompt_style": "chat",
        "chat_template_source": "base model",
        "runtime": {"device": "cpu", "torch": "2.13.0"},
    }
    hub_ids = {"spec": {"base_model": "meta-llama/Llama-2-7b-hf", "dataset": {"source": "org/data"}}}
    assert public_record(hub_ids)["spec"]["base_model"] == "meta-llama/Llama-2-7b-hf"
    assert public_record(hub_ids)["spec"]["dataset"] == {"source": "org/data"}
    assert public_record({}) == {}


async def test_one_429_is_retried_and_a_public_repo_is_created_when_asked(fake_hub, tmp_path, adapter_dir):
    fake_hub.fail("POST", r"/commit/", status=429, headers={"Retry-After": "0"})
    delays = []

    async def sleep(seconds):
        delays.append(seconds)

    async with open_publisher(tmp_path, namespace="alice", sleep=sleep) as publisher:
        published = await publisher.publish(PublishRequest(adapter_dir, name="open", private=False))
    assert [call.status for call in fake_hub.calls("POST", "/commit/")] == [429, 200]
    assert delays == [0.0]  # the Hub's Retry-After, not the backoff
    assert published.repo_id == "alice/open" and not fake_hub.repos["alice/open"].private
    assert fake_hub.calls("GET", "whoami") == []  # hub.namespace is set: no whoami


async def test_a_persistent_5xx_backs_off_then_fails_and_leaves_the_adapter_alone(
    fake_hub, tmp_path, adapter_dir
):
    before = folder_files(adapter_dir)
    fake_hub.fail("POST", r"/commit/", status=503, times=None)
    delays = []

    async def sleep(seconds):
        delays.append(seconds)

    with pytest.raises(PublishFailed, match=r"the Hub answered HTTP 503 after 3 tries") as failed:
        async with open_publisher(tmp_path, sleep=sleep) as publisher:
            await publisher.publish(PublishRequest(adapter_dir, name="flaky", private=True))
    assert "retry later with /push" in failed.value.hint
    assert delays == [0.05, 0.1]  # backoff_s, doubled
    assert folder_files(adapter_dir) == before


@pytest.mark.parametrize(("token", "status"), [(BAD_TOKEN, 401), (READ_TOKEN, 403)])
async def test_refused_tokens_fail_at_once_with_advice_and_never_the_token(
    fake_hub, tmp_path, adapter_dir, token, status
):
    with pytest.raises(PublishFailed) as failed:
        async with open_publisher(tmp_path, token=token, namespace="alice") as publisher:
            await publisher.publish(PublishRequest(adapter_dir, name="nope", private=True))
    message = str(failed.value)
    assert f"HTTP {status}" in message and "check HF_TOKEN has write access to alice" in message
    assert token not in message and "hf_" not in message
    assert len(fake_hub.calls("POST", "repos/create")) == 1  # not retried


async def test_without_a_token_nothing_is_sent(fake_hub, tmp_path, adapter_dir):
    with pytest.raises(PublishFailed, match="HF_TOKEN is not set"):
        async with open_publisher(tmp_path, token=None) as publisher:
            await publisher.publish(PublishRequest(adapter_dir, "x", True))
    assert fake_hub.requests == []


def test_qlora_bot_push_publishes_a_folder_and_a_job(fake_hub, tmp_path, adapter_dir, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("QLORA_BOT_HOME", str(tmp_path / "home"))
    assert main(["push", str(adapter_dir), "--repo", "alice/by-hand", "--public"]) == 0
    assert capsys.readouterr().out.strip().startswith(f"published: {fake_hub.url}/alice/by-hand (commit ")
    assert not fake_hub.repos["alice/by-hand"].private
    assert card_metadata(fake_hub.repos["alice/by-hand"].files["README.md"])["base_model"] == "fake/model"

    assert main(["push", str(adapter_dir)]) == 2
    assert "publishing a folder needs --repo" in capsys.readouterr().err
    assert main(["push", "12"]) == 2
    assert "there is no job 12" in capsys.readouterr().err

    job_id = asyncio.run(_succeeded_job(tmp_path / "home" / "qlora-bot.db", adapter_dir))
    assert main(["push", str(job_id), "--repo", "alice/from-job"]) == 0
    assert f"published: {fake_hub.url}/alice/from-job" in capsys.readouterr().out
    assert fake_hub.repos["alice/from-job"].private
    assert main(["job", str(job_id)]) == 0
    assert f"hub         {fake_hub.url}/alice/from-job (commit " in capsys.readouterr().out


async def _succeeded_job(db_path: Path, adapter_dir: Path) -> int:
    """A job of this terminal's user that finished with `adapter_dir`, as if `qlora-bot train` ran it."""
    async with await Store.open(db_path) as store:
        job, _ = await store.create_job(
            owner="local:x", name="demo", spec=fake_spec(), jobs_dir=db_path.parent, folder=adapter_dir.parent
        )
        await store.start_job(job.id, slot="cpu", resumed_from=None)
        await store.finish_job(job.id, "succeeded", adapter_path=str(adapter_dir))
        return job.id


async def test_ask_by_hub_id_downloads_the_adapter_into_the_cache(fake_hub, tmp_path, adapter_dir):
    async with open_publisher(tmp_path, namespace="alice") as publisher:
        await publisher.publish(PublishRequest(adapter_dir, name="asked", private=True))
    async with await Store.open(tmp_path / "db.sqlite") as store:
        resolved = await resolve_adapter(store, "alice/asked", hub=access(tmp_path))
        assert resolved.label == "alice/asked" and resolved.base_model == "fake/model"
        assert resolved.path.startswith(str(tmp_path / "hub-cache"))
        downloaded = folder_files(Path(resolved.path))
        assert sha256(downloaded["adapter_model.safetensors"]) == sha256(
            (adapter_dir / "adapter_model.safetensors").read_bytes()
        )
        with pytest.raises(UserError, match="no Hub repo alice/asked this bot can read"):
            await resolve_adapter(store, "alice/asked", hub=access(tmp_path / "anonymous", token=None))
        with pytest.raises(UserError, match="there is no adapter named 'alice/asked'"):
            await resolve_adapter(store, "alice/asked")  # no Hub access given: names and folders only


def test_the_card_of_a_local_base_model_names_no_base_and_no_local_paths(tmp_path):
    facts = CardFacts(
        repo_id="alice/local",
        name="local",
        base_model=str(tmp_path),  # an existing folder: not a Hub id
        dataset=DatasetSpec(source="https://bob:pa55word@example.com/data.jsonl?X-Signature=secret"),
        lora=None,
        training=None,
        metrics={},
        runtime={},
        prompt_style="raw",
    )
    card = render_card(facts)
    metadata = card_metadata(card.encode())
    assert "base_model" not in metadata and "license" not in metadata
    assert str(tmp_path) not in card and "secret" not in card and "pa55word" not in card
    assert "`https://example.com/data.jsonl`" in card and 'tokenizer("Your prompt"' in card
