"""Generation: next-token logits into tokens (temperature, top-k, top-p (nucleus), greedy), and the Engine that
decodes with the KV cache, one token at a time: eager, recorded as one CUDA graph on a GPU, or compiled."""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from common.device import on_side_stream, record_cuda_graph
from model.attention import KVCache

if TYPE_CHECKING:
    from model.gpt import GPT


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row, set the rest to -inf. logits: (B, V)."""
    k = min(k, logits.size(-1))
    kth_largest = torch.topk(logits, k, dim=-1).values[:, [-1]]  # (B, 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probabilities sum to at least p (nucleus sampling)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    sorted_probs = torch.softmax(sorted_logits, dim=-1)
    # drop a token when the tokens ranked above it already reach p; the top token always stays
    drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits: (B, V) for the last position -> next token ids (B, 1). temperature 0 is greedy."""
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1 (or None for no top-k filter)")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1] (or None for no nucleus filter)")
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = filter_top_k(logits, top_k)
    if top_p is not None:
        logits = filter_top_p(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)


class Engine:
    """How a GPT generates (GPT.generate, sample.py): the decoding loop, the KV cache and the one-token decoding
    step that use_cuda_graph() records or compile() compiles. One per model (`model.engine`): the cache and that
    step outlive a generation."""

    def __init__(self, model: GPT):
        self.model = model
        self.cache: KVCache | None = None  # allocated by kv_cache
        # one new token (B, 1) at positions (1,) -> the logits (B, vocab) after it: eager, recorded or compiled
        self.decode_step = model.next_token_logits

    def kv_cache(self, batch: int, device: torch.device) -> KVCache:
        """The KV cache for a generation of `batch` sequences: allocated once and reused while batch,
        dtype and device stay the same, so a compiled decoding step always writes the same buffers."""
        autocast = torch.is_autocast_enabled(device.type)  # the keys and values come in autocast's dtype
        dtype = torch.get_autocast_dtype(device.type) if autocast else self.model.wte.weight.dtype
        c = self.model.config
        shape = (c.n_layer, batch, c.n_head, c.block_size, c.n_embd // c.n_head)
        cache = self.cache
        if cache is None or (cache.keys.shape, cache.keys.dtype, cache.keys.device) != (shape, dtype, device):
            self.cache = KVCache(shape, dtype, device)
        return self.cache

    def compile(self) -> None:
        """torch.compile the step generation repeats for every token: one new token -> the next token's logits,
        with the KV cache. Its shapes and addresses never change, so it compiles once: on a CPU into C++ that
        reads the weights far faster than eager PyTorch; on a GPU into Triton kernels replayed as one CUDA graph
        per token. The weights are frozen into the code (inference only). Costs tens of seconds up front."""
        import torch._inductor.config as inductor

        # freezing applies to graphs compiled without autograd only, so training is unaffected;
        # set here, not through torch.compile's options=, which made decoding slower
        inductor.freezing = True
        inductor.autotune_num_choices_displayed = 0  # the kernel timings are the compiler's business,
        inductor.max_autotune_report_choices_stats = False  # not the reader's
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")  # raised inside torch's autotuner
        compiled = torch.compile(self.model.next_token_logits, mode="max-autotune", fullgraph=True, dynamic=False)

        def decode_step(next_id: torch.Tensor, kv_cache: KVCache, positions: torch.Tensor) -> torch.Tensor:
            # a new replay: the last step's logits (a CUDA graph's output buffer) were already read
            torch.compiler.cudagraph_mark_step_begin()
            return compiled(next_id, kv_cache, positions)

        self.decode_step = decode_step

    def use_cuda_graph(self) -> None:
        """Decode on a GPU by replaying one recorded CUDA graph per token instead of launching each layer's
        kernels from Python (eager decoding at batch 1 waits on the host, not the GPU). Recording takes one
        step, not a compile; the numbers are eager's, so are the tokens."""
        self.decode_step = CUDAGraphStep(self.model.next_token_logits)

    @torch.no_grad()
    def generate_tokens(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                        top_k: int | None = None, top_p: float | None = None, use_kv_cache: bool = True,
                        generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
        """Yield max_new_tokens next-token ids (B, 1), one at a time, continuing idx (B, T). The model sees the last
        block_size tokens at positions 0..block_size-1. With the KV cache, a new token costs one row of attention
        while the sequence fits; past block_size, the window slides one token per step, every position changes,
        and the cache is refilled from the cropped window (as costly as no cache, and exactly what it computes)."""
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
        block_size = self.model.config.block_size
        kv_cache = self.kv_cache(idx.size(0), idx.device) if use_kv_cache else None
        length = 0  # the tokens of this generation the cache holds (0: none yet)
        next_id = idx[:, -1:]  # (B, 1): the token the next cached step reads
        for _ in range(max_new_tokens):
            if kv_cache is None or length in (0, block_size):  # no cache, or (re)fill it: the cropped window
                window = idx[:, -block_size:]
                length = window.size(1)
                logits = self.model.next_token_logits(window, kv_cache, torch.arange(length, device=idx.device))
            else:  # only the token sampled last, at the next position, written on the device (torch.tensor would
                # copy it from pageable host memory, which waits for the GPU to finish the step before)
                logits = self.decode_step(next_id, kv_cache, torch.full((1,), length, device=idx.device))
                length += 1
            next_id = sample_next_token(logits, temperature, top_k, top_p, generator)  # (B, 1)
            idx = torch.cat((idx, next_id), dim=1)
            yield next_id


class CUDAGraphStep:
    """The one-token decoding step recorded once as a CUDA graph, then replayed for every token. A graph replays
    the same kernels on the same memory: the step reads its inputs from fixed buffers (the new token and its
    position, copied in before each replay), writes the KV cache in place (its buffers never move) and leaves the
    logits in one fixed buffer, overwritten by the next replay. A new cache (another batch size) is recorded anew."""

    def __init__(self, step: Callable[[torch.Tensor, KVCache, torch.Tensor], torch.Tensor]):
        self.step = step  # (next_id (B, 1), kv_cache, positions (1,)) -> logits (B, vocab)
        self.cache: KVCache | None = None  # the cache the graph writes; None: nothing recorded yet
        self.recorded: tuple[torch.cuda.CUDAGraph, torch.Tensor] | None = None  # the graph and its logits buffer

    def __call__(self, next_id: torch.Tensor, kv_cache: KVCache, positions: torch.Tensor) -> torch.Tensor:
        if kv_cache is not self.cache:
            self.record(next_id, kv_cache, positions)
        if self.recorded is None:  # torch or the GPU refused the recording (said once): eager
            return self.step(next_id, kv_cache, positions)
        graph, logits = self.recorded
        self.next_id.copy_(next_id)
        self.positions.copy_(positions)
        graph.replay()
        return logits  # (B, vocab): read it before the next call overwrites it

    def record(self, next_id: torch.Tensor, kv_cache: KVCache, positions: torch.Tensor) -> None:
        self.next_id, self.positions = next_id.clone(), positions.clone()  # the graph's input buffers
        self.cache = kv_cache

        def step() -> torch.Tensor:
            return self.step(self.next_id, kv_cache, self.positions)

        on_side_stream(step, torch.cuda.Stream())  # once eagerly first; the replay writes the same key and value again
        self.recorded = record_cuda_graph(step, "the decoding step")
