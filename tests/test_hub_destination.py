"""Where a publish may write (bot/hub/destination.py): only into repos qlora-bot created for the same
adapter, only in the bot's namespace unless an admin asks, and with the visibility the job asked for set
before any upload. The real huggingface_hub against the fake Hub, a real JobService and Store."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from pathlib import Path

import pytest

from bot.cli.main import main
from bot.hub.destination import RepoRefused
from bot.hub.publisher import PublishRequest
from bot.jobs.service import Requester
from protocol.errors import UserError
from storage.models import Job
from storage.store import Store
from tests.fakes.fake_trainer import write_adapter
from tests.hub_helpers import (
    TOKEN,
    access,
    fake_hub_fixture,  # noqa: F401 - the fake_hub fixture
    folder_files,
    open_publisher,
)
from tests.service_helpers import fake_spec, open_service, shut

ADMIN = Requester(owner="local:alice", is_admin=True)
BOB = Requester(owner="discord:42")  # not an admin
UPLOADS = r"/preupload/|/info/lfs/|/commit/"  # the requests that carry the adapter's files


def _adapter(tmp_path: Path, job: str, seed: float) -> Path:
    folder = tmp_path / job / "adapter"
    write_adapter(folder, fake_spec(), seed=seed)
    return folder


async def _finished(store: Store, folder: Path, owner: str = ADMIN.owner) -> Job:
    """A succeeded job (adapter demo-<id>) whose adapter is `folder`, as if the runner had trained it."""
    job, _ = await store.create_job(
        owner=owner, name="demo", spec=fake_spec(), jobs_dir=folder.parent.parent, folder=folder.parent
    )
    await store.start_job(job.id, slot="cpu", resumed_from=None)
    return await store.finish_job(job.id, "succeeded", adapter_path=str(folder))


def _upload_index(hub, after: int = 0) -> int:
    """Where, in the order the fake Hub answered them, the first upload request after `after` is."""
    return next(i for i, r in enumerate(hub.requests) if i >= after and _is_upload(r))


def _is_upload(request) -> bool:
    return request.method in ("POST", "PUT") and re.search(UPLOADS, request.path) is not None


async def test_an_existing_repo_qlora_bot_did_not_create_is_refused_and_left_alone(fake_hub, tmp_path):
    theirs = fake_hub.add_repo("alice/existing", {"README.md": b"# my own model\n", "w.bin": b"1"})
    before = (dict(theirs.files), list(theirs.commits), theirs.private)
    service = await open_service(tmp_path / "home", hub=access(tmp_path), start=False)
    try:
        job = await _finished(service.store, _adapter(tmp_path, "a", 0.5))
        job = await service.publish(job.id, ADMIN, repo="alice/existing")  # private, as the job asked
    finally:
        await shut(service)
    assert job.hub_state == "push_failed"
    assert "the Hub repo alice/existing already exists and qlora-bot did not create it" in job.hub_error
    assert "choose another repo name" in job.hub_error
    assert (theirs.files, theirs.commits, theirs.private) == before  # not even made private
    # The create that answered 409 is the only request that asked for a change.
    assert [(r.method, r.path, r.status) for r in fake_hub.writes()] == [("POST", "/api/repos/create", 409)]


async def test_a_repo_created_for_one_adapter_is_republished_for_it_and_refused_to_another(
    fake_hub, tmp_path
):
    service = await open_service(tmp_path / "home", hub=access(tmp_path), start=False)
    try:
        first = await _finished(service.store, _adapter(tmp_path, "a", 0.5))
        other = await _finished(service.store, _adapter(tmp_path, "b", 2.0))
        published = await service.publish(first.id, ADMIN, repo="alice/shared")
        again = await service.publish(first.id, ADMIN, repo="alice/shared")
        refused = await service.publish(other.id, ADMIN, repo="alice/shared")
        assert refused.hub_state == "push_failed", "another adapter's publish went into the repo"
        record = await service.store.hub_repos.created("alice/shared")
    finally:
        await shut(service)
    assert published.hub_state == again.hub_state == "pushed", (published.hub_error, again.hub_error)
    repo = fake_hub.repos["alice/shared"]
    assert len(repo.commits) == 2 and (record.adapter, record.job_id) == ("demo-1", first.id)
    assert "already exists and qlora-bot created it for another adapter" in refused.hub_error
    weights = (tmp_path / "a" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert (
        repo.files["adapter_model.safetensors"] == weights and len(repo.commits) == 2
    )  # job 2 wrote nothing


async def test_the_creation_is_recorded_before_the_upload(fake_hub, tmp_path):
    fake_hub.fail("POST", r"/commit/", status=403)  # the first upload fails for good, after the create
    service = await open_service(tmp_path / "home", hub=access(tmp_path), start=False)
    try:
        job = await _finished(service.store, _adapter(tmp_path, "a", 0.5))
        failed = await service.publish(job.id, ADMIN)
        record = await service.store.hub_repos.created("alice/demo-1")
        assert fake_hub.repos["alice/demo-1"].commits == []  # created, nothing uploaded
        retried = await service.publish(job.id, ADMIN)  # the create answers 409 now: the record decides
    finally:
        await shut(service)
    assert failed.hub_state == "push_failed"
    assert record is not None and (record.adapter, record.job_id) == ("demo-1", job.id)
    assert retried.hub_state == "pushed", retried.hub_error
    assert [r.status for r in fake_hub.calls("POST", "repos/create")] == [200, 409]


async def test_a_public_repo_of_ours_is_made_private_before_the_upload(fake_hub, tmp_path):
    service = await open_service(tmp_path / "home", hub=access(tmp_path), start=False)
    try:
        job = await _finished(service.store, _adapter(tmp_path, "a", 0.5))
        assert (await service.publish(job.id, ADMIN)).hub_state == "pushed"
        repo = fake_hub.repos["alice/demo-1"]
        repo.private = False  # someone made it public on the Hub since
        start = len(fake_hub.requests)
        again = await service.publish(job.id, ADMIN)  # the job asked for private (the default)
    finally:
        await shut(service)
    assert again.hub_state == "pushed", again.hub_error
    assert repo.private and len(repo.commits) == 2
    [change] = [i for i, r in enumerate(fake_hub.requests) if r.method == "PUT" and "/settings" in r.path]
    assert start < change < _upload_index(fake_hub, after=start)


async def test_when_the_visibility_cannot_be_set_nothing_is_uploaded(fake_hub, tmp_path):
    service = await open_service(tmp_path / "home", hub=access(tmp_path), start=False)
    try:
        job = await _finished(service.store, _adapter(tmp_path, "a", 0.5))
        assert (await service.publish(job.id, ADMIN, private=False)).hub_state == "pushed"
        repo = fake_hub.repos["alice/demo-1"]
        assert not repo.private
        commits, start = list(repo.commits), len(fake_hub.requests)
        fake_hub.fail("PUT", r"/settings$", status=403)
        refused = await service.publish(job.id, ADMIN)  # as the job asked: private
    finally:
        await shut(service)
    assert refused.hub_state == "push_failed"
    assert (
        "could not make the Hub repo alice/demo-1 private (HTTP 403); nothing was uploaded"
        in refused.hub_error
    )
    assert not repo.private and repo.commits == commits
    assert not any(_is_upload(r) for r in fake_hub.requests[start:])


async def test_with_a_configured_namespace_a_non_admin_elsewhere_is_refused_before_any_request(
    fake_hub, tmp_path
):
    service = await open_service(tmp_path / "home", hub=access(tmp_path, namespace="alice"), start=False)
    try:
        job = await _finished(service.store, _adapter(tmp_path, "a", 0.5), owner=BOB.owner)
        with pytest.raises(UserError, match="acme/theirs is outside this bot's Hub namespace alice"):
            await service.publish(job.id, BOB, repo="acme/theirs")
        assert (await service.get(job.id)).hub_state == "none"
        assert fake_hub.requests == []  # not even whoami: hub.namespace says where we publish
        mine = await service.publish(job.id, BOB, repo="alice/bobs")  # in the namespace: fine
    finally:
        await shut(service)
    assert mine.hub_state == "pushed", mine.hub_error


async def test_the_publisher_itself_keeps_a_non_admin_request_in_the_namespace(fake_hub, tmp_path):
    folder = _adapter(tmp_path, "a", 0.5)
    elsewhere = PublishRequest(folder, "demo-1", private=True, repo="acme/demo-1")
    async with open_publisher(tmp_path) as publisher:
        with pytest.raises(RepoRefused, match="acme/demo-1 is outside this bot's Hub namespace alice"):
            await publisher.publish(elsewhere)
        assert fake_hub.writes() == []
        admins = await publisher.publish(dataclasses.replace(elsewhere, any_namespace=True))
    assert admins.repo_id == "acme/demo-1" and fake_hub.repos["acme/demo-1"].private


async def test_a_publish_cancelled_while_its_create_is_in_flight_still_records_the_repo(fake_hub, tmp_path):
    hold = fake_hub.hold("POST", r"/api/repos/create")
    service = await open_service(tmp_path / "home", hub=access(tmp_path), start=False)
    store = service.store
    try:
        job = await _finished(store, _adapter(tmp_path, "a", 0.5))
        publishing = asyncio.create_task(service.publish(job.id, ADMIN))
        assert await asyncio.to_thread(hold.arrived.wait, 30)
        closing = asyncio.create_task(service.close())  # cancels the publish: the bot is shutting down
        await asyncio.sleep(0.3)
        hold.release.set()  # the Hub creates the repo after all
        await asyncio.wait_for(closing, 30)
        with contextlib.suppress(asyncio.CancelledError):
            await publishing
        record = await store.hub_repos.created("alice/demo-1")
    finally:
        hold.release.set()
        await store.close()
    assert "alice/demo-1" in fake_hub.repos and fake_hub.repos["alice/demo-1"].commits == []
    assert record is not None and record.adapter == "demo-1"  # so the next publish may use its own repo


def test_qlora_bot_push_keeps_to_repos_it_created_for_the_same_adapter(
    fake_hub, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("QLORA_BOT_HOME", str(tmp_path / "home"))
    folder, other = _adapter(tmp_path, "a", 0.5), _adapter(tmp_path, "b", 2.0)
    theirs = fake_hub.add_repo("alice/existing", {"README.md": b"# my own model\n"})
    before = (dict(theirs.files), list(theirs.commits))

    assert main(["push", str(folder), "--repo", "alice/by-hand"]) == 0
    assert main(["push", str(folder), "--repo", "alice/by-hand"]) == 0  # the same folder again: fine
    assert len(fake_hub.repos["alice/by-hand"].commits) == 2
    capsys.readouterr()
    assert main(["push", str(other), "--repo", "alice/by-hand"]) == 1  # another adapter
    assert (
        "alice/by-hand already exists and qlora-bot created it for another adapter" in capsys.readouterr().err
    )
    assert main(["push", str(folder), "--repo", "alice/existing"]) == 1
    assert "alice/existing already exists and qlora-bot did not create it" in capsys.readouterr().err
    assert (theirs.files, theirs.commits) == before
    assert main(["push", str(folder), "--repo", "acme/by-hand"]) == 0  # the terminal's user is an admin
    assert fake_hub.repos["acme/by-hand"].private

    # A job's adapter folder published by hand counts as the job's adapter: its repo takes it again.
    job_id = asyncio.run(_job_of(tmp_path / "home" / "qlora-bot.db", other))
    assert main(["push", str(job_id), "--repo", "alice/from-job"]) == 0
    assert main(["push", str(other), "--repo", "alice/from-job"]) == 0
    assert len(fake_hub.repos["alice/from-job"].commits) == 2
    assert folder_files(other)  # the adapter is only read


async def _job_of(db_path: Path, folder: Path) -> int:
    async with await Store.open(db_path) as store:
        return (await _finished(store, folder, owner="local:x")).id
