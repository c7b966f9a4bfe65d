"""tests/fake_discord: the real discord.py client, driven like a user through the loopback fake."""

from __future__ import annotations

import asyncio
import io

import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.fake_discord import FakeDiscord
from tests.fake_discord.fixture import fake_discord_fixture  # noqa: F401 - the fake_discord fixture

ADAPTERS = ["guanaco-12", "guanaco-13", "alpaca-2"]


class JobView(discord.ui.View):
    """A persistent view: timeout=None and a fixed custom_id, registered in setup_hook."""

    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.danger, custom_id="job:cancel")
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.edit_message(content=f"cancelled by {interaction.user.id}", view=None)


@app_commands.command(description="Start a job")
@app_commands.describe(dataset="dataset id", r="LoRA rank", lr="learning rate", dry="dry run", data="a file")
async def train(
    interaction: discord.Interaction, dataset: str, r: int, lr: float, dry: bool, data: discord.Attachment
) -> None:
    bot: TinyBot = interaction.client  # type: ignore[assignment]
    await interaction.response.defer(thinking=True)
    raw = await data.read()
    bot.seen.append(
        {"dataset": dataset, "r": r, "lr": lr, "dry": dry, "file": (data.filename, raw, data.size)}
    )
    bot.last_interaction = interaction
    channel = interaction.channel
    status = await channel.send(f"job for {dataset}: queued", view=JobView())
    await status.edit(content=f"job for {dataset}: running r={r}")
    await channel.send(
        f"{interaction.user.mention} finished", file=discord.File(io.BytesIO(raw[::-1]), "chart.png")
    )
    await interaction.followup.send(f"status message {status.id}")


@app_commands.command(description="Only you can see this")
async def secret(interaction: discord.Interaction) -> None:
    await interaction.response.send_message(
        "for your eyes", ephemeral=True, file=discord.File(io.BytesIO(b"note"), "note.txt")
    )


@app_commands.command(description="Describe a member")
async def whois(interaction: discord.Interaction, member: discord.Member, role: discord.Role) -> None:
    roles = ",".join(r.name for r in member.roles)
    allowed = interaction.permissions.administrator
    await interaction.response.send_message(f"{member.display_name}:{roles}:{role.name}:{allowed}")


@app_commands.command(description="Ask an adapter")
async def ask(interaction: discord.Interaction, adapter: str, prompt: str) -> None:
    await interaction.response.send_message(f"{adapter}: {prompt}")


