"""The GPT: token embeddings plus a positional encoding, a stack of blocks, a final norm and a
tied LM head; attention maps for inspection; generation with a KV cache."""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.block import Block, make_norm
from model.config import GPTConfig
from model.generation import sample_next_token
from model.kv_cache import KVCache
from model.positions import rotary_angles, sinusoidal_table


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings
        if config.pos_encoding == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)  # one trained vector per position
        elif config.pos_encoding == "sinusoidal":
            self.register_buffer("sinusoids", sinusoidal_table(config.block_size, config.n_embd), persistent=False)
        else:
            cos, sin = rotary_angles(config.block_size, config.n_embd // config.n_head)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, layer_idx) for layer_idx in range(config.n_layer))
        self.ln_f = make_norm(config.norm, config.n_embd, config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.compiled_decode = None  # set by compile_decoding
        self.cache: KVCache | None = None  # allocated by kv_cache, reused by every later generation
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight  # weight tying: one matrix reads and writes tokens
        self.apply(self._init_weights)
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2 * n_layer),
        # so the stream's variance does not grow with depth; or start them at zero
        for block in self.blocks:
            for proj in (block.attn.W_O, block.mlp.down):
                if config.zero_init_proj:
                    nn.init.zeros_(proj.weight)
                else:
                    nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; learned position embeddings excluded by default, tied token embeddings counted once."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding and hasattr(self, "wpe") else n

    def hidden_states(self, idx: torch.Tensor, kv_cache: KVCache | None = None, return_weights: bool = False,
                      positions: torch.Tensor | None = None):
        """idx: (B, T) -> final hidden states (B, T, C) and, with return_weights, each layer's
        attention weights (B, nh, T, T_k). positions (T,): where idx's tokens sit, 0..T-1 by
        default; with a cache, the positions that continue the tokens it holds."""
        B, T = idx.size()
        if positions is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens is longer than block_size={self.config.block_size}")
            positions = torch.arange(T, device=idx.device)  # (T,)
        x = self.wte(idx)  # (B, T, C)
        rotary = None
        if self.config.pos_encoding == "learned":
            x = x + self.wpe(positions)
        elif self.config.pos_encoding == "sinusoidal":  # added in fp32 (the table's), then one rounding to x's dtype
            x = (x + self.sinusoids[positions]).to(x.dtype)
        else:
            rotary = (self.rope_cos[positions], self.rope_sin[positions])  # (T, hs/2) each
        x = self.drop(x)
        all_weights = []
        for block in self.blocks:
            x, weights = block(x, rotary, kv_cache, positions, return_weights)
            all_weights.append(weights)
        return self.ln_f(x), all_weights

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx: (B, T) token ids -> logits (B, T, vocab), and the mean cross-entropy if targets given."""
        x, _ = self.hidden_states(idx)
        logits = self.lm_head(x)  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> torch.Tensor:
        """Every head's attention weights for idx (B, T) -> (n_layer, B, n_head, T, T).

        Computed through explicit_attention whatever attn_impl is (fused kernels never form the
        weights), in eval mode (no dropout), with the model's own positional encoding.
        """
        was_training = self.training
        self.eval()
        _, weights = self.hidden_states(idx, return_weights=True)
        self.train(was_training)
        return torch.stack(weights)

    def next_token_logits(self, idx: torch.Tensor, kv_cache: KVCache | None = None,
                          positions: torch.Tensor | None = None) -> torch.Tensor:
        """The logits (B, vocab) of the token that follows idx (B, T); kv_cache and positions as in
        hidden_states."""
        x, _ = self.hidden_states(idx, kv_cache, positions=positions)
        return self.lm_head(x[:, -1, :])

    def to_inference_dtype(self, dtype: torch.dtype) -> GPT:
        """Cast the weights to `dtype` for generation (bf16 halves the memory each new token reads),
        but not the position tables: sines, cosines and RoPE's angles keep fp32 precision, and the
        rotation or sum is rounded to `dtype` once, after it is computed."""
        for param in self.parameters():
            param.data = param.data.to(dtype)  # in place: the tied head keeps sharing the embedding
        return self

    def kv_cache(self, batch: int, device: torch.device) -> KVCache:
        """The KV cache for a generation of `batch` sequences: allocated once and reused while batch,
        dtype and device stay the same, so a compiled decoding step always writes the same buffers."""
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else self.wte.weight.dtype
        if self.cache is None or not self.cache.fits(batch, dtype, device):
            c = self.config
            self.cache = KVCache(c.n_layer, batch, c.n_head, c.block_size, c.n_embd // c.n_head, dtype, device)
        return self.cache

    def compile_decoding(self) -> None:
        """torch.compile the step that turns one new token into the next token's logits with the KV
        cache: the step generation repeats for every token. Its shapes never change (the cache
        has a fixed size and fixed addresses), so it compiles once: on a CPU into generated C++
        whose matrix-vector kernels read the weights far faster than eager PyTorch; on a GPU into
        Triton kernels replayed as one CUDA graph per token (mode max-autotune). The weights are
        frozen into the compiled code (inference only). Costs tens of seconds up front."""
        import torch._inductor.config as inductor

        # freezing applies to graphs compiled without autograd only, so training is unaffected;
        # set here, not through torch.compile's options=, which made decoding slower
        inductor.freezing = True
        inductor.autotune_num_choices_displayed = 0  # the kernel timings are the compiler's business,
        inductor.max_autotune_report_choices_stats = False  # not the reader's
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")  # raised inside torch's autotuner
        self.compiled_decode = torch.compile(self.next_token_logits, mode="max-autotune", fullgraph=True, dynamic=False)

    def decode_step(self, next_id: torch.Tensor, kv_cache: KVCache, positions: torch.Tensor) -> torch.Tensor:
        """The logits (B, vocab) after one new token (B, 1) at `positions` (1,), compiled when
        compile_decoding was called."""
        if self.compiled_decode is None:
            return self.next_token_logits(next_id, kv_cache, positions)
        # a new replay: the last step's logits (a CUDA graph's output buffer) were already read
        torch.compiler.cudagraph_mark_step_begin()
        return self.compiled_decode(next_id, kv_cache, positions)

    @torch.no_grad()
    def generate_tokens(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_kv_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield max_new_tokens next-token ids (B, 1), one at a time, continuing idx (B, T).

        The model always sees the last block_size tokens at positions 0..block_size-1. With the
        KV cache, each new token costs one row of attention while the sequence fits in
        block_size; once it is longer, the window slides by one token per step, every position
        changes, and the cache is refilled from the cropped window (as costly as no cache, and
        exactly what the uncached path computes).
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
        block_size = self.config.block_size
        kv_cache = self.kv_cache(idx.size(0), idx.device) if use_kv_cache else None
        length = 0  # the tokens of this generation the cache holds (0: none yet)
        next_id = idx[:, -1:]  # (B, 1): the token the next cached step reads
        for _ in range(max_new_tokens):
            if kv_cache is None:
                logits = self.next_token_logits(idx[:, -block_size:])
            elif length in (0, block_size):
                window = idx[:, -block_size:]  # (re)fill the cache with the cropped window
                length = window.size(1)
                logits = self.next_token_logits(window, kv_cache, torch.arange(length, device=idx.device))
            else:  # only the token sampled last, at the next position
                logits = self.decode_step(next_id, kv_cache, torch.tensor([length], device=idx.device))
                length += 1
            next_id = sample_next_token(logits, temperature, top_k, top_p, generator)  # (B, 1)
            idx = torch.cat((idx, next_id), dim=1)
            yield next_id

    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_kv_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """idx (B, T) followed by max_new_tokens generated tokens -> (B, T + max_new_tokens);
        temperature 0 is greedy. See generate_tokens for what happens past block_size."""
        new = list(self.generate_tokens(idx, max_new_tokens, temperature, top_k, top_p, use_kv_cache, generator))
        return torch.cat([idx, *new], dim=1)
