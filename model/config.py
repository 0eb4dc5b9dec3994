"""The model's settings: GPTConfig, with every check on them and the values each may take. Every module of the
model is built from it (`Block(config, layer_idx)`, ...), so a setting is checked once, here (common/settings.py)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from common.errors import ConfigError
from common.settings import check_fields, setting

ATTN_IMPLS = ("explicit", "tiled", "sdpa", "flash")
ATTN_SCORES = ("dot", "additive")


@dataclass
class GPTConfig:
    """Each setting's type, range and default, stated once. The defaults are the GPU default run's."""

    vocab_size: int = setting(8192, minimum=1, fix="the tokenizer's vocabulary: set data.vocab_size")
    block_size: int = setting(256, minimum=1, fix="the context length in tokens, e.g. model.block_size=256")
    n_layer: int = setting(6, minimum=1, fix="the number of blocks, e.g. model.n_layer=6")
    n_head: int = setting(6, minimum=1, fix="attention heads per block, e.g. model.n_head=6")
    n_embd: int = setting(384, minimum=1, fix="the width of the residual stream, e.g. model.n_embd=384")
    dropout: float = setting(0.2, minimum=0, below=1,
                             fix="on attention weights and residual branches in training, e.g. model.dropout=0.2")
    bias: bool = setting(False, fix="biases in Linear and LayerNorm layers (GPT-2 has them): true or false")
    attn_impl: str = setting("explicit", choices=ATTN_IMPLS,
                             fix="explicit shows every attention step; tiled runs them in tiles as flash does, in "
                                 "plain PyTorch (model/attention.py); sdpa and flash are PyTorch's fused kernels")
    attn_tile: int = setting(64, minimum=1, fix="queries and keys per tile of attn_impl=tiled, e.g. model.attn_tile=64")
    attn_score: str = setting("dot", choices=ATTN_SCORES, fix="dot is query . key / sqrt(head_dim); additive is "
                                                              "Bahdanau's v . tanh(W_q q + W_k k) (explicit only)")
    attn_dim: int | None = setting(None, minimum=1,
                                   fix="the additive score's hidden size per head, or null for head_dim")
    pos_encoding: str = setting("learned", choices=("learned", "sinusoidal", "rope"), fix="learned, sinusoidal or rope")
    norm: str = setting("layernorm", choices=("layernorm", "rmsnorm"), fix="layernorm or rmsnorm")
    qk_norm: bool = setting(False, fix="true RMS-normalises each head's queries and keys")
    mlp: str = setting("gelu", choices=("gelu", "gelu_tanh", "relu2"),
                       fix="gelu, gelu_tanh (GPT-2's tanh approximation) or relu2 (ReLU squared)")
    tie_weights: bool = setting(True, fix="true: the LM head shares the token embedding matrix")
    zero_init_proj: bool = setting(False, fix="true starts W_O and the MLP's down projection at zero")

    def __post_init__(self):
        check_fields(self, "model.")  # each setting alone; then the ones that depend on each other
        if self.n_embd % self.n_head != 0:
            raise ConfigError(f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}: "
                              "pick n_embd as a multiple of n_head (head_dim = n_embd / n_head)")
        if self.attn_score == "additive" and self.attn_impl != "explicit":
            raise ConfigError(f"model.attn_score=additive cannot run with model.attn_impl={self.attn_impl}: only the "
                              "explicit path computes additive scores, the others dot products; use "
                              "model.attn_impl=explicit")
        if self.pos_encoding == "rope" and (self.n_embd // self.n_head) % 2:
            raise ConfigError(f"model.pos_encoding=rope needs an even head_dim; n_embd / n_head = "
                              f"{self.n_embd // self.n_head}")

    def to_dict(self) -> dict:
        return asdict(self)