@ask.autocomplete("adapter")
async def ask_adapter(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    return [app_commands.Choice(name=a, value=a) for a in ADAPTERS if a.startswith(current)]


job = app_commands.Group(name="job", description="Jobs")


@job.command(description="Show a job")
async def status(interaction: discord.Interaction, job_id: int) -> None:
    await interaction.response.send_message(f"job {job_id}: running", ephemeral=True)


class TinyBot(commands.Bot):
    def __init__(self, guild_id: int | None = None) -> None:
        # guild_ready_timeout: discord.py waits this long after GUILD_CREATE before on_ready (default 2 s).
        super().__init__(
            command_prefix=commands.when_mentioned, intents=discord.Intents.default(), guild_ready_timeout=0.1
        )
        self.guild_id = guild_id
        self.seen: list[dict] = []
        self.last_interaction: discord.Interaction | None = None
        for command in (train, secret, ask, whois, job):
            self.tree.add_command(command)

    async def setup_hook(self) -> None:
        self.add_view(JobView())
        if self.guild_id is None:
            await self.tree.sync()
        else:
            guild = discord.Object(self.guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)


async def _train(fake: FakeDiscord, **extra):
    options = {"dataset": "mlabonne/guanaco-llama2-1k", "r": 16, "lr": 2e-4, "dry": True, **extra}
    call = await fake.slash(
        "train", options, attachments=[("rows.jsonl", b'{"text": "hi"}\n', "application/json")]
    )
    await call.wait_followups(1)
    return call


async def test_slash_command_defers_reads_attachment_sends_edits_and_files(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    alice = fake.add_member(4242, "alice", roles=["finetuner"])
    async with fake.running(TinyBot()) as bot:
        names = {c["name"]: c for c in fake.commands()}
        assert set(names) == {"train", "secret", "ask", "whois", "job"}
        assert [o["type"] for o in names["train"]["options"]] == [3, 4, 10, 5, 11]

        call = await fake.slash(
            "train",
            {"dataset": "d", "r": 8, "lr": 0.001, "dry": False},
            user=alice,
            attachments=[("rows.jsonl", b"row-bytes", "application/json")],
        )
        assert (await call.wait_response())["type"] == 5  # deferred, thinking
        followup = (await call.wait_followups(1))[0]
        assert followup is call.original and not followup.loading  # the followup filled the deferral
        assert followup.content.startswith("status message ")

        seen = bot.seen[0]
        assert (seen["dataset"], seen["r"], seen["lr"], seen["dry"]) == ("d", 8, 0.001, False)
        assert seen["file"] == ("rows.jsonl", b"row-bytes", 9)

        status, chart = fake.channel_messages()[-2:]
        assert status.content == "job for d: running r=8"
        assert [v.content for v in status.versions] == ["job for d: queued", "job for d: running r=8"]
        assert fake.edits_of(status.id)[0].content == "job for d: running r=8"
        assert status.custom_ids == ["job:cancel"]
        assert chart.files == {"chart.png": b"setyb-wor"}
        assert chart.attachments[0].content_type == "image/png"
        assert fake.messages_mentioning(alice.id) == [chart]
        assert bot.last_interaction is not None and bot.last_interaction.user.id == alice.id
        assert [r.name for r in bot.last_interaction.user.roles] == ["@everyone", "finetuner"]
    assert fake.unknown_routes == []


async def test_ephemeral_reply_and_autocomplete(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with fake.running(TinyBot()):
        call = await fake.slash("secret")
        response = await call.wait_response()
        assert response["type"] == 4 and call.ephemeral
        assert call.original is not None and call.original.ephemeral
        assert call.original not in fake.channel_messages()
        assert call.original.files == {"note.txt": b"note"}

        assert await fake.autocomplete("ask", {"prompt": "hi"}, focused="adapter") == [
            {"name": "guanaco-12", "value": "guanaco-12"},
            {"name": "guanaco-13", "value": "guanaco-13"},
            {"name": "alpaca-2", "value": "alpaca-2"},
        ]
        choices = await fake.autocomplete("ask", {"adapter": "gua"}, focused="adapter")
        assert [c["value"] for c in choices] == ["guanaco-12", "guanaco-13"]

        sub = await fake.slash("job", {"job_id": 3}, subcommand="status")
        assert (await sub.wait_response())["data"]["content"] == "job 3: running"
        with pytest.raises(TypeError):
            await fake.slash("job", {"job_id": "3"}, subcommand="status")

        await fake.redeliver(call)  # the same interaction again: the second acknowledgement is refused
        await fake.wait_for(lambda: [r for r in fake.requests if r.status == 400])
        assert len(call.responses) == 1

        with pytest.raises(ValueError, match="no option"):
            await fake.slash("ask", {"adapter": "x", "prompt": "y", "nope": 1})
        with pytest.raises(LookupError):
            await fake.slash("missing")


async def test_button_click_updates_the_message(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    admin = fake.add_member(777, "root", admin=True)
    async with fake.running(TinyBot()):
        await _train(fake)
        status = next(m for m in fake.channel_messages() if m.custom_ids)
        click = await fake.click(status, "job:cancel", user=admin)
        assert (await click.wait_response())["type"] == 7
        assert status.content == "cancelled by 777" and status.components == []
        with pytest.raises(ValueError, match="no component"):
            await fake.click(status, "job:cancel")


async def test_rate_limited_edit_is_retried_and_lands(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with fake.running(TinyBot()) as bot:
        await _train(fake)
        status = next(m for m in fake.channel_messages() if m.custom_ids)
        fake.rate_limit_edits(fake.channel_id, count=2, retry_after=0.05, code=30046)
        partial = bot.get_channel(fake.channel_id).get_partial_message(status.id)
        await asyncio.wait_for(partial.edit(content="step 10/100"), 5)
        assert [s for _, _, s in fake.faults.injected] == [429, 429]
        assert status.content == "step 10/100" and len(status.edits) == 2
        patches = fake.requests_to("PATCH", rf"/channels/\d+/messages/{status.id}")
        assert [r.status for r in patches] == [200, 429, 429, 200]


async def test_edit_budget_throttles_without_losing_edits(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with fake.running(TinyBot()) as bot:
        message = await bot.get_channel(fake.channel_id).send("0")
        fake.set_edit_budget(2, per=0.3)
        started = asyncio.get_running_loop().time()
        for step in range(1, 5):
            await message.edit(content=str(step))
        assert asyncio.get_running_loop().time() - started >= 0.25
        assert [v.content for v in fake.message(message.id).versions] == ["0", "1", "2", "3", "4"]


async def test_expired_interaction_token_fails_followups_with_50027(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with fake.running(TinyBot()) as bot:
        call = await _train(fake)
        # Until expiry the token edits the original response and followups.
        await bot.last_interaction.edit_original_response(content="edited")
        assert call.original.content == "edited"
        extra = await bot.last_interaction.followup.send("extra", wait=True)
        await extra.edit(content="extra, edited")
        assert call.followups[-1].content == "extra, edited"
        await extra.delete()
        assert call.followups[-1].deleted

        fake.expire_interaction_tokens()
        with pytest.raises(discord.HTTPException) as failure:
            await bot.last_interaction.followup.send("too late")
        assert failure.value.status == 401 and failure.value.code == 50027
        with pytest.raises(discord.HTTPException) as failure:
            await bot.last_interaction.edit_original_response(content="too late")
        assert failure.value.code == 50027
        # The bot token still works: long jobs post through the channel.
        sent = await bot.get_channel(fake.channel_id).send("still here")
        assert fake.message(sent.id).content == "still here"


async def test_server_errors_can_be_injected(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with fake.running(TinyBot()) as bot:
        fake.fail_route("POST", r"/channels/\d+/messages", status=503)
        with pytest.raises(discord.DiscordServerError):
            await bot.get_channel(fake.channel_id).send("x")
        await bot.get_channel(fake.channel_id).send("y")
        assert [m.content for m in fake.channel_messages()] == ["y"]

        with pytest.raises(discord.NotFound):  # an unknown route answers 404 JSON and is recorded
            await bot.http.request(discord.http.Route("GET", "/stickers/{sticker_id}", sticker_id=1))
        assert [(r.method, r.path) for r in fake.unknown_routes] == [("GET", "/stickers/1")]


async def test_a_restarted_bot_reconnects_and_handles_old_buttons(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with fake.running(TinyBot()):
        await _train(fake)
    status = next(m for m in fake.channel_messages() if m.custom_ids)
    with pytest.raises(RuntimeError, match="no bot"):
        await fake.slash("secret")

    async with fake.running(TinyBot(guild_id=fake.guild_id)) as bot:
        assert len([s for s in fake.sessions if s.identify]) == 2
        assert {c["name"] for c in fake.commands(fake.guild_id)} == {"train", "secret", "ask", "whois", "job"}
        click = await fake.click(status, "job:cancel")
        assert (await click.wait_response())["type"] == 7
        assert status.content == f"cancelled by {fake.user.id}"
        await _train(fake)
        assert len(bot.seen) == 1
    assert len(fake.channel_messages()) == 6  # per job: the deferred reply, the status, the chart


async def test_user_and_role_options_resolve_to_members_and_roles(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    bob = fake.add_member(5150, "bob", roles=["finetuner"])
    root = fake.add_member(6160, "root", admin=True)
    async with fake.running(TinyBot()):
        call = await fake.slash("whois", {"member": bob, "role": "finetuner"}, user=root)
        await call.wait_response()
        assert call.original.content == "bob:@everyone,finetuner:finetuner:True"
        call = await fake.slash("whois", {"member": root.id, "role": "Admin"})
        await call.wait_response()
        assert call.original.content == "root:@everyone,Admin:Admin:False"


async def test_direct_messages_and_late_acknowledgement(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with fake.running(TinyBot()) as bot:
        user = await bot.fetch_user(fake.user.id)
        sent = await user.send("your job finished")
        dm = fake.message(sent.id)
        assert dm.guild_id is None and fake.channels[dm.channel_id].recipient.id == fake.user.id

        fake.ack_deadline = 0.0  # every acknowledgement is now too late: 10062 Unknown interaction
        call = await fake.slash("secret")
        await fake.wait_for(lambda: fake.requests_to("POST", rf"/interactions/{call.id}/.+/callback"))
        assert fake.requests_to("POST", rf"/interactions/{call.id}/.+/callback")[0].status == 404
        assert call.responses == []


async def test_dropped_gateway_resumes(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with fake.running(TinyBot()):
        await fake.drop_gateway()
        resumed = await fake.wait_for(
            lambda: len(fake.sessions) == 2 and fake.sessions[1].ready and fake.sessions[1]
        )
        assert [f["op"] for f in resumed.received if f["op"] in (2, 6)] == [6]
        assert resumed.session_id == fake.sessions[0].session_id
        call = await fake.slash("ask", {"adapter": "a", "prompt": "b"})
        assert (await call.wait_response())["data"]["content"] == "a: b"


async def test_a_repeated_nonce_returns_the_first_message_within_the_window(
    fake_discord: FakeDiscord,
) -> None:
    fake = fake_discord
    async with fake.running(TinyBot()) as bot:
        channel = bot.get_channel(fake.channel_id)
        first = await channel.send("ping", nonce="a1b2c3")  # discord.py sets enforce_nonce
        again = await channel.send("ping, again", nonce="a1b2c3")
        assert again.id == first.id and first.nonce == "a1b2c3"
        assert [m.content for m in fake.channel_messages()] == ["ping"]
        [listed] = [m async for m in channel.history(limit=5)]
        assert listed.id == first.id and listed.nonce is None  # the history does not return nonces

        fake.nonce_window_s = 0.0  # Discord forgot it
        later = await channel.send("ping, later", nonce="a1b2c3")
        assert later.id != first.id
        assert [m.content for m in fake.channel_messages()] == ["ping", "ping, later"]


async def test_a_cloudflare_429_raises_with_its_retry_after(fake_discord: FakeDiscord) -> None:
    fake = fake_discord
    async with fake.running(TinyBot()) as bot:
        fake.fail_route("POST", r"/channels/\d+/messages", status=429, retry_after=1.5)
        with pytest.raises(discord.HTTPException) as caught:
            await bot.get_channel(fake.channel_id).send("x")
        assert caught.value.status == 429 and caught.value.response.headers["Retry-After"] == "2"
        fake.fail_route("POST", r"/channels/\d+/messages", status=403, count=5, code=50013)
        with pytest.raises(discord.Forbidden) as caught:
            await bot.get_channel(fake.channel_id).send("x")
        assert (caught.value.code, caught.value.text) == (50013, "Missing Permissions")
        fake.faults.clear_route_faults()
        await bot.get_channel(fake.channel_id).send("y")
        assert [m.content for m in fake.channel_messages()] == ["y"]
