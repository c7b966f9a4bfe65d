"""bot/config.py and the reference config.toml: in sync, strict, and never a home for secrets."""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from pathlib import Path

import pytest

from bot.config import Config, ConfigError, Secrets, load_config, range_of

REFERENCE = Path(__file__).resolve().parent.parent / "config.toml"


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    keys = []
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[field.name]):
            keys += _leaf_keys(hints[field.name], f"{prefix}{field.name}.")
        else:
            keys.append(prefix + field.name)
    return keys


def test_reference_file_loads_to_the_defaults():
    assert load_config(REFERENCE) == Config()


def test_every_setting_is_documented_in_the_reference():
    """Each key appears in its [section], set or commented out, right under a comment line."""
    lines = REFERENCE.read_text().splitlines()
    section = ""
    documented = set()
    for index, line in enumerate(lines):
        header = re.fullmatch(r"\[([\w.]+)\]", line.strip())
        if header:
            section = header.group(1) + "."
            continue
        setting = re.fullmatch(r"#?\s*(\w+)\s*=.*", line.strip())
        if setting and index > 0 and lines[index - 1].lstrip().startswith("#"):
            documented.add(section + setting.group(1))
    missing = [key for key in _leaf_keys(Config) if key not in documented]
    assert missing == []


def test_missing_default_file_means_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config() == Config()


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[defaults.training]\nlearning_rte = 0.1\n", r"defaults\.training\.learning_rte: unknown key"),
        ('[defaults.lora]\nr = "sixteen"\n', r"defaults\.lora\.r: expected an integer, got a string"),
        ("[worker]\ncancel_grace_s = true\n", r"worker\.cancel_grace_s: expected a number, got a boolean"),
        ("[nonsense]\n", r"nonsense: unknown key"),
        ("[defaults.training\n", r"not valid TOML"),
        ('[discord]\ntoken = "abc"\n', r"discord\.token: secrets are not read from the config file"),
        ('[hub]\nhf_token = "x"\n', r"hub\.hf_token: secrets are not read from the config file"),
        (
            '[paths]\ndata_dir = "hf_abcdefghijklmnopqrstuvwxyz012345"\n',
            r"paths\.data_dir: secrets are not read",
        ),
        (  # a token among harmless list items
            '[discord]\nadmin_roles = ["admins", "hf_abcdefghijklmnopqrstuvwxyz012345"]\n',
            r"discord\.admin_roles\[1\]: secrets are not read",
        ),
        (  # a Discord bot token inside a longer string
            '[paths]\ndata_dir = "/srv/Bot MTk4NjIyNDgzNDcxOTI1MjQ4.Cl2FMQ.abcdefghijklmnopqrstuvwxyz0/x"\n',
            r"paths\.data_dir: secrets are not read",
        ),
        (
            '[limits]\nbase_models = ["org/model?token=hf_abcdefghijklmnopqrstuvwxyz012345"]\n',
            r"limits\.base_models\[0\]: secrets are not read",
        ),
        (  # a token pasted as a (quoted) key: naming the key would echo it
            '[discord]\n"hf_abcdefghijklmnopqrstuvwxyz012345" = 1\n',
            r"discord \(a key shaped like a token\): secrets are not read",
        ),
    ],
)
def test_bad_files_are_refused_naming_the_key(tmp_path, toml, message):
    path = tmp_path / "config.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    assert "abcdefghijklmnopqrstuvwxyz" not in str(caught.value)  # a refused secret is never echoed


def test_int_is_accepted_where_a_number_is_expected(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[defaults.training]\nepochs = 3\n")
    assert load_config(path).defaults.training.epochs == 3.0


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("QLORA_BOT_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Config().data_dir() == tmp_path / "xdg" / "qlora-bot"
    configured = dataclasses.replace(
        Config(), paths=dataclasses.replace(Config().paths, data_dir=str(tmp_path / "cfg"))
    )
    assert configured.data_dir() == tmp_path / "cfg"
    monkeypatch.setenv("QLORA_BOT_HOME", str(tmp_path / "env"))
    assert configured.data_dir() == tmp_path / "env"
    assert configured.jobs_dir() == tmp_path / "env" / "jobs"


def test_secrets_come_from_the_environment_and_never_show():
    secrets = Secrets.from_env({"DISCORD_TOKEN": "discord-secret", "HF_TOKEN": "hf_secret", "OTHER": "x"})
    assert secrets.discord_token == "discord-secret"
    assert secrets.hf_token == "hf_secret"
    assert "secret" not in repr(secrets)
    assert Secrets.from_env({"HF_TOKEN": ""}).hf_token is None


# --- numeric ranges: generated from the dataclasses, so a new numeric key is covered without a new test


def _numeric_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, type, bool]]:
    """(dotted key, int or float, whether it is a list) for every numeric leaf, optional ones included."""
    found = []
    for field in dataclasses.fields(cls):
        annotation = typing.get_type_hints(cls)[field.name]
        if dataclasses.is_dataclass(annotation):
            found += _numeric_keys(annotation, f"{prefix}{field.name}.")
            continue
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        listed = origin is tuple
        kinds = {arg for arg in (args if origin is not None else (annotation,)) if arg in (int, float)}
        if kinds and annotation is not bool:
            found.append((prefix + field.name, kinds.pop(), listed))
    return found


