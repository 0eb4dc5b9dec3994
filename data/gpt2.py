"""The Hugging Face GPT-2 format without transformers: pretrained GPT-2 in (`resolve_gpt2`, `load_gpt2`,
`gpt2_tokenizer`) and folders out that GPT2LMHeadModel and AutoTokenizer load with our logits and ids (`export_gpt2`).
GPT-2 is our recipe with bias=true, learned positions, LayerNorm, tanh-GELU and a tied head; its weights differ from
ours in names and layout only. Every problem is a one-line PretrainedError naming the file, setting or tensor.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch

from common.errors import UserError
from data.tokenizer import EOT, Tokenizer
from model.config import GPTConfig
from model.gpt import GPT

HUB_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
SCRATCH = "scratch"  # train.py's init_from default: a new model of the model group's settings
HUB_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json", "vocab.json", "merges.txt", "tokenizer.json"]
SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN = "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"
# tiktoken's "gpt2" split pattern (r50k_pat_str): GPT-2's own with possessive quantifiers, which cut
# text the same way, faster; with tiktoken's string an imported GPT-2 tokenizer is stock "gpt2" exactly
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# HF activation_function -> our mlp; gelu_new and gelu_pytorch_tanh are both GELU's tanh approximation
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
EXPORT_ACTIVATION = {"gelu_tanh": "gelu_new", "gelu": "gelu"}  # gelu_new: the name every GPT-2 tool knows
LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which our norms use; GPT-2's too
EXPORT_FILES = {"config.json", SAFETENSORS, "tokenizer.json", "tokenizer_config.json"}
# our names -> GPT-2's (without its "transformer." prefix); W_Q, W_K and W_V all go into c_attn
RENAMES = {"blocks.": "h.", "attn.W_Q": "attn.c_attn", "attn.W_K": "attn.c_attn", "attn.W_V": "attn.c_attn",
           "attn.W_O": "attn.c_proj", "mlp.up": "mlp.c_fc", "mlp.down": "mlp.c_proj"}
# what GPT-2's architecture cannot express: setting -> (value, why)
NOT_GPT2 = {"pos_encoding": ("rope", "GPT-2 adds a position table, it does not rotate queries and keys"),
            "norm": ("rmsnorm", "GPT-2 normalises with LayerNorm"),
            "qk_norm": (True, "GPT-2 does not normalise queries and keys"),
            "mlp": ("relu2", "GPT-2's MLP uses GELU"),
            "attn_score": ("additive", "GPT-2 scores with scaled dot products")}


class PretrainedError(UserError):
    """A pretrained model that cannot be found, read, expressed or written."""


def pretrained_rule(value: str | None) -> str | None:
    """A hub name or an existing folder; whether the folder holds a GPT-2 is data.gpt2's business."""
    if value is None or value in (SCRATCH, *HUB_MODELS) or os.path.isdir(value):
        return None
    return f"{', '.join(HUB_MODELS)} or a folder in Hugging Face format (config.json, weights, tokenizer)"


# weights: which of our tensors make each Hugging Face tensor
def weight_map(ours: Iterable[str], tie_weights: bool) -> dict[str, list[str]]:
    """GPT-2's name -> our names whose tensors, concatenated along dim 0 (out features), make it."""
    pairs: dict[str, list[str]] = {}
    for name in ours:
        theirs = name
        for old, new in RENAMES.items():
            theirs = theirs.replace(old, new)
        if not (tie_weights and name == "lm_head.weight"):
            pairs.setdefault(theirs, []).append(name)
    return pairs


