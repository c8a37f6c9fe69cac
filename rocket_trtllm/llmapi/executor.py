"""The engine's own thread: it steps the engine while there is work and hands results to callers,
sync (`result()`) or async (`async for` / `aresult()`)."""

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, Optional

import torch

from ..engine import LLMEngine, Update
from ..runtime.sequence import Sequence, SequenceStatus
from .outputs import CompletionOutput, RequestOutput


class GenerationResult:
    """One request's handle: its latest RequestOutput, and a stream of them while it runs."""

    def __init__(self, executor: "Executor", seq: Sequence, prompt: Optional[str], streaming: bool) -> None:
        self._executor = executor
        self.seq = seq
        self.request_id = seq.request_id
        self.streaming = streaming
        self.output = RequestOutput(seq.request_id, prompt, seq.prompt_token_ids, [CompletionOutput(0)])
        self._done = threading.Event()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._queue: Optional[asyncio.Queue] = None
        self._lock = threading.Lock()
        self._early: list[Optional[tuple[list[int], str]]] = []
        self._ended = False
        self._callbacks: list[Callable[[GenerationResult], None]] = []
        self._stop_strings: list[str] = list(seq.sampling_params.stop or [])
        # Incremental detokenization: text is decoded from a window of recent tokens, never the whole output
        # (decoding all of it every step costs O(length) per token: ~0.5 ms at 2k tokens, x the batch).
        self._window_start = 0  # first token of the decode window
        self._read = 0  # tokens whose text is in output.text

    def _new_text(self, tokenizer: Any, ids: list[int], final: bool) -> str:
        """The text the tokens past `_read` add (empty while they end inside a UTF-8 character)."""
        window = ids[self._window_start :]
        before = tokenizer.decode(window[: self._read - self._window_start], skip_special_tokens=True)
        after = tokenizer.decode(window, skip_special_tokens=True)
        if after.endswith("\ufffd") and not final:
            return ""  # hold back a partial UTF-8 character until it completes
        self._window_start, self._read = self._read, len(ids)
        return after[len(before) :]

    def _bind_loop(self) -> None:
        with self._lock:
            if self._loop is None:
                self._queue = asyncio.Queue()
                for delta in self._early:  # what arrived before anyone listened
                    self._queue.put_nowait(delta)
                self._early.clear()
                self._loop = asyncio.get_running_loop()

    def _deliver(self, delta: Optional[tuple[list[int], str]]) -> None:
        """Called on the engine thread with the step's new tokens and text; None marks the end."""
        with self._lock:
            if self._loop is not None:
                self._executor._post(self._loop, self._queue, delta)
            elif self.streaming or delta is None:
                self._early.append(delta)
        if delta is None:
            self._done.set()
            with self._lock:
                callbacks, self._callbacks = self._callbacks, []
            for fn in callbacks:
                fn(self)

    def add_done_callback(self, fn: Callable[["GenerationResult"], None]) -> None:
        """Call `fn(self)` once the request has finished: on the engine's thread between two steps (what it submits
        joins the next step), or at once if it has finished already."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def result(self, timeout: Optional[float] = None) -> RequestOutput:
        """Block until the request finishes and return its final output."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.request_id} did not finish in {timeout} s")
        return self.output

    async def aresult(self) -> RequestOutput:
        async for _ in self:
            pass
        return self.output

    async def __aiter__(self) -> AsyncIterator[tuple[list[int], str]]:
        """Yields (new token ids, new text) as the request produces them."""
        async for deltas in self.batches():
            for delta in deltas:
                yield delta

    async def batches(self) -> AsyncIterator[list[tuple[list[int], str]]]:
        """What arrived since the last batch (one or more deltas, oldest first): a consumer that writes to a socket
        can send a backlog in one write."""
        self._bind_loop()
        while not self._ended:
            got = [await self._queue.get()]
            while not self._queue.empty():
                got.append(self._queue.get_nowait())
            if None in got:
                self._ended = True
                got = got[: got.index(None)]
            if got:
                yield got

    def abort(self) -> None:
        self._executor.abort(self)

    @property
    def finished(self) -> bool:
        return self._done.is_set()


