"""The command line's surface: help with no command, --version, --config and -v on either side of the
command, a help line for everything, the defaults `train -h` shows, and errors that name the flag typed."""

from __future__ import annotations

import argparse
import importlib.metadata
from pathlib import Path

import pytest

from bot.cli import options
from bot.cli.main import build_parser, main
from bot.cli.train_flags import FIELD_FLAGS, SPEC_FLAGS, with_flags
from bot.config import JobDefaults


def subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action


def test_no_command_prints_the_help_and_exits_0(capsys):
    assert main([]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: qlora-bot") and "commands:" in out
    for command in ("train", "jobs", "job", "cancel", "ask", "push", "run"):
        assert f"\n    {command} " in out, command
    assert err == "" and "required" not in out


def test_version_comes_from_the_installed_package(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"qlora-bot {importlib.metadata.version('qlora-bot')}\n"

    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(options.metadata, "version", not_installed)
    assert "not installed" in options.package_version()


@pytest.mark.parametrize(
    ("argv", "config", "verbose"),
    [
        (["jobs"], None, False),
        (["--config", "c.toml", "jobs"], Path("c.toml"), False),
        (["jobs", "--config", "c.toml"], Path("c.toml"), False),
        (["-v", "--config", "a.toml", "jobs", "--all"], Path("a.toml"), True),
        (["jobs", "-v"], None, True),
        (["--verbose", "jobs", "--config", "c.toml"], Path("c.toml"), True),
        # Both: the one nearer the command's own options wins, as a later flag does everywhere.
        (["--config", "a.toml", "jobs", "--config", "b.toml"], Path("b.toml"), False),
        (["--config", "a.toml", "train", "--dataset", "d"], Path("a.toml"), False),
    ],
)
def test_config_and_verbose_on_either_side_of_the_command(argv, config, verbose):
    args = build_parser().parse_args(argv)
    assert (args.config, args.verbose) == (config, verbose)


@pytest.mark.parametrize("before", [True, False])
def test_the_config_given_before_the_command_is_the_one_read(tmp_path, data_home, capsys, before):
    config = tmp_path / "c.toml"
    config.write_text("[queue]\nmax_queued = 3\n")  # a wrong key: refused naming the file, so it was read
    argv = ["--config", str(config), "jobs"] if before else ["jobs", "--config", str(config)]
    assert main(argv) == 2
    assert f"{config}: queue.max_queued: unknown key" in capsys.readouterr().err


def test_every_command_and_argument_has_a_help_line():
    parser = build_parser()
    commands = subparsers(parser)
    listed = {choice.dest: choice.help for choice in commands._choices_actions}
    assert set(listed) == set(commands.choices)
    for name, sub in {"qlora-bot": parser, **commands.choices}.items():
        if sub is not parser:
            assert listed[name], f"{name} has no help line in the command list"
            assert sub.description or listed[name], name
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help and action.help.strip(), f"{name} {action.option_strings or action.dest}"


def help_of(command: str, flag: str) -> str:
    sub = subparsers(build_parser()).choices[command]
    [action] = [action for action in sub._actions if flag in action.option_strings]
    return action.help


def test_train_help_shows_each_default_from_the_shipped_config():
    defaults = JobDefaults()
    assert defaults.lora.r == 16 and defaults.training.learning_rate == 2e-4  # what the lines below show
    assert help_of("train", "--r") == "LoRA rank (default: config defaults.lora.r = 16)"
    assert help_of("train", "--lr").endswith("(default: config defaults.training.learning_rate = 0.0002)")
    assert help_of("train", "--batch-size").endswith(
        f"(default: config defaults.training.batch_size = {defaults.training.batch_size})"
    )
    assert help_of("train", "--alpha").endswith("(default: config defaults.lora.alpha, unset: 2 * r)")
    assert help_of("train", "--max-steps").endswith("defaults.training.max_steps, unset: --epochs)")
    assert "default: auto" in help_of("train", "--format") and "train" in help_of("train", "--split")
    for flag in SPEC_FLAGS:
        assert f"(default: config defaults.{flag.field}" in help_of("train", flag.flag), flag.flag


def test_every_spec_flag_sets_the_field_it_names():
    """The table the errors translate with is the one the request is built from."""
    from bot.cli.train import build_spec
    from bot.config import Config

    values = {"int": "3", "float": "0.25"}
    for flag in SPEC_FLAGS:
        if flag.type is None:
            continue
        argv = ["train", "--base-model", "m", "--dataset", "d", flag.flag, values[flag.type.__name__]]
        spec = build_spec(build_parser().parse_args(argv), Config())
        section, name = flag.field.split(".")
        assert getattr(getattr(spec, section), name) == flag.type(values[flag.type.__name__]), flag.flag


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--r", "0", "--r: must be an integer >= 1 (got 0)"),
        ("--lr", "-1", "--lr: must be a finite number > 0 (got -1.0)"),
        ("--max-length", "8", "--max-length: must be an integer >= 16 (got 8)"),
        ("--epochs", "0", "--epochs: must be a finite number > 0 (got 0.0)"),
        ("--batch-size", "0", "--batch-size: must be an integer >= 1 (got 0)"),
        ("--grad-accum", "-2", "--grad-accum: must be an integer >= 1 (got -2)"),
        ("--eval-fraction", "0.9", "--eval-fraction: must be a finite number in [0, 0.5] (got 0.9)"),
    ],
)
def test_an_out_of_range_flag_is_named_as_typed(flag, value, expected, data_home, capsys):
    argv = ["train", "--base-model", "x", "--dataset", "y.jsonl", flag, value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: {expected}\n" in err
    field = next(field for field, named in FIELD_FLAGS.items() if named == flag)
    assert field not in err  # never the config key the person did not type
    assert not (data_home / "jobs").exists()


@pytest.mark.parametrize(
    ("flag", "value", "message", "hint"),
    [
        ("--r", "1000", "--r 1000 is above this server's limit of 128 (limits.max_r)", "use --r 128 or less"),
        (
            "--max-length",
            "10000",
            "--max-length 10000 is above this server's limit of 8192 (limits.max_length)",
            "use --max-length 8192 or less",
        ),
        (
            "--epochs",
            "50",
            "--epochs 50 is above this server's limit of 10 (limits.max_epochs)",
            "use --epochs 10",
        ),
    ],
)
def test_a_capped_flag_is_named_as_typed(flag, value, message, hint, data_home, capsys):
    """The caps are checked by the service (bot/jobs/requests.py), which names the option as Discord does."""
    argv = ["train", "--base-model", "x", "--dataset", "y.jsonl", flag, value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: {message}\n" in err and f"hint: {hint}" in err


def test_flag_names_replace_only_whole_field_names():
    assert with_flags("invalid job settings: lora.r: bad; training.max_steps: bad") == (
        "invalid job settings: --r: bad; --max-steps: bad"
    )
    untouched = "limits.max_r: x; defaults.lora.r: y; /tmp/test_lora.r: z; (limits.max_length)"
    assert with_flags(untouched) == untouched
