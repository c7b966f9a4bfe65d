"""Hostile and malformed datasets against the worker's data stage: what each one gets, and how much memory
the data stage takes on the largest input the default caps allow. Writes nothing to the repository.

    python bench/hostile_data.py catalogue            # every crafted input: user error with a line / not
    python bench/hostile_data.py peak SHAPE [--size-mb N] [--memory-mb N]   # SHAPE: text, chats, parquet

`catalogue` runs the data check (read, detect, validate) in-process and, for chats, the tokenization with
a tiny local tokenizer; every input is small. `peak` builds one input at the default caps (1 GiB,
1,000,000 rows, 1 MiB a row; --size-mb for a smaller one) and runs the worker's data stage on it in a
child process under limits.data_stage_memory_mb (--memory-mb to override), printing the child's peak
RSS; at the defaults it may take up to that limit (8 GiB) of memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocol.errors import UserError  # noqa: E402
from protocol.job_spec import DatasetSpec, Limits  # noqa: E402

DEEP = "[" * 100_000 + "]" * 100_000
LLAMA2_LIKE = (  # raises on roles out of order, as Llama 2's and Mistral's templates do
    "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
)
NO_SYSTEM = (  # raises on a system message, as Gemma's does
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
)


def chat(*turns: tuple[str, str]) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]})


GOOD = chat(("user", "Hi"), ("assistant", "Hello!"))


def parquet(path: Path, table_of: str) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if table_of == "deep":
        kind: pa.DataType = pa.int8()
        value: object = 1
        for _ in range(40):
            kind, value = pa.list_(kind), [value]
        pq.write_table(pa.table({"text": ["a"], "deep": pa.array([value], type=kind)}), path)
    elif table_of == "big-row":
        pq.write_table(pa.table({"text": ["a", "x" * (2 << 20)]}), path)
    else:  # a dictionary bomb: 2,000 rows of one 100 KB entry (200 MB of rows in ~1 KB)
        column = pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(2000, dtype=np.int32)), pa.array(["x" * 100_000])
        )
        pq.write_table(pa.table({"text": column}), path, compression="zstd", store_schema=False)


# (name, file name, content or a Parquet kind, chat template to tokenize with or None)
CASES: list[tuple[str, str, str | bytes, str | None]] = [
    ("100k-deep JSON, .jsonl", "d.jsonl", GOOD + "\n" + DEEP + "\n", None),
    ("100k-deep JSON, .json", "d.json", "[\n" + GOOD + ",\n" + DEEP + "\n]", None),
    (
        "41-deep value in an extra column",
        "d.jsonl",
        '{"text": "a", "x": ' + "[" * 40 + "]" * 40 + "}\n",
        None,
    ),
    ("5,000-digit integer, .jsonl", "d.jsonl", GOOD + '\n{"text": "a", "n": ' + "9" * 5000 + "}\n", None),
    ("5,000-digit integer, .json", "d.json", '[\n{"text": "a", "n": ' + "9" * 5000 + "}\n]", None),
    ("lone surrogate in text", "d.jsonl", '{"text": "ok"}\n{"text": "smile \\ud83d"}\n', None),
    (
        "lone surrogate in a reply",
        "d.jsonl",
        GOOD + "\n" + chat(("user", "a"), ("assistant", "\\udc00")).replace("\\\\u", "\\u") + "\n",
        None,
    ),
    (
        "two user turns, default template",
        "d.jsonl",
        chat(("user", "a"), ("user", "b"), ("assistant", "c")),
        "",
    ),
    (
        "assistant first, default template",
        "d.jsonl",
        chat(("assistant", "a"), ("user", "b"), ("assistant", "c")),
        "",
    ),
    (
        "system in the middle",
        "d.jsonl",
        chat(("user", "a"), ("assistant", "b"), ("system", "c"), ("user", "d"), ("assistant", "e")),
        "",
    ),
    (
        "roles out of order, template that raises",
        "d.jsonl",
        chat(("user", "a"), ("user", "b"), ("assistant", "c")),
        LLAMA2_LIKE,
    ),
    (
        "system message, template that refuses it",
        "d.jsonl",
        chat(("system", "s"), ("user", "a"), ("assistant", "b")),
        NO_SYSTEM,
    ),
    ("empty user turn", "d.jsonl", chat(("user", "  "), ("assistant", "b")), ""),
    ("NUL escaped in JSON text", "d.jsonl", '{"text": "a\\u0000b"}\n', None),
    ("raw NUL in a .txt line", "d.txt", b"fine\nbad\x00line\n", None),
    ("raw NUL in a CSV field", "d.csv", b"prompt,completion\na,b\x00c\n", None),
    ("UTF-16 text file", "d.txt", "hello\nworld\n".encode("utf-16"), None),
    ("binary garbage as .jsonl", "d.jsonl", bytes(range(256)) * 4, None),
    ("2 MiB line in .jsonl", "d.jsonl", GOOD + '\n{"text": "' + "x" * (2 << 20) + '"}\n', None),
    ("2 MiB line in .txt", "d.txt", "ok\n" + "x" * (2 << 20) + "\n", None),
    ("CSV quote never closed", "d.csv", 'text\n"ok"\n"never closed\n' + "more\n" * 300_000, None),
    ("CSV field of 200 KiB (legitimate)", "d.csv", "text\n" + "y" * 200_000 + "\n", None),
    ("2 MiB row in a .json list", "d.json", '[{"text": "a"}, {"text": "' + "x" * (2 << 20) + '"}]', None),
    ("Parquet nested 41 deep", "d.parquet", "deep", None),
    ("Parquet 2 MiB row", "d.parquet", "big-row", None),
    ("Parquet dictionary bomb (200 MB of rows in ~1 KB)", "d.parquet", "bomb", ""),
]


def catalogue() -> int:
    from protocol.job_spec import JobSpec
    from tests.tiny_model import build_tokenizer
    from trainer.data.check import check

    tokenizer = build_tokenizer()
    clear = 0
    with tempfile.TemporaryDirectory(prefix="hostile-") as work:
        for name, file_name, content, template in CASES:
            path = Path(work) / file_name
            if file_name.endswith(".parquet"):
                parquet(path, str(content))
            elif isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
            spec = JobSpec(base_model="m", dataset=DatasetSpec(source=str(path), kind="file"))
            outcome = _outcome(spec, Path(work), tokenizer, template, check)
            clear += outcome.startswith(("user error, located", "user error, dataset-wide"))
            print(f"{name:52} {outcome}")
            path.unlink()
    print(
        f"\n{clear} of {len(CASES)} inputs got a clear user error (naming their line or row, or the dataset)"
    )
    return 0


def _outcome(spec, work: Path, tokenizer, template: str | None, check) -> str:
    from trainer.data.chat_template import DEFAULT_CHAT_TEMPLATE
    from trainer.data.formats import to_examples
    from trainer.data.sources import read_records
    from trainer.data.tokenization import tokenize_examples

    try:
        check(spec, work / "download", work)
        if template is not None:
            records = read_records(spec.dataset, work / "download", spec.limits)
            _, examples = to_examples(records, "auto")
            tokenize_examples(examples, tokenizer, template or DEFAULT_CHAT_TEMPLATE, 2048, records.where)
    except UserError as error:
        if error.message.startswith("every example"):  # a verdict on the whole dataset, not on one row
            return f"user error, dataset-wide: {error.message[:110]}"
        located = error.message.startswith(("d.", "row "))
        return f"user error, {'located' if located else 'NOT located'}: {error.message[:110]}"
    except Exception as error:  # what a person would see as an internal error
        return f"INTERNAL {type(error).__name__}: {str(error)[:90]}"
    return "accepted"


# ---------------------------------------------------------------------------------------------
# Peak memory at the default caps

STAGE = """
import json, sys, time
sys.path.insert(0, {root!r})
from trainer.data.sources import read_records
from protocol.errors import UserError
from trainer.data.formats import to_examples
from trainer.data.memory_cap import memory_cap
from protocol.job_spec import DatasetSpec, Limits
limits, started = Limits(data_stage_memory_mb={memory_mb}), time.monotonic()
try:
    with memory_cap(limits.data_stage_memory_mb, "reading the dataset", "limits.data_stage_memory_mb"):
        dataset = DatasetSpec(source={path!r}, kind="file")
        records = read_records(dataset, __import__("pathlib").Path({work!r}), limits)
        fmt, examples = to_examples(records, "auto")
    result = f"read {{len(examples):,}} rows, format {{fmt}}"