NUMERIC_KEYS = _numeric_keys()


def test_the_numeric_keys_are_found():
    keys = {key for key, _, _ in NUMERIC_KEYS}
    assert {"queue.max_wall_time_h", "defaults.training.max_steps", "discord.guild_ids"} <= keys
    assert len(keys) > 50


def _toml(key: str, value: str, listed: bool) -> str:
    section, name = key.rsplit(".", 1)
    return f"[{section}]\n{name} = {f'[{value}]' if listed else value}\n"


def _candidates(allowed) -> list[float]:
    values = [math.nan, math.inf, -math.inf, -1, 0, 1e-9]
    if allowed.high is not None:
        values += [allowed.high, allowed.high + 1]
    return values


def _literal(value: float, kind: type) -> str:
    if not math.isfinite(value):
        return str(value)  # nan, inf, -inf: TOML's own spellings
    return str(int(value)) if kind is int and float(value).is_integer() else repr(float(value))


@pytest.mark.parametrize(("key", "kind", "listed"), NUMERIC_KEYS, ids=[key for key, _, _ in NUMERIC_KEYS])
def test_every_numeric_key_refuses_values_outside_its_documented_range(tmp_path, key, kind, listed):
    allowed = range_of(key)
    assert allowed is not None, f"{key} declares no range (bot.config.CONFIG_RANGES or protocol.SPEC_RANGES)"
    documented = _comment_above(key)
    assert f"must be {allowed.text}" in documented.lower(), f"config.toml does not document {key}'s range"
    path = tmp_path / "config.toml"
    where = f"{key}[0]" if listed else key
    for value in _candidates(allowed):
        literal = _literal(value, kind)
        if kind is int and math.isfinite(value) and not float(value).is_integer():
            continue  # not an integer at all: the type check refuses it (tested above)
        path.write_text(_toml(key, literal, listed))
        if math.isfinite(value) and allowed.contains(value):
            load_config(path)  # inside the range: accepted
            continue
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        message = str(caught.value)
        assert f"{where}: " in message, (literal, message)  # the dotted key is named
        if kind is float or math.isfinite(value):
            assert f"{where}: must be" in message and f"(got {literal})" in message, (literal, message)


def _comment_above(key: str) -> str:
    """The comment lines right above `key` in its [section] of the reference file."""
    section, name = key.rsplit(".", 1)
    lines = REFERENCE.read_text().splitlines()
    start = lines.index(f"[{section}]")
    for index in range(start + 1, len(lines)):
        if re.fullmatch(rf"#?\s*{name}\s*=.*", lines[index].strip()):
            block = []
            while lines[index - 1].lstrip().startswith("#") and not re.fullmatch(
                r"#\s*\w+\s*=.*", lines[index - 1].strip()
            ):
                index -= 1
                block.insert(0, lines[index])
            return " ".join(block)
    raise AssertionError(f"{key} is not in config.toml")


def test_non_finite_numbers_are_outside_every_range():
    for key, _, _ in NUMERIC_KEYS:
        allowed = range_of(key)
        assert allowed is not None and not any(allowed.contains(v) for v in (math.nan, math.inf, -math.inf))


def test_the_default_answer_length_must_fit_under_the_limit(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[serve]\ndefault_max_new_tokens = 2048\nmax_new_tokens_limit = 1024\n")
    with pytest.raises(ConfigError, match=r"serve\.default_max_new_tokens: must be at most"):
        load_config(path)


def test_every_problem_is_named_at_once(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[queue]\nmax_wall_time_h = nan\nmax_running_per_user = 0\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "queue.max_wall_time_h: must be a finite number > 0 (got nan)" in str(caught.value)
    assert "queue.max_running_per_user: must be an integer >= 1 (got 0)" in str(caught.value)
