"""bot/config.py and the reference config.toml: in sync, strict, and never a home for secrets."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from bot.config import Config, ConfigError, Secrets, load_config

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