except UserError as error:
    result = f"user error: {{error.message}}"
print(json.dumps({{"result": result, "seconds": round(time.monotonic() - started, 1)}}))
"""


def build(shape: str, work: Path, fraction: float) -> Path:
    """About the largest input of this shape the default caps allow (1 GiB, 1,000,000 rows), or a
    `fraction` of it (rows of the same size)."""
    budget, rows = Limits().max_dataset_bytes - (1 << 20), Limits().max_rows
    rows = int(rows * fraction)
    if shape == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = work / "largest.parquet"
        per_row = budget // Limits().max_rows - 8
        texts = pa.array(["p" * per_row] * 10_000)
        writer = pq.ParquetWriter(path, pa.schema([("text", pa.string())]), compression="zstd")
        for _ in range(max(rows // 10_000, 1)):
            writer.write_table(pa.table({"text": texts}))
        writer.close()
        return path
    path = work / f"largest-{shape}.jsonl"
    if shape == "text":  # a million rows of ~1 KiB of text: the common shape
        line = json.dumps({"text": "w" * (budget // Limits().max_rows - 14)}) + "\n"
        count = rows
    else:  # chats of one-character turns: the most Python objects per byte of file
        turn = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
        line = json.dumps({"messages": turn * ((budget // Limits().max_rows) // 70)}) + "\n"
        count = min(rows, int(budget * fraction) // len(line))
    with path.open("w") as out:
        for _ in range(count // 1000):
            out.write(line * 1000)
    return path


def peak(shape: str, work: Path, size_mb: float, memory_mb: int) -> int:
    work.mkdir(parents=True, exist_ok=True)
    path = build(shape, work, min(size_mb * 2**20 / Limits().max_dataset_bytes, 1.0))
    print(f"{path.name}: {path.stat().st_size / 2**20:,.0f} MiB")
    script = STAGE.format(root=str(ROOT), path=str(path), work=str(work), memory_mb=memory_mb)
    answer = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(answer.stdout.strip() or answer.stderr[-2000:])
    print(f"data stage peak RSS: {peak_mib:,.0f} MiB (limit {memory_mb:,} MiB)")
    path.unlink()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("catalogue")
    measure = commands.add_parser("peak")
    measure.add_argument("shape", choices=("text", "chats", "parquet"))
    measure.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hostile-data")
    measure.add_argument("--size-mb", type=float, default=1024.0)
    measure.add_argument("--memory-mb", type=int, default=Limits().data_stage_memory_mb)
    args = parser.parse_args()
    started = time.monotonic()
    if args.command == "catalogue":
        code = catalogue()
    else:
        code = peak(args.shape, args.work, args.size_mb, args.memory_mb)
    print(f"({time.monotonic() - started:.0f} s)")
    return code


if __name__ == "__main__":
    sys.exit(main())
