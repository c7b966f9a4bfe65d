"""A stand-in for `python -m trainer.data.check` that accepts the fake trainer's datasets.

A "fake:..." source (or an upload whose first line is {"fake": "..."}) passes unless its options say
`bad_data=N` (refused as a broken line N, as the real check words it) or `check_s=S` (takes S seconds).
Every other dataset goes through the real check, so real files are checked for real.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from fake_trainer import options, source_of

from protocol.events import DataChecked, Error, encode_check_result
from protocol.job_spec import JobSpec
from protocol.launch import parse_launch
from trainer.data import check as check_data


def main() -> int:
    launch, (spec_file, *_) = parse_launch(sys.argv[1:])
    spec = JobSpec.from_json(Path(spec_file).read_text())
    try:
        opts = options(source_of(spec, launch))
    except (OSError, ValueError, KeyError, IndexError):
        return check_data.main()
    origin = spec.dataset.label or Path(spec.dataset.source).name
    time.sleep(float(opts.get("check_s", "0")))
    if "bad_data" in opts:
        result = Error(
            kind="user_error",
            message=f"{origin} line {opts['bad_data']}: not valid JSON (Expecting value at column 1)",
            hint="each non-blank line of a .jsonl file must be one complete JSON object",
        )
    else:
        result = DataChecked(origin=origin, format="text", rows=1)
    sys.stdout.write(encode_check_result(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