def conv1d(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """A block's matrix between nn.Linear's (out, in) and HF Conv1D's (in, out: x @ W + b), either way."""
    return tensor.T if name.startswith("h.") and tensor.dim() == 2 else tensor


def to_hf(ours: dict[str, torch.Tensor], tie_weights: bool) -> dict[str, torch.Tensor]:
    """Our state dict -> GPT-2's tensors, fp32 and contiguous; a bias we leave out (bias=false) is written as zeros."""
    out = {name: conv1d(name, torch.cat([ours[n] for n in names]).float()).contiguous().cpu()
           for name, names in weight_map(ours, tie_weights).items()}
    for name in [n for n in out if n.startswith(("h.", "ln_f.")) and n.endswith(".weight")]:
        out.setdefault(name.removesuffix("weight") + "bias", torch.zeros(out[name].shape[-1]))  # (out features,)
    return out


# in: find, configure and load a pretrained GPT-2
def resolve_gpt2(name_or_path: str | Path) -> Path:
    """A folder holding config.json and weights, or gpt2 ... gpt2-xl from the hub (HF_HUB_OFFLINE=1: its cache only)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PretrainedError(f"{path} holds no config.json: point at a Hugging Face GPT-2 folder "
                                  f"(config.json and {SAFETENSORS} or {TORCH_BIN})")
        if not any((path / name).is_file() for name in (SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN)):
            raise PretrainedError(f"{path} holds no weights ({SAFETENSORS} or {TORCH_BIN}): download them into it")
        return path
    name = str(name_or_path)
    if name not in HUB_MODELS:
        raise PretrainedError(f"{name!r} is neither a folder nor a GPT-2 model of the Hugging Face hub: give a "
                              f"folder holding config.json and {SAFETENSORS}, or one of {', '.join(HUB_MODELS)}")
    from huggingface_hub import constants, snapshot_download

    repo = f"openai-community/{name}"
    try:
        # etag_timeout: an unreachable hub fails in seconds, not after minutes of waiting
        return Path(snapshot_download(repo, allow_patterns=HUB_FILES, etag_timeout=5))
    except Exception as e:  # no network, offline mode, DNS, HTTP errors, a broken cache
        if constants.HF_HUB_OFFLINE:
            cause = "HF_HUB_OFFLINE is set and it is not in the hub's cache"
        else:  # the hub's messages run over lines; its first says what failed ("Got: ConnectError: ...")
            first = next((line.removeprefix("Got: ") for line in str(e).splitlines() if line.strip()), "")
            cause = f"{type(e).__name__}: {first[:120]}; no network?"
        raise PretrainedError(
            f"could not download {name!r} from the Hugging Face hub ({cause}): "
            f"download it where you have network (`hf download {repo} config.json {SAFETENSORS} vocab.json merges.txt "
            f"--local-dir {name}`) and pass its folder, init_from=/path/to/{name}"
        ) from None


def gpt2_config(path: Path, block_size: int | None, applied: dict) -> GPTConfig:
    """Our GPTConfig for a config.json; a missing setting takes GPT2Config's default, as in transformers. applied:
    the settings of ours that a checkpoint does not fix (dropout, attn_impl, attn_tile)."""
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PretrainedError(f"{path} cannot be read as JSON ({e}): download it again") from None
    if not isinstance(settings, dict):
        raise PretrainedError(f"{path} is not a GPT2Config (a JSON object): download it again")

    def refuse(what: str) -> PretrainedError:
        return PretrainedError(f"{path}: {what}, which our GPT cannot express: use a standard GPT-2 checkpoint")

    if settings.get("model_type", "gpt2") != "gpt2":
        raise PretrainedError(f"{path} is a {settings['model_type']!r} model, not GPT-2 (model_type gpt2)")
    activation = settings.get("activation_function", "gelu_new")
    if activation not in ACTIVATIONS:
        raise refuse(f"activation_function={activation!r} (ours: {', '.join(ACTIVATIONS)})")
    n_embd, n_positions = settings.get("n_embd", 768), settings.get("n_positions", 1024)
    if settings.get("n_inner") not in (None, 4 * n_embd):
        raise refuse(f"n_inner={settings['n_inner']} (ours is 4 * n_embd = {4 * n_embd})")
    eps = settings.get("layer_norm_epsilon", LAYER_NORM_EPS)
    if not isinstance(eps, (int, float)) or not math.isclose(eps, LAYER_NORM_EPS, rel_tol=1e-6):
        raise refuse(f"layer_norm_epsilon={eps} (our LayerNorm uses {LAYER_NORM_EPS})")
    for key, ours in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                      ("add_cross_attention", False)):
        if settings.get(key, ours) != ours:
            raise refuse(f"{key}={settings[key]}")
    # reorder_and_upcast_attn only changes the precision of fp16 attention: in fp32 the numbers are the same
    if block_size is not None and block_size > n_positions:
        raise PretrainedError(f"model.block_size={block_size} is longer than {path}'s n_positions={n_positions}: "
                              f"the model has no position embedding past {n_positions}; "
                              f"use model.block_size<={n_positions}")
    try:  # GPTConfig's own checks (n_embd divisible by n_head, ...), naming this file rather than model.*
        return GPTConfig(
            vocab_size=settings.get("vocab_size", 50257), block_size=block_size or n_positions,
            n_layer=settings.get("n_layer", 12), n_head=settings.get("n_head", 12), n_embd=n_embd, bias=True,
            pos_encoding="learned", norm="layernorm", mlp=ACTIVATIONS[activation],
            tie_weights=bool(settings.get("tie_word_embeddings", True)), **applied,
        )
    except ValueError as e:
        raise PretrainedError(f"{path}: {e}") from None


def read_weights(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """A folder's tensors (model.safetensors, sharded or not, or pytorch_model.bin) and the file to name in messages,
    without the "transformer." prefix or the causal masks old transformers stored (attn.bias, attn.masked_bias)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = folder / SAFETENSORS_INDEX
    if (folder / SAFETENSORS).is_file():
        files = [folder / SAFETENSORS]
    elif index.is_file():
        try:
            files = [folder / shard for shard in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise PretrainedError(f"{index} is not a safetensors index ({e}): download it again") from None
    else:
        files = [folder / TORCH_BIN]
    tensors = {}
    for file in files:
        try:  # weights_only: loading a pickle never runs code from it
            loaded = load_file(file) if file.suffix == ".safetensors" else torch.load(file, "cpu", weights_only=True)
        except (OSError, SafetensorError, RuntimeError, ValueError, EOFError) as e:
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise PretrainedError(f"{file} cannot be read ({first_line[:160]}): download it again") from None
        if not isinstance(loaded, dict):
            raise PretrainedError(f"{file} holds no state dict of tensors: download it again")
        tensors.update({name.removeprefix("transformer."): tensor for name, tensor in loaded.items()
                        if not name.endswith((".attn.bias", ".attn.masked_bias"))})
    return tensors, files[0] if len(files) == 1 else index


def load_gpt2(folder: str | Path, block_size: int | None = None, **applied) -> tuple[GPT, GPTConfig]:
    """resolve_gpt2's folder as our GPT in eval mode on the CPU (fp32 logits equal to GPT2LMHeadModel's); block_size
    cuts the context and the position table; applied: GPTConfig settings a checkpoint does not fix (dropout, ...)."""
    config_path = Path(folder) / "config.json"
    config = gpt2_config(config_path, block_size, applied)
    theirs, source = read_weights(config_path.parent)
    if "wpe.weight" in theirs:
        theirs["wpe.weight"] = theirs["wpe.weight"][: config.block_size]  # (block_size, C)
    head = theirs.pop("lm_head.weight", None) if config.tie_weights else None
    if head is not None and "wte.weight" in theirs and not torch.equal(head, theirs["wte.weight"]):
        raise PretrainedError(f"{source}: lm_head.weight differs from wte.weight but {config_path} says "
                              "tie_word_embeddings=true: set it to false in config.json")
    model = GPT(config)
    expected = to_hf(model.state_dict(), config.tie_weights)
    missing = [name for name in expected if name not in theirs]
    if missing:
        raise PretrainedError(f"{source} misses {missing[0]}: it does not fit {config_path}; download both again")
    unexpected = [name for name in theirs if name not in expected]
    if unexpected:
        raise PretrainedError(f"{source} has {unexpected[0]}, which GPT-2 of {config_path} does not: "
                              "it is not a GPT2LMHeadModel checkpoint")
    for name, tensor in theirs.items():
        if tensor.shape != expected[name].shape:
            raise PretrainedError(f"{source}: {name} has shape {tuple(tensor.shape)}, {config_path} needs "
                                  f"{tuple(expected[name].shape)}: download both again")
        if not torch.isfinite(tensor).all():
            raise PretrainedError(f"{source}: {name} holds NaN or inf values: download it again")
    ours = {}
    for name, names in weight_map(model.state_dict(), config.tie_weights).items():
        ours.update(zip(names, conv1d(name, theirs[name]).chunk(len(names))))  # c_attn: (3C, C) -> 3 x (C, C)
    if config.tie_weights:
        ours["lm_head.weight"] = ours["wte.weight"]
    model.load_state_dict(ours)  # copies into fp32 parameters; the tie stays
    return model.eval(), config


def check_vocab(tokenizer: Tokenizer, config: GPTConfig, folder: Path) -> None:
    """A folder's tokenizer must have one id for each row of its model's embedding."""
    if tokenizer.vocab_size != config.vocab_size:
        raise PretrainedError(f"the tokenizer of {folder} has {tokenizer.vocab_size} tokens but its model's vocab_size "
                              f"is {config.vocab_size}: use the tokenizer files the model was trained with")


# out: a GPT2LMHeadModel folder
def hf_config(config: GPTConfig, tokenizer: Tokenizer | None) -> dict:
    """config.json of a GPT2LMHeadModel with our model's shape."""
    eot = tokenizer.eot_id if tokenizer is not None else None
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": config.vocab_size,
        "n_positions": config.block_size, "n_ctx": config.block_size, "n_embd": config.n_embd,
        "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": None,
        "activation_function": EXPORT_ACTIVATION[config.mlp], "layer_norm_epsilon": LAYER_NORM_EPS,
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
        "initializer_range": 0.02, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "tie_word_embeddings": config.tie_weights, "use_cache": True,
        "bos_token_id": eot, "eos_token_id": eot, "torch_dtype": "float32",
    }


def export_gpt2(model: GPT, out_dir: Path, tokenizer: Tokenizer | None = None) -> None:
    """Write `out_dir` as a GPT2LMHeadModel folder (and the tokenizer, if given) beside it, then rename it into place:
    a failure never leaves a folder that looks complete. Only an empty folder or a previous export is replaced."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    config = model.config
    for name, (value, why) in NOT_GPT2.items():
        if getattr(config, name) == value:
            shown = str(value).lower() if isinstance(value, bool) else value
            raise PretrainedError(f"model.{name}={shown} cannot be exported as GPT-2 ({why}): only recipes GPT-2 can "
                                  "express export (learned or sinusoidal positions, layernorm, gelu or gelu_tanh, dot "
                                  "scores, no qk_norm)")
    out_dir = Path(out_dir)
    held = {p.name for p in out_dir.iterdir()} if out_dir.is_dir() else None
    previous = held is not None and (not held or {"config.json", SAFETENSORS} <= held <= EXPORT_FILES)
    if out_dir.exists() and not previous:  # empty, or an export of ours: never a user's folder
        raise PretrainedError(f"{out_dir} exists and is not a previous export"
                              + (f" (it holds {', '.join(sorted(held))})" if held else "")
                              + ": choose an empty or new folder, or remove it")
    ours = model.state_dict()
    if config.pos_encoding == "sinusoidal":
        ours["wpe.weight"] = model.sinusoids  # (block_size, C): added to the embeddings as a learned table would be
    tensors = to_hf(ours, config.tie_weights)  # GPT2LMHeadModel's names: its body is "transformer."
    tensors = {k if k == "lm_head.weight" else f"transformer.{k}": v for k, v in tensors.items()}
    tmp, old = (out_dir.with_name(f".{out_dir.name}.{os.getpid()}.{end}") for end in ("tmp", "old"))
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / "config.json").write_text(json.dumps(hf_config(config, tokenizer), indent=2) + "\n", encoding="utf-8")
        save_file(tensors, tmp / SAFETENSORS, metadata={"format": "pt"})  # transformers refuses files without it
        if tokenizer is not None:
            (tmp / "tokenizer.json").write_text(json.dumps(hf_tokenizer_json(tokenizer), ensure_ascii=False),
                                                encoding="utf-8")
            settings = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOT, "eos_token": EOT,
                        "unk_token": EOT, "model_max_length": config.block_size, "add_bos_token": False,
                        "add_eos_token": False, "clean_up_tokenization_spaces": False}  # decode gives back the bytes
            (tmp / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            out_dir.rename(old)  # the previous export stays whole until the new one is in place
        tmp.rename(out_dir)
    except (OSError, SafetensorError) as e:  # safetensors says "I/O error: No space left on device (os error 28)"
        if old.exists() and not out_dir.exists():
            old.rename(out_dir)
        why = e.strerror if isinstance(e, OSError) else str(e).rpartition("error: ")[2].split(" (os error")[0]
        raise PretrainedError(f"cannot write {out_dir} ({why or e}): free disk space or choose a writable "
                              "folder; nothing was left half-written") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


# tokenizers: ours (tiktoken ranks over bytes) <-> byte-level BPE in Hugging Face's formats
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table: byte-level vocab files store every token as
    text, the printable bytes as themselves and the others shifted past 255 (a space is Ġ)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [byte for byte in range(256) if byte not in printable]
    return {byte: chr(byte) for byte in printable} | {byte: chr(256 + i) for i, byte in enumerate(shifted)}


def merges_of(tokenizer: Tokenizer) -> list[tuple[bytes, bytes]]:
    """The merge that makes each token of rank r, in rank order: its BPE with the ranks below r (the
    adjacent pair of lowest rank first, as tiktoken), which ends in two parts for a vocabulary BPE built."""
    ranks = {token: rank for rank, token in enumerate(tokenizer.ranks)}
    merges = []
    for rank, token in enumerate(tokenizer.ranks):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best, i = min((ranks.get(parts[i] + parts[i + 1], rank), i) for i in range(len(parts) - 1))
            if best >= rank:
                raise PretrainedError(f"token {rank} ({token!r}) of tokenizer {tokenizer.name!r} is not the merge of "
                                      "two earlier tokens, so it has no byte-level BPE merge: retrain the tokenizer")
            parts[i: i + 2] = [parts[i] + parts[i + 1]]
        merges.append((parts[0], parts[1]))
    return merges


def hf_tokenizer_json(tokenizer: Tokenizer) -> dict:
    """tokenizer.json that encodes as ours: our split regex, then ByteLevel without its own regex, then BPE with our
    merges; ignore_merges: a piece that is a whole token becomes that token at once, as in tiktoken."""
    chars = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(chars[b] for b in token)

    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for s, i in sorted(tokenizer.special_tokens.items())],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tokenizer.pattern}, "behavior": "Isolated", "invert": False},
            byte_level]},
        "post_processor": None, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": {text(token): rank for rank, token in enumerate(tokenizer.ranks)},
                  # "a b" strings: byte-level text has no spaces, and every tokenizers version reads this form
                  "merges": [f"{text(a)} {text(b)}" for a, b in merges_of(tokenizer)]},
    }


def tokenizer_files(folder: Path) -> list[Path]:
    """The files gpt2_tokenizer reads from a GPT-2 folder: vocab.json + merges.txt, else tokenizer.json."""
    for names in (("vocab.json", "merges.txt"), ("tokenizer.json",)):
        if all((Path(folder) / name).is_file() for name in names):
            return [Path(folder) / name for name in names]
    raise PretrainedError(f"{folder} holds no tokenizer (vocab.json + merges.txt, or tokenizer.json): "
                          "download them with the model")


def model_name(folder: Path) -> str:
    """A GPT-2 folder's short name: gpt2 for the hub cache's models--openai-community--gpt2/snapshots/<commit>."""
    folder = Path(folder).resolve()
    return folder.parent.parent.name.split("--")[-1] if folder.parent.name == "snapshots" else folder.name


def tokenizer_label(folder: Path) -> str:
    """What data tokenized by a folder's tokenizer is keyed by, e.g. gpt2-1f2e3d4c: its files hashed, not parsed."""
    digest = hashlib.sha256()
    for path in tokenizer_files(folder):
        try:
            digest.update(path.read_bytes())
        except OSError as e:
            raise PretrainedError(f"{path} cannot be read ({e.strerror or e}): download it again") from None
    return f"{model_name(folder)}-{digest.hexdigest()[:8]}"


def split_pattern(pre_tokenizer: dict | None, source: Path) -> str:
    """A byte-level tokenizer.json's split regex: a Split's (our exports), or ByteLevel's built-in GPT-2 one."""
    for step in (pre_tokenizer or {}).get("pretokenizers", [pre_tokenizer] if pre_tokenizer else []):
        if step.get("type") == "Split" and "Regex" in step.get("pattern", {}):
            return step["pattern"]["Regex"]
        if step.get("type") == "ByteLevel" and step.get("use_regex", True):
            return GPT2_PATTERN
    raise PretrainedError(f"{source}'s pre_tokenizer is not byte-level BPE's (a Split regex or ByteLevel with "
                          "use_regex): only GPT-2-style tokenizers can be imported")


def gpt2_tokenizer(folder: Path) -> Tokenizer:
    """Our Tokenizer from a GPT-2 folder's vocab.json + merges.txt or tokenizer.json: ranks are the ids, which must
    follow the merge order (tiktoken merges by rank, HF by merge order), so GPT-2's is tiktoken's "gpt2" exactly."""
    files = tokenizer_files(folder)
    source = files[-1]  # merges.txt or tokenizer.json: what the messages name
    try:
        if len(files) == 2:  # vocab.json + merges.txt
            vocab, pattern = json.loads(files[0].read_text(encoding="utf-8")), GPT2_PATTERN
            merges = [line.split(" ") for line in files[1].read_text(encoding="utf-8").splitlines()
                      if line and not line.startswith("#version")]
            specials = [EOT] if EOT in vocab else []
        else:
            spec = json.loads(source.read_text(encoding="utf-8"))
            merges = [m.split(" ") if isinstance(m, str) else m for m in spec["model"]["merges"]]
            pattern = split_pattern(spec.get("pre_tokenizer"), source)
            added = {t["content"]: t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
            vocab, specials = {**spec["model"]["vocab"], **added}, list(added)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PretrainedError(f"the tokenizer files of {folder} cannot be read ({e}): download them again") from None
    if EOT not in specials:
        raise PretrainedError(f"{source} has no {EOT} token, which our models separate documents with")
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
    regular = sorted((i, token) for token, i in vocab.items() if token not in specials)
    if [i for i, _ in regular] != list(range(len(regular))):
        raise PretrainedError(f"{source}: the ids of the tokens are not 0..{len(regular) - 1} without gaps")
    bad = next((token for _, token in regular if any(c not in byte_of for c in token)), None)
    if bad is not None:
        raise PretrainedError(f"{source}: token {bad!r} is not byte-level text: only byte-level BPE "
                              "(GPT-2's) can be imported")
    ranks = [bytes(byte_of[c] for c in token) for _, token in regular]
    if len({r for r in ranks if len(r) == 1}) != 256:
        raise PretrainedError(f"{source} lacks some of the 256 single bytes: only byte-level BPE can be imported")
    last = -1
    for line, merge in enumerate(merges, 1):
        merged = vocab.get("".join(merge), -1) if len(merge) == 2 else -1
        if merged <= last:
            raise PretrainedError(f"{source}: merge {line} ({' '.join(merge)}) does not make a token with a higher id "
                                  "than the merge before it: ids must follow the merge order, as GPT-2's do")
        last = merged
    special_tokens = {token: vocab[token] for token in specials}
    if sorted(special_tokens.values()) != list(range(len(ranks), len(ranks) + len(specials))):
        raise PretrainedError(f"{source}: the special tokens ({', '.join(specials)}) must have the ids after the "
                              "regular tokens")
    return Tokenizer("gpt2" if pattern == GPT2_PATTERN else "bpe", pattern, ranks, special_tokens)
