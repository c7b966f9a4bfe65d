"""Logging for the bot process, set up once: a rotating file under the data directory, and stderr.

Secrets never reach a log line: the token values from the environment, and interaction/webhook tokens
that discord.py puts in URLs at debug level, are masked by a filter on every handler.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
from collections.abc import Iterable
from pathlib import Path

LOG_FILE_NAME = "qlora-bot.log"
_URL_TOKENS = re.compile(r"(/(?:interactions/\d+|webhooks/\d+)/)[A-Za-z0-9_.\-]+")
_AUTH_HEADER = re.compile(r"(Bot\s+)[A-Za-z0-9_.\-]{20,}")
_HF_TOKEN_SHAPE = re.compile(r"hf_[A-Za-z0-9]{8,}")


def redact_secrets(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with the given secrets, Hub-token-shaped strings and tokens in Discord URLs and
    Authorization headers masked. The one masking rule for log lines and for messages we store or show."""
    text = _URL_TOKENS.sub(r"\1[token]", text)
    text = _AUTH_HEADER.sub(r"\1[token]", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[secret]")
    return _HF_TOKEN_SHAPE.sub("[secret]", text)


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: Iterable[str | None]) -> None:
        super().__init__()
        self.secrets = [secret for secret in secrets if secret and len(secret) >= 8]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_secrets(message, self.secrets)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def setup_logging(logs_dir: Path, secrets: Iterable[str | None], verbose: bool = False) -> Path:
    """Configure the root logger once; returns the log file's path."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    path = logs_dir / LOG_FILE_NAME
    redact = RedactSecrets(secrets)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    file_handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=10 << 20, backupCount=5, encoding="utf-8"
    )
    console = logging.StreamHandler()
    for handler in (file_handler, console):
        handler.setFormatter(formatter)
        handler.addFilter(redact)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(file_handler)
    root.addHandler(console)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    console.setLevel(logging.DEBUG if verbose else logging.WARNING)
    return path
