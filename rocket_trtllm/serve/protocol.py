"""The OpenAI request bodies the server accepts (fields it does not use are ignored, as OpenAI does)."""

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

ROLES = ("system", "developer", "user", "assistant", "tool")  # OpenAI's chat roles


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="The served model's id (GET /v1/models); another id gets 404.")
    max_tokens: Optional[int] = Field(default=None, description="Tokens to generate at most.")
    temperature: float = Field(default=1.0, description="0 is greedy.")
    top_p: float = Field(default=1.0, description="Nucleus sampling, in (0, 1].")
    seed: Optional[int] = Field(default=None, description="The request's own sampling seed.")
    stop: Optional[Union[str, list[str]]] = Field(default=None, description="Strings that end the text (cut).")
    n: int = Field(default=1, description="Choices per prompt: must be 1.")
    stream: bool = Field(default=False, description="Server-sent events, one chunk a token, ending in [DONE].")
    ignore_eos: bool = Field(
        default=False, description="Generate exactly max_tokens (an extension trtllm-serve and vLLM also accept)."
    )


class CompletionRequest(_Request):
    """POST /v1/completions."""

    prompt: Union[str, list[int], list[str], list[list[int]]] = Field(
        description="One prompt (a string or token ids) or a list of them: one choice each."
    )
    max_tokens: Optional[int] = Field(
        default=16, description="0: no new token (with echo, the prompt's logprobs alone)."
    )
    logprobs: Optional[int] = Field(
        default=None, description="The chosen token's logprob and this many alternatives, per token (at most 20)."
    )
    echo: bool = Field(default=False, description="The prompt before the completion, in the text and the logprobs.")


class ChatMessage(BaseModel):
    """One message of a chat."""

    model_config = ConfigDict(extra="allow")

    role: Literal[ROLES] = Field(description="`developer` is given to the chat template as `system`.")
    content: Union[str, list[dict], None] = Field(
        default=None, description='A string, or text parts {"type": "text", "text": ...} (joined by newlines).'
    )


class ChatCompletionRequest(_Request):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1, description="The conversation, at least one message.")
    max_completion_tokens: Optional[int] = Field(default=None, description="OpenAI's newer name of max_tokens.")
    logprobs: bool = Field(default=False, description="Each generated token's logprob.")
    top_logprobs: Optional[int] = Field(
        default=None, description="Alternatives per token, with logprobs: true (at most 20)."
    )
