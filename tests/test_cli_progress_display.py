"""What the terminal shows while `qlora-bot train` runs: the live line laid out for its width, the queue
line while a job waits behind another, and each final figure once. The terminal tests run the real CLI on
the tiny model in a pseudo-terminal of 80 columns (pexpect) and read the screen a VT100 emulator (pyte)
draws from the bytes; the emulator is wider than the pty, so a line the CLI made too long shows as too
long instead of wrapping."""

from __future__ import annotations

import io
import re
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pexpect
import pyte
import pytest
from rich.console import Console

from bot.cli.progress import TerminalProgress
from bot.cli.progress_line import SEPARATOR, fit, progress_fields, progress_line, waiting_line
from bot.cli.train import final_figures
from bot.jobs.summaries import about, clock, compact_count, in_line, waiting_for
from protocol.events import Progress, Started
from tests.worker_helpers import train_args, worker_env, write_chat_dataset

COLUMNS = 80
EMULATOR_COLUMNS, EMULATOR_ROWS = 200, 400
# The live line while training, whole tokens only: "step 3/6  loss 5.8825  5.8k tok/s  ETA 0:47".
LIVE = re.compile(
    r"(?:^|\s)step (\d+)/(\d+)  loss \d+\.\d{4}  \d+(?:\.\d)?[kMG]? tok/s  ETA \d+:\d{2}(?:\s|$)"
)

EVENT = Progress(
    step=1234, total_steps=5000, epoch=1.5, tokens_seen=10**6, tokens_per_s=12345.6, eta_s=245, loss=1.23456
)


# --- the line, as a pure function


@pytest.mark.parametrize("width", [60, 80, 120])
def test_the_progress_line_fits_its_width_with_whole_fields(width):
    line = progress_line(EVENT, width, label="Saving adapter")
    assert len(line) <= width
    whole = set(progress_fields(EVENT).values()) | {"Saving adapter"}
    for part in line.split(SEPARATOR):
        assert part in whole or set(part) <= {"━", "─"}, part
    for field in ("step 1234/5000", "loss 1.2346", "12.3k tok/s", "ETA 4:05"):
        assert field in line.split(SEPARATOR)


def test_the_bar_and_the_extras_come_and_go_with_the_width():
    assert "━" not in progress_line(EVENT, 60)
    assert "━" in progress_line(EVENT, 80)
    wide = progress_line(EVENT, 120, label="Saving adapter")
    assert wide.startswith("Saving adapter  ━") and "epoch 1.50" in wide
    assert progress_line(EVENT, 30) == "step 1234/5000  loss 1.2346"  # the least important go first


def test_no_width_ever_cuts_a_field():
    whole = set(progress_fields(EVENT).values()) | {"Training"}
    for width in range(8, 140):
        line = progress_line(EVENT, width, label="Training")
        assert len(line) <= width or line == ""
        assert all(part in whole or set(part) <= {"━", "─"} for part in line.split(SEPARATOR) if part)


def test_fit_skips_what_does_not_fit_whole_and_keeps_the_given_order():
    assert fit([(2, "ccc"), (0, "aaaa"), (1, "bbbbbbbbbb")], 10) == [0, 1]  # "ccc  aaaa" is 9 wide


def test_compact_numbers():
    assert [compact_count(v) for v in (850, 5805, 12345.6, 123456, 1.23e6)] == [
        "850",
        "5.8k",
        "12.3k",
        "123k",
        "1.2M",
    ]
    assert [clock(s) for s in (0, 5, 245, 3723, None)] == ["0:00", "0:05", "4:05", "1:02:03", "?"]
    assert [about(s) for s in (20, 360, 4800, 7200)] == [
        "under a minute",
        "about 6 min",
        "about 1 h 20 min",
        "about 2 h",
    ]
    assert [in_line(p) for p in (1, 2, 3, 4, 11, 12, 13, 21, 22)] == [
        "next in line",
        "2nd in line",
        "3rd in line",
        "4th in line",
        "11th in line",
        "12th in line",
        "13th in line",
        "21st in line",
        "22nd in line",
    ]


def test_the_waiting_line_names_the_slot_and_drops_the_reason_first():
    assert waiting_for("CPU", 1, [3], None) == "waiting for the CPU slot (job 3 is running)"
    assert waiting_for("GPU", 4, [3, 5, 6, 7], None) == "waiting for a free GPU slot"
    assert "at most 1 running per person" in waiting_for("GPU", 2, [3], 1)
    line = waiting_line("2nd in line", "about 6 min", "waiting for a free CPU slot", 80)
    assert line == "queued: 2nd in line, about 6 min, waiting for a free CPU slot"
    assert waiting_line("2nd in line", "about 6 min", "waiting for a free CPU slot", 40) == (
        "queued: 2nd in line, about 6 min"
    )
    assert waiting_line("next in line", None, "starting", 80) == "queued: next in line, starting"


def test_the_summary_states_each_final_figure_once():
    metrics = {
        "steps": 20,
        "tokens": 16070,
        "final_loss": 5.7666,
        "train_runtime_s": 2.0,
        "total_runtime_s": 9,
    }
    assert final_figures(metrics) == "20 steps, 16,070 tokens at 8.0k tok/s, final loss 5.7666, in 0:09"


# --- the real CLI in a pseudo-terminal


