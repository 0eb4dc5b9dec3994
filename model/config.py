"""The model's settings: GPTConfig, with every check on them, and the values each may take.
Every module of the model is built from it (`Block(config, layer_idx)`, ...), so a setting is
checked once, here, and means the same everywhere."""
from __future__ import annotations

from dataclasses import asdict, dataclass

ATTN_IMPLS = ("explicit", "sdpa", "flash")
ATTN_SCORES = ("dot", "additive")
POS_ENCODINGS = ("learned", "sinusoidal", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "gelu_tanh", "relu2")


@dataclass
class GPTConfig:
    """A model's settings. The defaults are the GPU default run's (config/model/gpt.yaml lists the
    same values, for the command line; a test keeps the two equal); the recipe and preset groups
    override some of them."""

    vocab_size: int = 8192
    block_size: int = 256  # context length in tokens
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.2  # on attention weights and residual branches, in training only
    bias: bool = False  # biases in Linear and LayerNorm layers (GPT-2 has them)
    attn_impl: str = "explicit"  # explicit | sdpa | flash
    attn_score: str = "dot"  # dot (query . key / sqrt(head_dim)) | additive (v . tanh(W_q q + W_k k); explicit only)
    attn_dim: int | None = None  # the additive score's hidden size per head; None = head_dim
    pos_encoding: str = "learned"  # learned | sinusoidal | rope
    norm: str = "layernorm"  # layernorm | rmsnorm
    qk_norm: bool = False  # RMS-normalise queries and keys per head
    mlp: str = "gelu"  # gelu | gelu_tanh (GPT-2's tanh approximation, "gelu_new") | relu2
    tie_weights: bool = True  # the LM head shares the token embedding matrix
    zero_init_proj: bool = False  # start W_O and the MLP's down projection at zero (blocks begin as identity)

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:  # True is an int in Python
                raise ValueError(f"model.{name}={value!r} must be a positive integer")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}: "
                f"pick n_embd as a multiple of n_head (head_dim = n_embd / n_head)"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)):
            raise ValueError(f"model.dropout={self.dropout!r} must be a number in [0, 1)")
        if not 0.0 <= self.dropout < 1.0:  # NaN too
            raise ValueError(f"model.dropout={self.dropout} must be in [0, 1)")
        for name in ("bias", "qk_norm", "tie_weights", "zero_init_proj"):
            if not isinstance(getattr(self, name), bool):  # a string "false" would be true
                raise ValueError(f"model.{name}={getattr(self, name)!r} must be true or false")
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"model.attn_impl={self.attn_impl!r} must be one of {', '.join(ATTN_IMPLS)}")
        if self.attn_score not in ATTN_SCORES:
            raise ValueError(f"model.attn_score={self.attn_score!r} must be one of {', '.join(ATTN_SCORES)}")
        if self.attn_dim is not None and (isinstance(self.attn_dim, bool) or not isinstance(self.attn_dim, int)
                                          or self.attn_dim < 1):
            raise ValueError(f"model.attn_dim={self.attn_dim!r} must be a positive integer, or null for head_dim")
        if self.attn_score == "additive" and self.attn_impl != "explicit":
            raise ValueError(
                f"model.attn_score=additive cannot run with model.attn_impl={self.attn_impl}: the fused kernels only "
                f"compute dot-product scores; use model.attn_impl=explicit"
            )
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"model.pos_encoding={self.pos_encoding!r} must be one of {', '.join(POS_ENCODINGS)}")
        for name, allowed in (("norm", NORMS), ("mlp", MLPS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"model.{name}={getattr(self, name)!r} must be one of {', '.join(allowed)}")
        if self.pos_encoding == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"model.pos_encoding=rope needs an even head_dim; n_embd / n_head = {self.n_embd // self.n_head}")

    def to_dict(self) -> dict:
        return asdict(self)
