"""The OpenAI request bodies the server accepts (fields it does not use are ignored, as OpenAI does)."""

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

ROLES = ("system", "developer", "user", "assistant", "tool")  # OpenAI's chat roles


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: Optional[int] = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    n: int = 1
    stream: bool = False
    ignore_eos: bool = False  # an extension trtllm-serve and vLLM also accept


class CompletionRequest(_Request):
    # One prompt (a string or token ids) or a list of them: one choice each.
    prompt: Union[str, list[int], list[str], list[list[int]]]
    max_tokens: Optional[int] = 16  # 0: no new token (with echo, the prompt's logprobs alone)
    logprobs: Optional[int] = None  # the chosen token's logprob and this many alternatives, per token
    echo: bool = False  # the prompt before the completion, in the text and in the logprobs


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal[ROLES]
    content: Union[str, list[dict], None] = None  # a string, or parts: {"type": "text", "text": ...}


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = None  # alternatives per token, with logprobs: true
