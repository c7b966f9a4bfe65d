"""Logging for the bot process (a rotating file under the data directory, and stderr) and for the CLI
(stderr), each set up once, and the one masking rule that keeps secrets out of every line they write.

Secrets never reach a log line: the redacting formatter masks the finished line (message, arguments,
exception text and stack), so whatever a library puts in a record (discord.py logs whole gateway events,
interaction tokens included, at debug level) is masked on every handler we install.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

LOG_FILE_NAME = "qlora-bot.log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_URL_TOKENS = re.compile(r"(/(?:interactions/\d+|webhooks/\d+)/)[A-Za-z0-9_.\-]+")
_AUTH_HEADER = re.compile(r"((?:Bot|Bearer)\s+)[A-Za-z0-9_.\-~+/=]{20,}")
# A value under a secret-looking key, in the shapes it reaches a log: a dict's repr ('token': '...'),
# JSON ("token": "..."), and key=value (query strings, repr of objects). Keys such as "tokens_per_s" or
# "max_tokens" do not end in one of the words, so they are left alone.
_SECRET_KEY = r"[A-Za-z0-9_\-]*(?:token|secret|password|api_key|apikey)"
_QUOTED_SECRET = re.compile(r"""(?i)(['"]""" + _SECRET_KEY + r"""['"]\s*:\s*)(['"])(?:\\.|(?!\2).)*\2""")
_ASSIGNED_SECRET = re.compile(r"(?i)(\b" + _SECRET_KEY + r"=)(?!\[token\])[^\s&,;'\")\]}]+")
_HF_TOKEN_SHAPE = re.compile(r"hf_[A-Za-z0-9]{8,}")
# A URL's user:password@ and its query and fragment (signed download links carry credentials there), e.g.
# a dataset URL inside a gateway event that discord.py logs at debug level.
_URL_USERINFO = re.compile(r"(?i)\b(https?://)[^\s/?#@'\"]+@")
_URL_QUERY = re.compile(r"(?i)(\bhttps?://[^\s?#'\"]+)[?#][^\s'\"]*")
MIN_SECRET_LENGTH = 8  # a shorter "secret" would mask innocent text all over the log


def redact_secrets(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with the given secrets, Hub-token-shaped strings, tokens in Discord URLs and Authorization
    headers, values under token-like keys, and URLs' credentials, queries and fragments masked. The one
    masking rule for log lines and for messages we store or show."""
    text = _URL_TOKENS.sub(r"\1[token]", text)
    text = _AUTH_HEADER.sub(r"\1[token]", text)
    text = _QUOTED_SECRET.sub(r"\1\2[token]\2", text)
    text = _ASSIGNED_SECRET.sub(r"\1[token]", text)
    text = _URL_USERINFO.sub(r"\1[secret]@", text)
    text = _URL_QUERY.sub(r"\1?[secret]", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[secret]")
    return _HF_TOKEN_SHAPE.sub("[secret]", text)


class RedactSecrets(logging.Formatter):
    """A formatter whose every finished line has passed through redact_secrets. Masking the output,
    not record.msg, is what covers a record's arguments, its exception text and its stack too."""

    def __init__(self, secrets: Iterable[str | None], fmt: str = LOG_FORMAT) -> None:
        super().__init__(fmt)
        self.secrets = [secret for secret in secrets if secret and len(secret) >= MIN_SECRET_LENGTH]

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.exc_text:
            # logging caches the formatted traceback on the record for the next handler: mask it there too.
            record.exc_text = redact_secrets(record.exc_text, self.secrets)
        return redact_secrets(text, self.secrets)


def setup_logging(logs_dir: Path, secrets: Iterable[str | None], verbose: bool = False) -> Path:
    """Configure the root logger once for the bot process; returns the log file's path."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    path = logs_dir / LOG_FILE_NAME
    formatter = RedactSecrets(secrets)
    file_handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=10 << 20, backupCount=5, encoding="utf-8"
    )
    console = logging.StreamHandler()
    for handler in (file_handler, console):
        handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(file_handler)
    root.addHandler(console)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    console.setLevel(logging.DEBUG if verbose else logging.WARNING)
    return path


class _CurrentStderr(logging.StreamHandler):
    """Writes to sys.stderr as it is when the record comes (rich and test captures replace it)."""

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def setup_cli_logging(secrets: Iterable[str | None], verbose: bool = False) -> None:
    """The command line's logging: warnings (with -v everything) to stderr, masked like the bot's."""
    root = logging.getLogger()
    for old in [handler for handler in root.handlers if isinstance(handler, _CurrentStderr)]:
        root.removeHandler(old)  # a second main() in one process (tests) replaces, never doubles, it
    handler = _CurrentStderr()
    handler.setFormatter(RedactSecrets(secrets))
    handler.setLevel(logging.DEBUG if verbose else logging.WARNING)
    root.addHandler(handler)
    if verbose:
        root.setLevel(logging.DEBUG)
