"""Pluggable chat models for synthesis and judging: an OpenAI-compatible HTTP endpoint or a local checkpoint.

A model is any callable `messages -> completion text` that raises ModelError when it cannot answer; the caller
counts the sample as rejected with `error.reason` (http_status, timeout, connection, malformed_response,
empty_completion) and goes on, so one bad response never stops a run and is never lost silently.

The HTTP client uses only the standard library (urllib): POST {base_url}/chat/completions, retried with
exponential backoff on connection errors, timeouts, 429 and 5xx; a 4xx other than 429 is not retried (a wrong
model name or key does not get better). A response that is not JSON or lacks choices[0].message.content is
`malformed_response` and not retried (the server answered; asking again rarely changes a broken server).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import urllib.error
import urllib.request
from typing import Callable, Sequence

Messages = Sequence[dict]


class ModelError(RuntimeError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class EndpointConfig:
    base_url: str  # e.g. http://127.0.0.1:8000/v1
    model: str = "default"
    api_key_environment_variable: str = "OPENAI_API_KEY"  # read at call time; keys never live in configs
    timeout_seconds: float = 60.0
    retries: int = 3
    backoff_seconds: float = 1.0  # doubled after every failed attempt
    temperature: float = 0.0
    max_tokens: int = 1024

    def __post_init__(self):
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"EndpointConfig.base_url {self.base_url!r} must start with http:// or https://")
        if self.retries < 0 or self.timeout_seconds <= 0:
            raise ValueError("EndpointConfig: retries must be >= 0 and timeout_seconds > 0")


class ChatEndpoint:
    """OpenAI-compatible chat completions over HTTP. `stats` counts attempts, retries and failures by reason."""

    def __init__(self, config: EndpointConfig, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self.sleep = sleep
        self.stats = {"requests": 0, "attempts": 0, "retries": 0}

    def __call__(self, messages: Messages, temperature: float | None = None) -> str:
        config = self.config
        body = json.dumps({"model": config.model, "messages": list(messages), "max_tokens": config.max_tokens,
                           "temperature": config.temperature if temperature is None else temperature}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(config.api_key_environment_variable)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = config.base_url.rstrip("/") + "/chat/completions"
        self.stats["requests"] += 1
        delay, failure = config.backoff_seconds, None
        for attempt in range(config.retries + 1):
            if attempt:
                self.stats["retries"] += 1
                self.sleep(delay)
                delay *= 2
            self.stats["attempts"] += 1
            try:
                request = urllib.request.Request(url, body, headers, method="POST")
                with urllib.request.urlopen(request, timeout=config.timeout_seconds) as response:
                    raw = response.read()
            except urllib.error.HTTPError as error:
                failure = ModelError("http_status", f"HTTP {error.code} from {url}")
                if error.code != 429 and error.code < 500:
                    raise ModelError("http_status", f"HTTP {error.code} from {url}: not retried; check the model "
                                                    f"name ({config.model!r}) and the API key") from error
                continue
            except (TimeoutError, socket.timeout) as error:
                failure = ModelError("timeout", f"no answer from {url} within {config.timeout_seconds} s ({error})")
                continue
            except urllib.error.URLError as error:
                is_timeout = isinstance(error.reason, (TimeoutError, socket.timeout))
                failure = ModelError("timeout" if is_timeout else "connection", f"{url}: {error.reason}")
                continue
            except OSError as error:  # connection reset while reading, and the like
                failure = ModelError("connection", f"{url}: {error}")
                continue
            return parse_completion(raw)
        raise failure


def parse_completion(raw: bytes) -> str:
    try:
        payload = json.loads(raw)
        content = payload["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelError("malformed_response", f"response is not JSON: {raw[:120]!r} ({error})") from None
    except (KeyError, IndexError, TypeError):
        raise ModelError("malformed_response", f"response lacks choices[0].message.content: {raw[:200]!r}") from None
    if not isinstance(content, str):
        raise ModelError("malformed_response", f"choices[0].message.content is {type(content).__name__}")
    if not content.strip():
        raise ModelError("empty_completion", "the model answered with an empty message")
    return content


class LocalCheckpointModel:
    """A checkpoint of ours (or a converted published one) through qwencoder_jax.eval.generate.Generator.

    Imported lazily: the data tools run without JAX unless a local model is asked for. Conversations are
    rendered as ChatML with an open assistant turn and generation stops at <|im_end|>."""

    def __init__(self, checkpoint: str, max_new_tokens: int = 512, temperature: float = 0.0, seed: int = 0):
        # jax only for checkpoint: models
        from qwencoder_jax.eval import generate

        self._generate = generate
        self.generator = generate.Generator.from_checkpoint(checkpoint)
        self.sampling = generate.SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                                                stop=("<|im_end|>",), seed=seed)

    def __call__(self, messages: Messages, temperature: float | None = None) -> str:
        prompt = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        sampling = self.sampling if temperature is None else dataclasses.replace(self.sampling, temperature=temperature)
        completion = self.generator.generate([prompt + "<|im_start|>assistant\n"], sampling)[0]
        if not completion.strip():
            raise ModelError("empty_completion", "the local model generated nothing")
        return completion


def model_from_spec(spec: str, **options):
    """`http://host:port/v1[#model]` -> ChatEndpoint; `checkpoint:PATH` -> LocalCheckpointModel."""
    if spec.startswith(("http://", "https://")):
        url, _, model = spec.partition("#")
        return ChatEndpoint(EndpointConfig(base_url=url, model=model or "default", **options))
    if spec.startswith("checkpoint:"):
        return LocalCheckpointModel(spec.split(":", 1)[1])
    raise ValueError(f"model {spec!r}: write http(s)://HOST:PORT/v1[#MODEL] or checkpoint:PATH")
