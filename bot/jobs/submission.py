"""Where a submitted job's files go: an upload staged under a generated name until the job exists, then
moved into the job's folder (named after its id unless given) as the job is created, and where the data
check reads it meanwhile; plus a full disk found on the way, refused as such.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bot.config import Config
from bot.workers.data_check import DataChecker
from protocol.errors import UserError
from protocol.job_folder import upload_source
from protocol.job_spec import JobSpec
from storage.disk_space import is_disk_full
from storage.models import Job


@dataclass(frozen=True)
class Upload:
    """A dataset file a person attached: stored in the job folder under a generated name."""

    suffix: str  # ".jsonl", ".csv", ...: the parser is chosen by it
    data: bytes
    filename: str = ""  # the name the person gave it: every message about the data uses it


class Placement:
    """One submission's files. With an upload, the file is written aside first and moved into the job
    folder while the job is created, so no runner can start the job without it."""

    def __init__(self, jobs_dir: Path, job_dir: Path | None) -> None:
        # Absolute: the worker runs in its folder, so a relative data directory would resolve twice.
        self.jobs_dir = jobs_dir.absolute()
        self.job_dir = job_dir.absolute() if job_dir is not None else None  # `train --output`; else jobs/ID
        self.incoming: Path | None = None

    @contextlib.contextmanager
    def staged(self, upload: Upload | None) -> Iterator[None]:
        """Stage the upload for the block; whatever no job took is removed after it."""
        if upload is not None:
            staging = (self.jobs_dir / ".incoming").absolute()  # the data check runs in a folder of its own
            staging.mkdir(parents=True, exist_ok=True)
            # A generated name, never the one the person chose.
            self.incoming = staging / f"{uuid.uuid4().hex}{upload.suffix}"
            self.incoming.write_bytes(upload.data)
        try:
            yield
        finally:
            if self.incoming is not None:
                self.incoming.unlink(missing_ok=True)

    def stored(self, spec: JobSpec) -> JobSpec:
        """The spec as the job keeps it: an upload named by its place inside the job folder (the worker
        reads an upload from inside its own folder only)."""
        if self.incoming is None:
            return spec
        stored = upload_source(self.incoming.suffix)
        return spec.replace(dataset=dataclasses.replace(spec.dataset, source=stored))

    def as_checked(self, spec: JobSpec) -> tuple[JobSpec, Path | None]:
        """The spec as the data check reads it, and the folder an upload's source is relative to there:
        where it is staged, standing in for the job's folder (which does not exist yet)."""
        if self.incoming is None:
            return spec, None
        return spec.replace(
            dataset=dataclasses.replace(spec.dataset, source=self.incoming.name)
        ), self.incoming.parent

    def fill(self, folder: Path) -> None:
        """Make the new job's folder ready: runs inside the job-creating transaction (quick, no Store)."""
        if self.job_dir is None and folder.is_dir() and any(folder.iterdir()):
            # Backstop: ids are seeded above the job folders at open (storage/job_folders.py).
            raise UserError(
                f"job folder {folder} already exists and holds another job's files",
                "restart qlora-bot so job ids continue above the existing job folders",
            )
        if self.incoming is not None:
            stored = folder / upload_source(self.incoming.suffix)
            stored.parent.mkdir(parents=True, exist_ok=True)
            self.incoming.replace(stored)


@contextlib.contextmanager
def disk_full_refused(data_dir: Path) -> Iterator[None]:
    """A submission that meets a full disk (staging, the check's files, the database) is refused as
    that, not as a traceback."""
    try:
        yield
    except OSError as error:
        if not is_disk_full(error):
            raise
        raise UserError(f"disk full under {data_dir}", "free space there, then submit again") from None


def stored_upload(job: Job) -> Upload:
    """A job's upload as it was attached, for a new job (a resume) that needs its own copy."""
    path = Path(job.folder) / job.spec.dataset.source
    return Upload(suffix=path.suffix, data=path.read_bytes(), filename=job.spec.dataset.label or path.name)


def upload_label(upload: Upload) -> str:
    """The attachment's own file name, made safe to show: no folders, no control characters, short."""
    name = PurePosixPath(upload.filename.replace("\\", "/")).name
    name = "".join(char for char in name if char.isprintable()).strip()
    return (name or f"upload{upload.suffix}")[:100]


def default_data_checker(config: Config) -> DataChecker:
    return DataChecker(
        timeout_s=config.limits.data_check_timeout_s,
        memory_mb=config.limits.data_check_memory_mb,
        log_path=config.logs_dir() / "data-check.log",
        staging_dir=config.data_dir() / "checks",
        python=config.worker.python,
        cache_dir=config.cache_dir(),
    )
