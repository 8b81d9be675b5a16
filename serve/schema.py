"""The HTTP API's types and errors: the pydantic models are the OpenAPI document (docs/design.md, HTTP API).

Every error is ``{"error": {"type", "message"}}`` (``error_response``); a refusal inside the app is raised
as ``APIError`` with its status and the reason it is counted under in ``fracture_request_errors_total``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

TokenIds = list[Annotated[int, Field(ge=0)]]
PROMPT_FORMS = "a string, a list of strings, a list of token ids (integers >= 0) or a list of lists of token ids"


class CompletionRequest(BaseModel):
    """The OpenAI completions request (every field of the API is declared: anything else is refused), plus
    fracture's ``shift`` and ``expected``. Decoding is greedy: a field that would change a greedy answer is
    accepted only at its neutral value (the check is in the route, so the 400 can say why)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: str = Field(description='"<run>/<variant>", as listed by GET /v1/models')
    prompt: str | list[str] | TokenIds | list[TokenIds] = Field(
        description='the task prompt in canonical form, e.g. "123+456="; or a list of prompts (a batch: one '
                    "choice per prompt, in order); or token ids of the model's tokenizer (one prompt as a list "
                    "of ids, a batch as a list of lists), decoded to text and then served as text (refused "
                    "unless re-encoding that text gives the same ids)")
    max_tokens: int | None = Field(16, description="tokens to generate at most (1..max_tokens_limit; null: 16)")
    temperature: float | None = Field(0.0, description="greedy decoding only: must be 0 (null: 0)")
    top_p: float | None = Field(1.0, description="must be 1 (null: 1): no nucleus sampling")
    n: int | None = Field(1, description="must be 1 (null: 1): one greedy answer per prompt")
    best_of: int | None = Field(None, description="must be 1 or null")
    stop: str | list[str] | None = Field(None, description="stop string(s): the text ends before the first one")
    echo: bool = Field(False, description="true: each choice's text starts with its prompt (as text)")
    logprobs: int | None = Field(None, description="not served: must be null")
    presence_penalty: float | None = Field(0.0, description="must be 0 (null: 0)")
    frequency_penalty: float | None = Field(0.0, description="must be 0 (null: 0)")
    logit_bias: dict[str, float] | None = Field(None, description="must be empty or all zero")
    seed: int | None = Field(None, description="accepted and ignored: greedy decoding is deterministic")
    suffix: str | None = Field(None, description="not served: must be null or empty")
    stream: bool = Field(False, description="not served: must be false (the whole answer comes at once)")
    stream_options: dict | None = Field(None, description="accepted and ignored (stream is false)")
    user: str | None = Field(None, description="accepted and ignored")
    shift: str | None = Field(None, description='"id" or a shift of the sweep\'s task; labels the metrics '
                                                "(of every prompt of a batch)")
    expected: str | list[str] | None = Field(
        None, description="the correct answer (a list: one per prompt of a batch); when given, the response "
                          "says if it was")

    @field_validator("prompt", mode="wrap")
    @classmethod
    def _one_prompt_form(cls, value, handler):
        try:  # one readable error instead of one per member of the union
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("prompt_form", f"must be {PROMPT_FORMS}") from None


class Choice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None = None
    correct: bool | None = Field(None, description="this choice's grade (null when its prompt had no expected)")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    variant: str
    shift: str
    correct: bool | None = Field(description="the grade of the answer when the request has one prompt (null "
                                             "without expected); null for several: each choice has its own")


class ModelInfo(BaseModel):
    """What a client may know of a served variant, all of it from the variant's manifest."""

    id: str  # "<run>/<variant>"
    run: str
    variant: str
    step: int
    bits: int
    backend: str


class ModelCard(ModelInfo):
    object: Literal["model"] = "model"
    owned_by: str = "fracture"
    loaded: bool


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    refused: dict[str, str]


class ErrorBody(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class APIError(Exception):
    def __init__(self, status: int, reason: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.reason, self.message, self.headers = status, reason, message, headers


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 408: "invalid_request_error", 413: "invalid_request_error",
               431: "invalid_request_error", 503: "overloaded_error", 500: "server_error"}


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": ERROR_TYPES.get(status, "invalid_request_error"), "message": message}},
                        status_code=status, headers=headers)


def error_responses(*codes: int) -> dict:
    return {c: {"model": ErrorResponse, "description": ERROR_TYPES[c]} for c in codes}
