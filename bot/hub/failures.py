"""Turn what huggingface_hub raised into a message safe to show, and whether trying again may help.

Messages are built from status codes and our own words, never from the raw exception text alone (it can
echo request headers or server text), and every message is scrubbed of the token before it leaves.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.logging_setup import redact_secrets

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class HubFailure:
    message: str  # safe to store and show
    retryable: bool
    retry_after_s: float | None = None  # what the Hub asked for with Retry-After


def redact(text: str, token: str | None) -> str:
    return redact_secrets(text, [token])


def classify(
    error: BaseException, token: str | None, *, namespace: str | None = None, download: bool = False
) -> HubFailure:
    """`namespace`: where an upload was going, named in the 401/403 advice."""
    response = _http_response(error)
    if response is not None:
        status = response.status_code
        detail = _server_message(response)
        if status in (401, 403):
            refused = (
                f"the Hub refused the {'download' if download else 'upload'} (HTTP {status}{_colon(detail)})"
            )
            if download:
                advice = "check HF_TOKEN can read this repo"
            else:
                advice = "check HF_TOKEN has write access" + (f" to {namespace}" if namespace else "")
            return HubFailure(redact(f"{refused}; {advice}", token), retryable=False)
        if status in RETRY_STATUSES:
            return HubFailure(
                f"the Hub answered HTTP {status}" + (" (rate limited)" if status == 429 else ""),
                retryable=True,
                retry_after_s=_retry_after(response.headers.get("Retry-After")),
            )
        if status == 404:
            return HubFailure(
                redact(f"the Hub found no such repo or namespace (HTTP 404){_colon(detail)}", token),
                retryable=False,
            )
        return HubFailure(redact(f"the Hub answered HTTP {status}{_colon(detail)}", token), retryable=False)
    if type(error).__name__ == "OfflineModeIsEnabled":
        return HubFailure("HF_HUB_OFFLINE is set in this process; unset it to use the Hub", retryable=False)
    if _is_connection_problem(error):
        return HubFailure(f"could not reach the Hub ({type(error).__name__})", retryable=True)
    return HubFailure(redact(f"{type(error).__name__}: {str(error)[:300]}", token), retryable=False)


def _http_response(error: BaseException | None):
    """The HTTP response of the first error in the chain that carries one (wrapped uploads raise
    RuntimeError from the HfHubHTTPError)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        response = getattr(error, "response", None)
        if response is not None and hasattr(response, "status_code"):
            return response
        error = error.__cause__ or error.__context__
    return None


def _is_connection_problem(error: BaseException | None) -> bool:
    import httpx2  # huggingface_hub 2.x's HTTP stack (its dependency); loaded once a request was made

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, httpx2.TransportError | ConnectionError | TimeoutError):
            return True
        error = error.__cause__ or error.__context__
    return False


def _server_message(response) -> str:
    message = response.headers.get("X-Error-Message") or ""
    return message.strip()[:200]


def _colon(detail: str) -> str:
    return f": {detail}" if detail else ""


def _retry_after(value: str | None) -> float | None:
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare on the Hub; the backoff applies instead
