"""The language model as a plug: messages in, text out, seeded; every reply an agent acts on is parsed against a
schema first.

    llm = make_llm("scripted")                       # the offline default: rules over the tool list
    llm = make_llm("openai:gpt-4o-mini", base_url="http://127.0.0.1:8080/v1", api_key_env="OPENAI_API_KEY")
    llm = make_llm("local:/models/qwen2.5-0.5b-instruct")   # a transformers folder (or a .gguf with llama-cpp)
    plan = ask(llm, messages, Plan, seed=0)          # a validated Plan, or ReplyError after bounded retries

Backends are registered in LLM_BACKENDS under the prefix of their spec ("scripted", "openai", "local").
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, TypeVar

import pydantic

from data_tools.registry import Registry

log = logging.getLogger(__name__)

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}
ROLES = ("system", "user", "assistant")
MAX_REPLY_CHARS = 20_000  # a reply longer than this is not parsed (a model stuck in a loop)


class LLMError(RuntimeError):
    """The backend could not produce a reply (transport failure, retries spent, a bad configuration)."""


class ReplyError(ValueError):
    """Replies that never matched the schema; `replies` holds what came back, for the run log."""

    def __init__(self, message: str, replies: Sequence[str] = ()):
        super().__init__(message)
        self.replies = list(replies)


class ChatModel(Protocol):
    name: str

    def complete(self, messages: Sequence[Message], *, seed: int = 0, max_tokens: int = 1024) -> str: ...


def check_messages(messages: Sequence[Message]) -> list[Message]:
    out = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"a message is {{'role': one of {ROLES}, 'content': str}}, got {m!r}")
        out.append({"role": m["role"], "content": m["content"]})
    if not out:
        raise ValueError("no messages")
    return out


# ------------------------------------------------------------------------------------------------ parsing

Schema = TypeVar("Schema", bound=pydantic.BaseModel)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def extract_json(text: str) -> Any:
    """The JSON value in a reply: the whole text, a ```json fenced block, or the first {...} span."""
    if len(text) > MAX_REPLY_CHARS:
        raise ValueError(f"the reply is {len(text)} characters, more than {MAX_REPLY_CHARS}")
    candidates = [text.strip()] + [m.strip() for m in _FENCE.findall(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            continue
        except RecursionError:  # '[' nested thousands deep: an answer no schema takes
            raise ValueError("the reply nests too deeply to be a reply") from None
    raise ValueError("no JSON object in the reply")


def parse_reply(text: str, schema: type[Schema]) -> Schema:
    """A reply as `schema`, or ValueError saying what is wrong (sent back to the model on a retry)."""
    try:
        return schema.model_validate(extract_json(text))
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'reply'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"the reply does not match the {schema.__name__} schema: {problems}") from None


def schema_prompt(schema: type[pydantic.BaseModel]) -> str:
    return ("Answer with one JSON object and nothing else, matching this JSON schema:\n"
            + json.dumps(schema.model_json_schema(), separators=(",", ":")))


def ask(llm: ChatModel, messages: Sequence[Message], schema: type[Schema], *, seed: int = 0, retries: int = 2,
        validate: Callable[[Schema], None] | None = None,
        on_reply: Callable[[str, str | None], None] | None = None) -> Schema:
    """Ask until a reply parses against `schema` (and passes `validate`, which raises ValueError): the schema is
    put first as a system message, and a rejected reply is shown back to the model with the reason, at most
    `retries` more times. `on_reply(text, error)` sees every raw reply (for the run log). Raises ReplyError:
    nothing unparsed or invalid is ever returned."""
    msgs = check_messages(messages)
    msgs = [{"role": "system", "content": schema_prompt(schema)}] + msgs
    replies = []
    for attempt in range(retries + 1):
        text = llm.complete(msgs, seed=seed + attempt)
        replies.append(text)
        try:
            parsed = parse_reply(text, schema)
            if validate is not None:
                validate(parsed)
        except ValueError as exc:
            if on_reply:
                on_reply(text, str(exc))
            msgs = msgs + [{"role": "assistant", "content": text[:2000]},
                           {"role": "user", "content": f"That reply was rejected: {exc}. Reply again with JSON only."}]
            continue
        if on_reply:
            on_reply(text, None)
        return parsed
    raise ReplyError(f"{llm.name}: no reply matched {schema.__name__} in {retries + 1} tries", replies)


# ------------------------------------------------------------------------------------------------ backends

LLM_BACKENDS: Registry[Callable[..., ChatModel]] = Registry("language model backend")


def make_llm(spec: str, **options: Any) -> ChatModel:
    """'scripted', 'openai:MODEL' or 'local:PATH'; options go to the backend (base_url, api_key_env, ...)."""
    prefix, _, rest = spec.partition(":")
    return LLM_BACKENDS.create(prefix, rest, **options)


@dataclass
class OpenAIChat:
    """An OpenAI-compatible /chat/completions endpoint over HTTP (httpx). The key is read from the environment
    variable named `api_key_env` when a request is made; it is sent only in the Authorization header and never
    logged, stored or put in an error message. Timeouts, rate limits (429) and server errors (5xx) are retried
    `max_retries` times with exponential backoff and jitter; other 4xx fail at once."""

    model: str
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_s: float = 1.0
    temperature: float = 0.0
    transport: Any = None  # an httpx transport, for tests
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def __post_init__(self) -> None:
        if not self.model:
            raise LLMError("openai backend: name a model, e.g. openai:gpt-4o-mini")
        if not re.match(r"^https?://", self.base_url):
            raise LLMError(f"base_url must be an http(s) URL, got {self.base_url!r}")
        if self.max_retries < 0 or self.timeout_s <= 0:
            raise LLMError("max_retries must be >= 0 and timeout_s > 0")
        self._key()  # a missing key fails here, before any work

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    def _key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise LLMError(f"the environment variable {self.api_key_env} (the API key) is not set")
        return key

    def _redact(self, text: str, key: str | None) -> str:
        return text.replace(key, "[key]") if key else text

    def complete(self, messages: Sequence[Message], *, seed: int = 0, max_tokens: int = 1024) -> str:
        import httpx

        key = self._key()
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        body = {"model": self.model, "messages": check_messages(messages), "seed": int(seed),
                "temperature": self.temperature, "max_tokens": int(max_tokens)}
        url = self.base_url.rstrip("/") + "/chat/completions"
        last = "no attempt"
        with httpx.Client(timeout=self.timeout_s, transport=self.transport) as client:
            for attempt in range(self.max_retries + 1):
                if attempt:
                    delay = self.backoff_s * 2 ** (attempt - 1) * (1.0 + 0.25 * random.random())
                    log.info("%s: retry %d/%d in %.1f s (%s)", self.name, attempt, self.max_retries, delay, last)
                    self.sleep(delay)
                try:
                    response = client.post(url, json=body, headers=headers)
                except httpx.TimeoutException:
                    last = f"timed out after {self.timeout_s:g} s"
                    continue
                except httpx.RequestError as exc:  # transport failures, and a body that will not decode
                    last = self._redact(f"connection failed ({type(exc).__name__})", key)
                    continue
                if response.status_code == 429 or response.status_code >= 500:
                    last = f"HTTP {response.status_code}"
                    continue
                if response.status_code >= 400:
                    detail = self._redact(response.text[:300], key)
                    raise LLMError(f"{self.name}: HTTP {response.status_code} from {url}: {detail}")
                return self._content(response, key)
        raise LLMError(f"{self.name}: no reply after {self.max_retries + 1} attempts (last: {last})")

    def _content(self, response: Any, key: str | None) -> str:
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise LLMError(f"{self.name}: not a chat-completions reply: "
                           f"{self._redact(response.text[:200], key)!r}") from None
        if not isinstance(content, str):
            raise LLMError(f"{self.name}: the reply's content is {type(content).__name__}, not text")
        return self._redact(content, key)  # a server that echoes the key must not get it into the run log


@LLM_BACKENDS.register("openai")
def _openai(model: str, **options: Any) -> OpenAIChat:
    return OpenAIChat(model, **options)


class LocalChat:
    """A model run on this machine's CPU: a transformers causal-LM folder with a chat template
    (AutoModelForCausalLM), or a .gguf file (llama-cpp-python when installed, else transformers' GGUF reader, which
    needs gguf and accelerate), or a packaged model: local:packaged:smollm2-135m-instruct. Seeded
    greedy decoding, so a seed and messages give one reply."""

    def __init__(self, path: str, max_new_tokens: int = 512, threads: int | None = None):
        from data_tools.packaged import resolve_model_folder

        try:
            self.path = resolve_model_folder(path)  # also packaged:smollm2-135m-instruct
        except (ImportError, FileNotFoundError, KeyError, ValueError) as exc:
            raise LLMError(str(exc)) from None
        if not self.path.exists():
            raise LLMError(f"local model {self.path} does not exist")
        self.name = f"local:{self.path.name}"
        self.max_new_tokens = int(max_new_tokens)
        self._llama = self._model = None
        if self.path.suffix == ".gguf":
            try:
                from llama_cpp import Llama
            except ImportError:  # transformers reads GGUF too (dequantised to fp32; needs gguf and accelerate)
                Llama = None
            if Llama is not None:
                self._llama = Llama(model_path=str(self.path), n_ctx=4096, n_threads=threads, verbose=False)
                return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder, extra = (self.path.parent, {"gguf_file": self.path.name}) if self.path.suffix == ".gguf" else (self.path, {})
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **extra)
            self._model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, **extra).eval()
        except (OSError, ValueError, ImportError) as exc:
            raise LLMError(f"{self.path}: cannot load it as a causal language model ({exc})") from None
        if not getattr(self._tokenizer, "chat_template", None):
            raise LLMError(f"{self.path}: the tokenizer has no chat template; use an instruct model")

    def complete(self, messages: Sequence[Message], *, seed: int = 0, max_tokens: int = 1024) -> str:
        msgs = check_messages(messages)
        try:
            return self._generate(msgs, seed, min(max_tokens, self.max_new_tokens))
        except (RuntimeError, ValueError, IndexError) as exc:  # e.g. a prompt longer than the model's context
            raise LLMError(f"{self.name}: generation failed ({type(exc).__name__}: {exc})") from None

    def _generate(self, msgs: list[Message], seed: int, limit: int) -> str:
        if self._llama is not None:
            out = self._llama.create_chat_completion(messages=msgs, seed=int(seed), temperature=0.0, max_tokens=limit)
            return str(out["choices"][0]["message"]["content"])
        import torch

        torch.manual_seed(int(seed))
        ids = self._tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                                  return_dict=True)
        with torch.no_grad():
            out = self._model.generate(input_ids=ids["input_ids"], attention_mask=ids.get("attention_mask"),
                                       max_new_tokens=limit, do_sample=False,
                                       pad_token_id=self._tokenizer.pad_token_id or self._tokenizer.eos_token_id)
        return self._tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


@LLM_BACKENDS.register("local")
def _local(path: str, **options: Any) -> LocalChat:
    if not path:
        raise LLMError("local backend: give a path, e.g. local:/models/qwen2.5-0.5b-instruct")
    return LocalChat(path, **{k: v for k, v in options.items() if k in ("max_new_tokens", "threads")})


@LLM_BACKENDS.register("scripted")
def _scripted(rest: str = "", **options: Any) -> ChatModel:
    from .scripted import ScriptedChat

    return ScriptedChat()


__all__ = ["ChatModel", "LLMError", "LLM_BACKENDS", "LocalChat", "Message", "OpenAIChat", "ReplyError", "ask",
           "check_messages", "extract_json", "make_llm", "parse_reply", "schema_prompt"]
