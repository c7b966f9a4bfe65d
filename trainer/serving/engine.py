"""Answer one batch of requests in one decoding session, streaming and finishing each row on its own.

Each request ends with one Finished per row (adapter, and base for compare) or exactly one Failed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from protocol.errors import UserError
from protocol.serve import Failed, Finished, Generate, Loading, ServeEvent, Stats, Token, Variant
from trainer.data.chat_template import RENDER_TIMEOUT_S
from trainer.serving.models import BaseModel, Residency
from trainer.serving.prompts import prompt_ids, stop_ids
from trainer.serving.queue import Ask
from trainer.serving.sampling import RowSampler
from trainer.serving.streaming import IncrementalDecoder, RowState, StopReason, run_rows
from trainer.worker_io import explain_failure

log = logging.getLogger(__name__)

OOM_HINT = "ask for fewer new tokens or a shorter prompt, or ask again when fewer answers are running"


@dataclass(eq=False)
class _Plan:
    """A request ready to generate: its prompt, how to decode and stop it, and its adapter."""

    ask: Ask
    prompt: list[int]
    tokenizer: Any
    stops: frozenset[int]
    adapter: str | None  # the resident adapter's folder; None asks the base model alone
    slot: int | None  # its slot in the base's LoRA bank
    max_new_tokens: int  # the request's, within the model's context


@dataclass(eq=False)
class _Row:
    plan: _Plan
    variant: Variant
    slot: int | None


class Engine:
    """Owns the models; `run_batch` is called by one thread only (generation is global model state).

    Timings are per row from the start of its batch's decoding session: `seconds` spans the whole answer,
    prefill included, and `time_to_first_token_s` is the prompt's prefill and first step.
    """

    def __init__(
        self,
        emit: Callable[[ServeEvent], None],
        stopping: threading.Event,
        *,
        max_adapters: int = 8,
        max_adapter_mb: float = 2048.0,
        cuda_graphs: bool = True,
        template_timeout_s: float = RENDER_TIMEOUT_S,
    ) -> None:
        self.emit = emit
        self.stopping = stopping  # set at shutdown: running rows end as cancelled
        self.template_timeout_s = template_timeout_s
        self.residency = Residency(max_adapters, max_adapter_mb, cuda_graphs=cuda_graphs)

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
            tokenizer, template, adapter, slot = base.tokenizer, base.template, None, None
        else:
            announce = partial(self._announce, [ask], "adapter", request.adapter, loaded)
            resident = self.residency.adapter(base, request.adapter, announce)
            tokenizer, template, adapter, slot = (
                resident.tokenizer,
                resident.template,
                resident.path,
                resident.slot,
            )
        # Rendering runs on this (the only generation) thread, so its deadline is what one hostile template
        # can cost the batch; it never outlasts the request's own time.
        waited = time.monotonic() - ask.received_at
        deadline = round(max(0.1, min(self.template_timeout_s, request.timeout_s - waited)), 1)
        whose = "the adapter's chat template" if request.adapter else "the base model's chat template"
        ids = prompt_ids(tokenizer, template, request, timeout_s=deadline, whose=whose)
        # A raw prompt was trained without the template: only EOS (and the model's own end ids) stop it.
        chat_template = template if request.messages is not None else None
        stops = stop_ids(tokenizer, chat_template, base.model_eos, timeout_s=deadline)
        limit = base.max_positions or len(ids) + request.max_new_tokens
        if len(ids) >= limit:
            raise UserError(
                f"the prompt has {len(ids)} tokens; the model reads at most {limit}", "shorten the prompt"
            )
        # An answer ends (stop_reason "length") where the model's context does, rather than being refused.
        max_new_tokens = min(request.max_new_tokens, limit - len(ids))
        return _Plan(ask, ids, tokenizer, stops, adapter, slot, max_new_tokens)

    def _announce(self, asks: list[Ask], what: Any, name: str, loaded: list[str]) -> None:
        loaded.append(name)
        for ask in asks:
            self.emit(Loading(id=ask.id, what=what, name=name))

    # --- generating

    def _generate(self, base: BaseModel, plans: list[_Plan]) -> None:
        rows = []
        for plan in plans:
            rows.append(_Row(plan, "adapter" if plan.adapter else "base", plan.slot))
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

        device = next(base.model.parameters()).device
        samplers = []
        for row in rows:
            request = row.plan.ask.request
            samplers.append(RowSampler(request.temperature, request.top_p, request.seed, device))
        length = max(len(row.plan.prompt) + row.plan.max_new_tokens for row in rows)
        with torch.inference_mode():
            session = base.decoder.start(
                [row.plan.prompt for row in rows], [row.slot for row in rows], length
            )
            run_rows(session, states, samplers, on_text, on_end)

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
        failure = explain_failure(
            error,
            log,
            oom=("the GPU ran out of memory while answering", OOM_HINT),
            traceback_in="the serve worker's log",
            context=f" answering {ask.id}",
        )
        if failure.kind == "oom" and torch.cuda.is_available():
            torch.cuda.empty_cache()  # this worker lives on: what the failed batch held is for the next one
        self._send_failure(ask, failure.kind, failure.message, failure.hint)

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
