"""`python -m trainer.data.check SPEC.json DOWNLOAD_DIR [MEMORY_MB] --job-dir DIR`: the worker's data checks,
run at submit time so that a bad file is refused before it waits in the queue.

The same reading, format detection and row validation the training worker runs first (data_sources,
formats: stdlib only, no torch), in a short-lived process: the bot never parses a person's file itself.
The one answer is a DataChecked or Error line on stdout; the caller enforces the deadline.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

from protocol.errors import ProtocolError, UserError
from protocol.events import DataChecked, Error, encode_check_result
from protocol.job_spec import JobSpec, dataset_problems
from protocol.launch import parse_launch
from trainer.data.formats import to_examples
from trainer.data.memory_cap import memory_cap
from trainer.data.sources import read_records

# Named after the worker rather than this module, as its log lines have always been.
log = logging.getLogger("trainer.check_data")


def main(argv: list[str] | None = None) -> int:
    try:
        launch, args = parse_launch(sys.argv[1:] if argv is None else argv)
    except ProtocolError:
        args = []
    if len(args) not in (2, 3):
        usage = "usage: python -m trainer.data.check SPEC.json DIR [MB] --job-dir DIR"
        _answer(Error(kind="internal", message=usage))
        return 1
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    try:
        spec = JobSpec.from_json(Path(args[0]).read_text(encoding="utf-8"))
        if len(args) == 3:  # the same cap as the training worker's data stage (memory_cap.py)
            with memory_cap(int(args[2]), "reading the dataset", "limits.data_check_memory_mb"):
                result = check(spec, Path(args[1]), Path(launch.job_dir))
        else:
            result = check(spec, Path(args[1]), Path(launch.job_dir))
        _answer(result)
        return 0
    except UserError as error:
        _answer(Error(kind="user_error", message=error.message, hint=error.hint))
        return 2
    except ProtocolError as error:
        _answer(Error(kind="user_error", message=str(error), hint="fix the job spec"))
        return 2
    except Exception as error:
        log.error("data check failed:\n%s", traceback.format_exc())
        _answer(Error(kind="internal", message=f"the data check failed: {type(error).__name__}: {error}"))
        return 1


def check(spec: JobSpec, download_dir: Path, job_dir: Path) -> DataChecked:
    """Read every row and validate it as training will; raises UserError for what the person must fix.
    `job_dir`: the folder an upload is staged in (the job's own does not exist yet)."""
    problems = dataset_problems(spec.dataset)
    if problems:
        raise UserError("invalid dataset: " + "; ".join(problems), "change the dataset named above")
    records = read_records(spec.dataset, download_dir, spec.limits, job_dir=job_dir)
    data_format, examples = to_examples(records, spec.dataset.format)
    return DataChecked(origin=records.origin, format=data_format, rows=len(examples))


def _answer(result: DataChecked | Error) -> None:
    sys.stdout.write(encode_check_result(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