class Executor:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._results: dict[int, GenerationResult] = {}
        # Deltas for the event loops of async consumers, handed over once per step: one wake-up of each loop, not
        # one per request (each wake-up is a write to the loop's socket).
        self._mail: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = {}
        self._running = True
        self.failure: Optional[str] = None  # why the engine thread stopped stepping, when it died
        self._thread = threading.Thread(target=self._loop, name="rocket-engine", daemon=True)
        self._thread.start()

    def submit(self, result: GenerationResult) -> None:
        self._inbox.put(("add", [result]))

    def submit_all(self, results: list[GenerationResult]) -> None:
        """Requests the engine takes in one go: they meet the same first step whatever the threads' timing (one by
        one, the engine could start a step between them, and batch composition changes the numerics)."""
        self._inbox.put(("add", results))

    def pending(self) -> int:
        """Messages (mostly new requests) the engine thread has not taken yet."""
        return self._inbox.qsize()

    def abort(self, result: GenerationResult) -> None:
        self._inbox.put(("abort", result))

    def call(self, fn: Any) -> Any:
        """Run `fn(engine)` on the engine thread and return its value (for consistent snapshots); after shutdown,
        with no engine thread left, here."""
        if not self._running:
            return fn(self.engine)
        if self.failure is not None:
            raise RuntimeError(self.failure)
        box: queue.Queue = queue.Queue()
        self._inbox.put(("call", (fn, box)))
        ok, value = box.get()
        if not ok:
            raise value
        return value

    def shutdown(self) -> None:
        if self._running:
            self._inbox.put(("stop", None))
            self._thread.join()
            self.engine.shutdown()  # the tensor-parallel workers, once no step can be in flight

    def _loop(self) -> None:
        try:
            self._serve()
        except Exception as e:  # the engine is gone (a CUDA error poisons the context): fail, never hang
            self.failure = f"engine stopped: {type(e).__name__}: {e}"
            self._fail_all()

    def _fail_all(self) -> None:
        """Finish every request in flight with the failure, then answer each later message with it until stop."""
        for result in list(self._results.values()):
            self._fail(result)
        while True:
            self._flush()
            kind, item = self._inbox.get()
            if kind == "stop":
                self._running = False
                return
            if kind == "add":
                for result in item:
                    self._fail(result)
            elif kind == "call":
                item[1].put((False, RuntimeError(self.failure)))

    def _fail(self, result: GenerationResult) -> None:
        seq = result.seq
        if not seq.is_finished:
            seq.status, seq.finish_reason, seq.error = SequenceStatus.FINISHED, "error", self.failure
        self._results[seq.request_id] = result
        self._publish(Update(seq, finished=True))

    def _serve(self) -> None:
        while True:
            block = not self.engine.has_work
            try:
                while True:
                    kind, item = self._inbox.get(block=block)
                    block = False
                    if kind == "stop":
                        self._stop()
                        return
                    self._handle(kind, item)
            except queue.Empty:
                pass
            self._flush()
            for update in self.engine.step():
                self._publish(update)
            self._flush()

    def _post(self, loop: asyncio.AbstractEventLoop, box: asyncio.Queue, delta: Any) -> None:
        self._mail.setdefault(loop, []).append((box, delta))

    def _flush(self) -> None:
        mail, self._mail = self._mail, {}
        for loop, items in mail.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the consumer's loop is closed: nobody is listening
                pass

    def _handle(self, kind: str, item: Any) -> None:
        if kind == "add":
            for result in item:
                self._results[result.request_id] = result
                self.engine.add(result.seq)
        elif kind == "abort" and not item.seq.is_finished:
            self.engine.abort(item.seq)
            self._publish(Update(item.seq, finished=True))
        elif kind == "call":
            fn, box = item
            try:
                box.put((True, fn(self.engine)))
            except Exception as e:  # handed back to the caller's thread
                box.put((False, e))

    def _publish(self, update: Update) -> None:
        result = self._results.get(update.seq.request_id)
        if result is None:
            return
        seq, out = update.seq, result.output.outputs[0]
        out.token_ids = seq.output_token_ids  # the engine's lists, appended to in place
        if seq.sampling_params.logprobs is not None:
            out.logprobs = seq.logprobs
        if seq.sampling_params.prompt_logprobs is not None:
            out.prompt_logprobs = seq.prompt_logprobs
        new_text = ""
        if seq.sampling_params.detokenize:
            text = out.text + result._new_text(self.tokenizer, out.token_ids, seq.is_finished)
            stop_at = _find_stop(text, result._stop_strings, len(out.text))
            if stop_at is not None:
                idx, stop = stop_at
                text = text[: idx + (len(stop) if seq.sampling_params.include_stop_str_in_output else 0)]
                if not seq.is_finished:
                    self.engine.abort(seq, "stop")
            new_text, out.text = text[len(out.text) :], text
        if update.new_token_ids or new_text:
            result._deliver((update.new_token_ids, new_text))
        if seq.is_finished:
            out.finish_reason, out.error = seq.finish_reason, seq.error
            if seq.logits:
                out.generation_logits = torch.stack(seq.logits)
            result.output.finished = True
            del self._results[seq.request_id]
            result._deliver(None)

    def _stop(self) -> None:
        for result in list(self._results.values()):
            self.engine.abort(result.seq)
            self._publish(Update(result.seq, finished=True))
        self._flush()
        self._running = False


def _put_all(items: list[tuple[asyncio.Queue, Any]]) -> None:
    for box, delta in items:
        box.put_nowait(delta)


def _find_stop(text: str, stops: list[str], already: int) -> Optional[tuple[int, str]]:
    """The earliest stop string in `text` that ends past `already` characters."""
    best = None
    for stop in stops:
        idx = text.find(stop, max(0, already - len(stop) + 1))
        if idx >= 0 and (best is None or idx < best[0]):
            best = (idx, stop)
    return best
