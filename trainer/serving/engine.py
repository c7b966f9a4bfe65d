"""Answer one batch of requests with one generate() call, streaming and finishing each row on its own.

Each request ends with one Finished per row (adapter, and base for compare) or exactly one Failed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from transformers import StoppingCriteriaList

from trainer.errors import UserError
from trainer.serve_protocol import Failed, Finished, Generate, Loading, ServeEvent, Stats, Token, Variant
from trainer.serving.models import BaseModel, Residency
from trainer.serving.prompts import prompt_ids, stop_ids
from trainer.serving.queue import Ask
from trainer.serving.streaming import IncrementalDecoder, RowState, RowStopper, RowStreamer, StopReason

log = logging.getLogger(__name__)

BASE_ROW = "__base__"  # peft's name for "no adapter" in generate(adapter_names=[...])
OOM_HINT = "ask for fewer new tokens or a shorter prompt, or ask again when fewer answers are running"


@dataclass(eq=False)
class _Plan:
    """A request ready to generate: its prompt, how to decode and stop it, and its adapter."""

    ask: Ask
    prompt: list[int]
    tokenizer: Any
    stops: frozenset[int]
    adapter: str | None  # peft adapter name; None asks the base model alone
    max_new_tokens: int  # the request's, within the model's context


@dataclass(eq=False)
class _Row:
    plan: _Plan
    variant: Variant
    adapter: str | None


class Engine:
    """Owns the models; `run_batch` is called by one thread only (generation is global model state).

    Timings are per row from the start of its batch's generate(): `seconds` spans the whole answer (so
    tokens_per_s is decoding speed) and `time_to_first_token_s` includes the prompt's prefill.
    """

    def __init__(
        self,
        emit: Callable[[ServeEvent], None],
        stopping: threading.Event,
        *,
        max_adapters: int = 8,
        max_adapter_mb: float = 2048.0,
    ) -> None:
        self.emit = emit
        self.stopping = stopping  # set at shutdown: running rows end as cancelled
        self.residency = Residency(max_adapters, max_adapter_mb)

    def run_batch(self, batch: list[Ask]) -> None:
        """Load what the batch needs, then answer it. A failure is reported per request, never raised."""
        asks = [ask for ask in batch if not self._ended_while_waiting(ask)]
        if not asks:
            return
        loaded: list[str] = []
        name = asks[0].request.base_model
        try:
            base = self.residency.base(name, partial(self._announce, asks, "base_model", name, loaded))
        except Exception as error:
            for ask in asks:
                self._fail(ask, error)
            return
        plans = []
        for ask in asks:
            try:
                plans.append(self._plan(base, ask, loaded))
            except Exception as error:
                self._fail(ask, error)
            if base.model is None:
                # A failed first adapter load drops the base (models.py says why): the failed request is
                # closed; the others start over on a fresh copy.
                self.run_batch([ask for ask in asks if not ask.closed])
                return
        evicted = self.residency.evict(base, keep={plan.adapter for plan in plans if plan.adapter})
        if loaded or evicted:
            self.emit(self.stats())
        plans = [plan for plan in plans if not self._ended_while_waiting(plan.ask)]
        if not plans:
            return
        try:
            self._generate(base, plans)
        except Exception as error:
            for plan in plans:
                if not plan.ask.closed:
                    self._fail(plan.ask, error)

    def stats(self) -> Stats:
        described = self.residency.describe()
        gpu = round(torch.cuda.memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None
        return Stats(
            base_models=described["base_models"],
            adapters=described["adapters"],
            gpu_mem_gib=gpu,
            extra={
                "adapter_mb": described["adapter_mb"],
                "max_adapters": self.residency.max_adapters,
                "max_adapter_mb": self.residency.max_adapter_bytes / 2**20,
            },
        )

    # --- preparing

    def _plan(self, base: BaseModel, ask: Ask, loaded: list[str]) -> _Plan:
        request = ask.request
        _check_settings(request)
        if request.adapter is None:
            tokenizer, template, adapter = base.tokenizer, base.template, None
        else:
            announce = partial(self._announce, [ask], "adapter", request.adapter, loaded)
            resident = self.residency.adapter(base, request.adapter, announce)
            tokenizer, template, adapter = resident.tokenizer, resident.template, resident.name
        ids = prompt_ids(tokenizer, template, request)
        # A raw prompt was trained without the template: only EOS (and the model's own end ids) stop it.
        stops = stop_ids(tokenizer, template if request.messages is not None else None, base.model_eos)
        limit = base.max_positions or len(ids) + request.max_new_tokens
        if len(ids) >= limit:
            raise UserError(
                f"the prompt has {len(ids)} tokens; the model reads at most {limit}", "shorten the prompt"
            )
        # An answer ends (stop_reason "length") where the model's context does, rather than being refused.
        max_new_tokens = min(request.max_new_tokens, limit - len(ids))
        return _Plan(ask, ids, tokenizer, stops, adapter, max_new_tokens)

    def _announce(self, asks: list[Ask], what: Any, name: str, loaded: list[str]) -> None:
        loaded.append(name)
        for ask in asks:
            self.emit(Loading(id=ask.id, what=what, name=name))

    # --- generating

    def _generate(self, base: BaseModel, plans: list[_Plan]) -> None:
        rows = []
        for plan in plans:
            rows.append(_Row(plan, "adapter" if plan.adapter else "base", plan.adapter))
            if plan.adapter and plan.ask.request.compare:
                rows.append(_Row(plan, "base", None))  # same prompt ids: the comparison is like for like
        states = [
            RowState(
                IncrementalDecoder(row.plan.tokenizer),
                row.plan.stops,
                row.plan.max_new_tokens,
                partial(self._interrupted, row.plan.ask),
            )
            for row in rows
        ]
        open_rows = {id(plan.ask): sum(row.plan is plan for row in rows) for plan in plans}

        def on_text(index: int, text: str) -> None:
            ask = rows[index].plan.ask
            if not ask.closed:
                self.emit(Token(id=ask.id, variant=rows[index].variant, text=text))

        def on_end(index: int) -> None:
            self._row_ended(rows[index], states[index], open_rows)

        # Left padding keeps every row's next token at the end of the batch; the attention mask hides it.
        width = max(len(plan.prompt) for plan in plans)
        pad = base.tokenizer.pad_token_id
        device = next(base.model.parameters()).device
        prompts = [row.plan.prompt for row in rows]
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts], device=device)
        attention_mask = torch.tensor(
            [[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=device
        )
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "max_new_tokens": max(state.max_new_tokens for state in states),  # rows stop at their own
            "stopping_criteria": StoppingCriteriaList([RowStopper(states, width)]),
            "streamer": RowStreamer(states, on_text, on_end),
            # Stops are per row (RowStopper): one shared EOS list would end a row at another row's
            # end-of-turn token, and a batched answer must equal the same answer alone.
            "eos_token_id": None,
            "pad_token_id": pad,
            "use_cache": True,
            **_decoding(plans[0].ask.request),
        }
        first = plans[0].ask.request
        if first.temperature > 0 and first.seed is not None:
            torch.manual_seed(first.seed)  # one seed per batch, its first request's (queue.batch_key says)
        with torch.inference_mode(), _adapters_selected(base, [row.adapter for row in rows], kwargs):
            base.model.generate(**kwargs)

    def _row_ended(self, row: _Row, state: RowState, open_rows: dict[int, int]) -> None:
        ask = row.plan.ask
        if state.stop_reason in ("eos", "length"):
            if not ask.closed:
                now = time.monotonic()
                first = state.first_token_at
                self.emit(
                    Finished(
                        id=ask.id,
                        variant=row.variant,
                        text=state.decoder.text,
                        tokens=state.tokens,
                        seconds=round(now - state.started_at, 4),
                        time_to_first_token_s=round(first - state.started_at, 4) if first else None,
                        stop_reason=state.stop_reason,  # type: ignore[arg-type]
                    )
                )
            open_rows[id(ask)] -= 1
            if open_rows[id(ask)] == 0:
                ask.closed = True
        elif not ask.closed:  # cancelled or timed out: one Failed for the request, its other rows stop
            self._fail_interrupted(ask, state.stop_reason)

    def _interrupted(self, ask: Ask) -> StopReason | None:
        if ask.closed or ask.cancel_message is not None or self.stopping.is_set():
            return "cancelled"
        return "timeout" if ask.timed_out else None

    # --- failing

    def _ended_while_waiting(self, ask: Ask) -> bool:
        reason = self._interrupted(ask)
        if reason is not None and not ask.closed:
            self._fail_interrupted(ask, reason)
        return reason is not None

    def _fail_interrupted(self, ask: Ask, reason: StopReason | None) -> None:
        if reason == "timeout":
            seconds = f"{ask.request.timeout_s:g}"
            self._send_failure(
                ask,
                "timeout",
                f"the answer took longer than {seconds} s",
                "ask for fewer new tokens (max_new_tokens) or allow a longer timeout",
            )
        else:
            message = ask.cancel_message or "cancelled: the serve worker is shutting down"
            self._send_failure(ask, "cancelled", message, "")

    def _fail(self, ask: Ask, error: Exception) -> None:
        if isinstance(error, UserError):
            self._send_failure(ask, "user_error", error.message, error.hint)
        elif isinstance(error, torch.OutOfMemoryError) or "CUDA out of memory" in str(error):
            log.error("out of memory answering %s:\n%s", ask.id, traceback.format_exc())
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self._send_failure(ask, "oom", "the GPU ran out of memory while answering", OOM_HINT)
        else:
            log.error("internal error answering %s:\n%s", ask.id, traceback.format_exc())
            message = f"internal error: {type(error).__name__}: {str(error)[:300]}"
            self._send_failure(ask, "internal", message, "the full traceback is in the serve worker's log")

    def _send_failure(self, ask: Ask, kind: Any, message: str, hint: str) -> None:
        if not ask.closed:
            ask.closed = True
            self.emit(Failed(id=ask.id, kind=kind, message=message, hint=hint))


def _check_settings(request: Generate) -> None:
    problems = []
    if request.max_new_tokens < 1:
        problems.append("max_new_tokens must be at least 1")
    if request.temperature < 0:
        problems.append("temperature must not be negative")
    if not 0 < request.top_p <= 1:
        problems.append("top_p must be in (0, 1]")
    if request.timeout_s <= 0:
        problems.append("timeout_s must be positive")
    if request.compare and request.adapter is None:
        problems.append("compare needs an adapter to compare the base model with")
    if problems:
        raise UserError("invalid request: " + "; ".join(problems), "change the settings named above")


def _decoding(request: Generate) -> dict[str, Any]:
    """Greedy or sampling settings. None overrides what the model's generation_config would add."""
    if request.temperature <= 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": request.temperature, "top_p": request.top_p, "top_k": None}


@contextlib.contextmanager
def _adapters_selected(base: BaseModel, adapters: list[str | None], kwargs: dict[str, Any]) -> Iterator[None]:
    """Make the model answer each row with its adapter (None: the base model)."""
    distinct = set(adapters)
    if not base.has_peft:  # no adapter was ever loaded on this base: every row asks the base model
        yield
    elif distinct == {None}:
        with base.model.disable_adapter():
            yield
    elif len(distinct) == 1:
        base.model.set_adapter(adapters[0], inference_mode=True)
        yield
    else:  # peft's mixed-adapter batch: each row runs its own LoRA on the shared 4-bit base
        kwargs["adapter_names"] = [name or BASE_ROW for name in adapters]
        yield