class Terminal:
    """The CLI under a pty of COLUMNS columns, its output fed to an emulator as it arrives."""

    def __init__(self, args: list[str], home: Path) -> None:
        env = {**worker_env(), "QLORA_BOT_HOME": str(home), "COLUMNS": str(COLUMNS), "LINES": "40"}
        env["TERM"] = "xterm-256color"
        self.screen = pyte.Screen(EMULATOR_COLUMNS, EMULATOR_ROWS)
        self.stream = pyte.Stream(self.screen)
        self.live_lines: list[str] = []  # the cursor's row after each read: what the live line showed
        self.child = pexpect.spawn(
            sys.executable, ["-m", "bot.cli", *args], env=env, dimensions=(40, COLUMNS), encoding="utf-8"
        )

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display if line.strip()]

    def read(self, timeout: float) -> bool:
        """Feed what arrives within `timeout`; False once the process closed its output."""
        try:
            self.stream.feed(self.child.read_nonblocking(65536, timeout=timeout))
        except pexpect.TIMEOUT:
            return True
        except pexpect.EOF:
            return False
        self.live_lines.append(self.screen.display[self.screen.cursor.y].rstrip())
        return True

    def wait_for(self, pattern: re.Pattern, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in self.lines() if pattern.search(line)), None)
            if found is not None:
                return found
            if not self.read(1.0):
                break
        raise AssertionError(f"{pattern.pattern!r} never shown; screen:\n" + "\n".join(self.lines()))

    def finish(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.read(1.0):
            assert time.monotonic() < deadline, "\n".join(self.lines())
        self.child.close()
        return self.child.exitstatus


@pytest.fixture
def short_home():
    """A data directory with a short path, so the folder and checkpoint lines fit 80 columns too."""
    with tempfile.TemporaryDirectory(prefix="qb-", dir="/tmp") as folder:
        home = Path(folder)
        (home / "cpu.toml").write_text("[gpus]\ndevices = []\ndetect = false\n")  # one CPU slot, always
        yield home


def test_train_at_80_columns_shows_whole_fields_and_each_final_figure_once(tiny_model_dir, short_home):
    dataset = write_chat_dataset(short_home / "chat.jsonl", rows=16)
    args = train_args(tiny_model_dir, dataset, steps=6, checkpoint_steps=6)
    terminal = Terminal([*args, "--config", str(short_home / "cpu.toml")], short_home)
    assert terminal.finish(240) == 0, "\n".join(terminal.lines())

    screen = terminal.lines()
    assert all(len(line) <= COLUMNS for line in screen), [line for line in screen if len(line) > COLUMNS]
    assert all(len(line) <= COLUMNS for line in terminal.live_lines)
    shown = [LIVE.search(line) for line in terminal.live_lines]
    steps = {(int(m[1]), int(m[2])) for m in shown if m}
    assert (6, 6) in steps and len(steps) >= 2, terminal.live_lines  # the line moved, and reached the end

    done = next(line for line in screen if line.startswith("done:"))
    final_loss = re.search(r"final loss (\d+\.\d{4})", done)[1]
    text = "\n".join(screen)
    assert re.fullmatch(
        r"done: 6 steps, [\d,]+ tokens at \d+(\.\d)?[kM]? tok/s, final loss \S+, in \d+:\d\d", done
    )
    for figure in (final_loss, "tok/s", "6 steps"):
        assert text.count(figure) == 1, (figure, text)
    assert "ETA" not in text and "step 6/6" not in text  # the live line left nothing behind
    assert screen[-2].startswith("adapter: ")  # then the name `ask` takes
    assert re.fullmatch(
        r'ask it: qlora-bot ask --adapter \S+-\d+ "your prompt" \(or --adapter \d+\)', screen[-1]
    )


def test_a_second_train_shows_its_place_in_the_queue_and_the_cpu_slot(tiny_model_dir, short_home):
    dataset = write_chat_dataset(short_home / "chat.jsonl", rows=16)
    config = ["--config", str(short_home / "cpu.toml")]
    first = Terminal(
        [*train_args(tiny_model_dir, dataset, steps=200, checkpoint_steps=100), *config], short_home
    )
    second = None
    try:
        first.wait_for(re.compile(r"worker started"), 120)
        second = Terminal(
            [*train_args(tiny_model_dir, dataset, steps=2, checkpoint_steps=2), *config], short_home
        )
        queued = second.wait_for(re.compile(r"^queued: "), 120)
        assert re.fullmatch(
            r"queued: next in line, (about \d+ min|under a minute), "
            r"waiting for the CPU slot \(job 1 is running\)",
            queued,
        ), queued
        assert "GPU" not in "\n".join(second.lines())
        assert all(len(line) <= COLUMNS for line in second.lines())
    finally:
        for terminal in (second, first):
            if terminal is not None and terminal.child.isalive():
                terminal.child.kill(2)  # Ctrl-C: cancels the job (at a checkpoint when it runs)
        for terminal in (second, first):
            if terminal is not None:
                terminal.finish(120)


def test_a_log_gets_one_queue_line_per_change_of_place_and_none_for_a_job_about_to_start():
    out = io.StringIO()
    display = TerminalProgress(Console(file=out, width=80), plain_interval_s=0)
    display.state(SimpleNamespace(state="queued", attempt=1, resume_point=None))
    display.waiting("next in line", None, "starting")
    display.waiting("2nd in line", "about 6 min", "waiting for the CPU slot (job 1 is running)")
    display.waiting("2nd in line", "about 5 min", "waiting for the CPU slot (job 1 is running)")
    display.waiting("next in line", "about 2 min", "waiting for the CPU slot (job 1 is running)")
    assert out.getvalue().splitlines() == [
        "queued: 2nd in line, about 6 min, waiting for the CPU slot (job 1 is running)",
        "queued: next in line, about 2 min, waiting for the CPU slot (job 1 is running)",
    ]
    display.handle(Started(pid=1, attempt_resumes_from=None))
    display.waiting("next in line", "about 1 min", "waiting for the CPU slot (job 1 is running)")
    assert len(out.getvalue().splitlines()) == 3  # the started line; a late queue answer is dropped
