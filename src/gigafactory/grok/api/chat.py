"""Grok's chat API, OpenAI-compatible: ``POST /v1/chat/completions``, ``GET /v1/models``.

The route turns a ``ChatRequest`` into a ``ChatInput``, starts the answer pipeline off the
event loop, and frames ``Answer.pieces()``: joined into one ``ChatCompletion``, or streamed
as server-sent events (one word per ``chat.completion.chunk``, the last chunk with
``finish_reason`` and ``citations``, then ``data: [DONE]``). Errors: 4xx for requests that
cannot be answered, 502 when the backend fails, 504 when it times out, each with the reason
in ``detail``; a failure after streaming began ends the stream with an ``error`` event.
A body longer than ``chat_body_limit`` is refused (413) before any of it is parsed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response, StreamingResponse
from fastapi.routing import APIRoute
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from gigafactory.grok.answers.errors import AnswerError, BackendError
from gigafactory.grok.answers.pipeline import ALIAS, Answer, AnswerPipeline, ChatInput
from gigafactory.grok.answers.retrieve import SearchParams
from gigafactory.grok.api.app import Key, api_key, read_capped
from gigafactory.grok.api.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Choice,
    ChunkChoice,
    Delta,
    ModelCard,
    ModelList,
    Usage,
)
from gigafactory.grok.settings import GrokSettings

BODY_MESSAGES = 8  # a chat body may hold this many messages of the longest allowed length
BYTES_PER_CHAR = 6  # JSON's worst case for a BMP character: \uXXXX
BODY_OVERHEAD = 64 * 1024  # the rest of the request: options, roles, shorter turns


def chat_body_limit(settings: GrokSettings) -> int:
    """The largest chat request body accepted, in bytes: ``BODY_MESSAGES`` messages of
    ``max_message_chars`` at ``BYTES_PER_CHAR`` plus ``BODY_OVERHEAD``, and never more than
    ``max_body_bytes`` (1.6 MB with the defaults)."""
    own = BODY_MESSAGES * BYTES_PER_CHAR * settings.max_message_chars + BODY_OVERHEAD
    return min(settings.max_body_bytes, own)


class CappedBody(APIRoute):
    """A route whose body is read up to ``chat_body_limit`` before FastAPI parses it: a
    declared or streamed body over the limit is a 413 at once, never read in full (the key
    is checked first: no key, 401)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def capped(request: Request) -> Response:
            if request.method == "POST":
                api_key(request)
                cap = chat_body_limit(request.app.state.service.settings)
                # what FastAPI's request.body() then returns
                request._body = await read_capped(request, cap)
            return await handler(request)

        return capped


router = APIRouter(tags=["chat"], route_class=CappedBody)


def get_pipeline(request: Request) -> AnswerPipeline:
    """The app's answer pipeline, made on first use over the app's service."""
    state = request.app.state
    if getattr(state, "answers", None) is None:
        state.answers = AnswerPipeline(state.service, state.service.settings)
    return state.answers


Pipeline = Annotated[AnswerPipeline, Depends(get_pipeline)]


def chat_input(body: ChatRequest) -> ChatInput:
    """The pipeline's view of a request."""
    turns = [("system" if m.role == "developer" else m.role, m.text()) for m in body.messages]
    sp = body.search_parameters
    search = SearchParams()
    if sp is not None:
        since, until = sp.since_until_us()
        included, excluded = sp.handles()
        search = SearchParams(sp.mode, since, until, sp.max_search_results, included, excluded)
    return ChatInput(
        turns,
        body.model,
        search,
        body.temperature,
        body.max_completion_tokens or body.max_tokens,
        sp.return_citations if sp is not None else True,
        body.seed,
    )


def http_error(exc: AnswerError | BackendError) -> HTTPException:
    """The HTTP error for a pipeline error (its class sets the status)."""
    return HTTPException(exc.status, str(exc))


def sse(obj: ChatCompletionChunk | dict) -> bytes:
    """One server-sent event."""
    data = obj.model_dump(exclude_none=True) if isinstance(obj, ChatCompletionChunk) else obj
    return b"data: " + orjson.dumps(data) + b"\n\n"


async def stream_events(answer: Answer, model: str) -> AsyncIterator[bytes]:
    """The SSE body: a role chunk, one chunk per word, the final chunk, ``[DONE]``."""

    def chunk(delta: Delta, finish: str | None = None, last: bool = False) -> bytes:
        return sse(
            ChatCompletionChunk(
                id=answer.id,
                created=answer.created,
                model=model,
                choices=[ChunkChoice(delta=delta, finish_reason=finish)],
                citations=answer.citations() if last else None,
                search=answer.search_info() if last else None,
            )
        )

    batches = iterate_in_threadpool(answer.batches())
    try:
        first = await anext(batches, [""])
    except (AnswerError, BackendError) as exc:
        raise http_error(exc) from None

    async def events() -> AsyncIterator[bytes]:
        yield chunk(Delta(role="assistant", content=first[0]))
        try:
            for word in first[1:]:
                yield chunk(Delta(content=word))
            async for words in batches:
                for word in words:
                    yield chunk(Delta(content=word))
            yield chunk(Delta(), answer.finish_reason, last=True)
        except BackendError as exc:
            yield sse({"error": {"message": str(exc), "type": "backend", "code": exc.status}})
        yield b"data: [DONE]\n\n"

    return events()


@router.get("/v1/models", response_model=ModelList, summary="The answer models served")
def list_models(key: Key, pipeline: Pipeline) -> ModelList:
    """``grok`` (the configured default) and each configured backend."""
    now = int(time.time())
    default = pipeline.backends[pipeline.default]
    cards = [ModelCard(id=ALIAS, created=now, description=f"default: {default.description}")]
    cards += [
        ModelCard(id=n, created=now, description=b.description)
        for n, b in pipeline.backends.items()
    ]
    return ModelList(data=cards)


@router.get("/v1/chat/metrics", summary="Answer counters since start")
def chat_metrics(key: Key, pipeline: Pipeline) -> dict[str, int]:
    """Answers written, invented citation markers and canaries removed, backend failures
    (and ``checkpoint_tokens``, the tokens the checkpoint backend generated, if served)."""
    return pipeline.counters()


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    summary="Answer a chat from the live posts (OpenAI-compatible; SSE with stream=true)",
)
async def chat_completions(body: ChatRequest, key: Key, pipeline: Pipeline, request: Request):
    """Grok's answer with numbered citation markers; ``citations`` lists the posts."""
    request.app.state.limit_query(key)
    inp = chat_input(body)
    try:
        answer = await run_in_threadpool(pipeline.start, inp)
    except (AnswerError, BackendError) as exc:
        raise http_error(exc) from None
    if body.stream:
        return StreamingResponse(
            await stream_events(answer, body.model),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache"},
        )
    try:
        text = "".join([w async for ws in iterate_in_threadpool(answer.batches()) for w in ws])
    except BackendError as exc:
        raise http_error(exc) from None
    prompt = sum(len(c.split()) for _r, c in inp.turns)
    return ChatCompletion(
        id=answer.id,
        created=answer.created,
        model=body.model,
        choices=[
            Choice(message=AssistantMessage(content=text), finish_reason=answer.finish_reason)
        ],
        usage=Usage(
            prompt_tokens=prompt,
            completion_tokens=answer.completion_tokens,
            total_tokens=prompt + answer.completion_tokens,
        ),
        citations=answer.citations(),
        search=answer.search_info(),
    )
