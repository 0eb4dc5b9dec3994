"""Shared fixtures: a tiny bilingual corpus on disk, a sandboxed wandb, and a runner for the real
train.py / sample.py entry points."""
from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from trainer.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]

# A suite started in the background of a non-interactive shell (`bash .ci/run &`) inherits an
# ignored SIGINT, and so would every entry point it starts: the Ctrl-C tests would send signals
# nobody receives. Python's own handler here makes the children start with the default again.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ENGLISH = "the king and the queen walk to the castle at night while the rain falls on the sea".split()
CHINESE = "国王 和 王后 在 夜里 走 向 城堡 雨 落 在 海 上 中国 人民 经济 发展".split()

# the smallest model and schedule that still exercises every code path of train.py
TINY = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "model.dropout=0.0",
    "train.batch_size=8", "train.max_iters=30", "train.eval_interval=15", "train.eval_windows=4",
    "train.log_interval=5", "train.warmup_iters=5", "data.vocab_size=320", "device=cpu",
]


def composed(name: str, *overrides: str):
    """config/<name>.yaml with `overrides`, as the entry point's hydra composes it (before typed())."""
    from hydra import compose, initialize_config_dir

    import sample  # noqa: F401 - these two store the settings' defaults that config/*.yaml start from
    import trainer.config  # noqa: F401

    with initialize_config_dir(config_dir=str(REPO / "config"), version_base=None):
        return compose(name, overrides=list(overrides))


def overfit_losses(model, idx, steps: int, optimizers: list | None = None) -> list[float]:
    """The loss at each of `steps` optimizer steps on the one batch idx (B, T + 1): next-token targets,
    AdamW at lr 3e-3 unless optimizers are given."""
    optimizers = optimizers or [torch.optim.AdamW(model.parameters(), lr=3e-3)]
    losses = []
    for _ in range(steps):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def tiny_args(corpus: Path, data_root: Path, *extra: str) -> list[str]:
    """train.py's overrides for the tiny model on the custom corpus `corpus`, prepared into
    `data_root`; `extra` comes last and wins."""
    return [*TINY, "data=custom", f"data.text_paths=[{corpus}]", f"data.root={data_root}", *extra]


def make_tiny_corpus(folder: Path) -> Path:
    """Eight small documents, half English, half Chinese, as .txt files in `folder`."""
    rng = random.Random(0)
    folder.mkdir(parents=True)
    for i in range(8):
        words, joiner = (ENGLISH, " ") if i % 2 == 0 else (CHINESE, "")
        lines = [joiner.join(rng.choice(words) for _ in range(10)) for _ in range(60)]
        (folder / f"doc{i}.txt").write_text("\n".join(lines), encoding="utf-8")
    return folder


def fresh_machine_env(folder: Path) -> dict[str, str]:
    """The environment of a fresh machine for wandb: its folders in tmp, no API key, no netrc."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        env[name] = str(folder / name.lower())
        Path(env[name]).mkdir(parents=True, exist_ok=True)
    env["NETRC"] = str(folder / "no-netrc")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # keeps a --target install
    return env


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    return make_tiny_corpus(tmp_path / "corpus")


@pytest.fixture
def tiny_run(tmp_path) -> dict:
    corpus = make_tiny_corpus(tmp_path / "corpus")
    args = [*tiny_args(corpus, tmp_path / 'prepared'),
            "dtype=float32", "wandb.mode=disabled"]
    return {"tmp": tmp_path, "env": fresh_machine_env(tmp_path), "args": args}


# the optimizer settings of tests/test_gpu_path.py and tests/test_gpu_path_cli.py
ADAMW = TrainConfig(optimizer="adamw", weight_decay=0.1, learning_rate=1e-2, beta1=0.9, beta2=0.99)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_entry(script: str, *overrides: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run train.py or sample.py as a user would: a new process, hydra overrides, no stdin."""
    return subprocess.run(
        [sys.executable, str(REPO / script), *overrides],
        cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600,
    )


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real file system of `size` bytes (e.g. "256k") mounted at `folder`: writes past it fail
    with ENOSPC as on a full disk. Skips the test where mounting is not allowed (not root)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                             text=True, stdin=subprocess.DEVNULL)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill ({mounted.stderr.strip() or 'mount failed'}): needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, stdin=subprocess.DEVNULL)


# the probe texts of the shared tiny runs
PROBES = ["the king and the queen walk to the castle", "国王和王后在夜里走向城堡"]


def run_history(run_dir: Path) -> list[dict]:
    """The history rows of an offline run, read back from its .wandb log by wandb's own reader."""
    # `python -m wandb`, not the `wandb` script beside python: a `pip install --target` (the GPU
    # machine's recipe, ../shared/gpu/README.md) puts that script elsewhere
    result = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120, check=True)
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return [r["history"]["item"] for r in records if r.get("type") == "history"]


# tiny Hugging Face GPT-2 folders (tests/test_hf.py, tests/test_pretrained*.py): the shape of their models
GPT2_SHAPE = dict(n_layer=2, n_head=2, n_embd=32)


def make_gpt2(folder: Path, seed: int = 0, safetensors: bool = True, vocab_size: int = 300, n_positions: int = 64,
              **settings):
    """A tiny GPT2LMHeadModel with random weights (LayerNorm scales near 1, everything else noisy),
    saved to `folder` as transformers saves it; returned in eval mode."""
    import torch
    import transformers

    config = transformers.GPT2Config(**GPT2_SHAPE, n_positions=n_positions, vocab_size=vocab_size, **settings)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ln_" in name and name.endswith("weight"):
                param.copy_(1 + 0.2 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    if not safetensors:  # the older format, which transformers 5 no longer writes: torch.save's state dict
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return model


def write_gpt2_files(folder: Path, bpe) -> None:
    """vocab.json + merges.txt in GPT-2's format for the ranks and merges of `bpe` (data.tokenizer.Tokenizer)."""
    from data.gpt2 import bytes_to_unicode, merges_of

    chars = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(chars[b] for b in token)

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {text(token): rank for rank, token in enumerate(bpe.ranks)} | {"<|endoftext|>": len(bpe.ranks)}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges = ["#version: 0.2"] + [f"{text(a)} {text(b)}" for a, b in merges_of(bpe)]
    (folder / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")


def make_tiny_gpt2(folder: Path, corpus: Path, vocab_size: int = 300):
    """A pretrained model as the hub would give it, in small: a BPE of `corpus` (every .txt in it) as
    GPT-2's vocab.json + merges.txt, and a tiny GPT2LMHeadModel of that vocabulary, in `folder`."""
    from data.tokenizer import train_bpe

    texts = [path.read_text(encoding="utf-8") for path in sorted(corpus.glob("*.txt"))]
    make_gpt2(folder, vocab_size=vocab_size, bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)  # <|endoftext|>
    write_gpt2_files(folder, train_bpe(texts, vocab_size))
    return folder


# ---- a CUDA graph's contract on the CPU, for the code that records one (decoding, the training step):
# every aten kernel run while recording is kept, on the tensors it ran on, and a replay runs the same
# kernels on the same memory again, writing each result where the recording left it. Recording runs
# nothing (what the kernels wrote is put back, the random generator too), and what CUDA refuses is
# refused: a value read back to Python while recording (a host sync), a float64 rate for fused AdamW.

HOST_SYNCS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default}
# CUDA's fused Adam(W) kernels read a tensor learning rate through a float pointer: any other dtype fails
# there (the CPU kernels take any), and a recording only ever hands them tensor rates
FLOAT_RATE_KERNELS = {torch.ops.aten._fused_adamw_.tensor_lr, torch.ops.aten._fused_adam_.tensor_lr}


class RecordedGraph(TorchDispatchMode):
    """torch.cuda.CUDAGraph's contract on the CPU: kernels recorded while the mode is entered (as
    torch.cuda.graph(graph) is), replayed in order on the recorded tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.kernels: list[tuple] = []  # (op, args, kwargs, what it returned)
        self.written: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (tensor, its value before)
        self.replays = 0

    def __enter__(self):
        self.rng = torch.get_rng_state()
        return super().__enter__()

    def __exit__(self, failed, *exc) -> None:
        super().__exit__(failed, *exc)
        with torch.no_grad():
            for tensor, before in reversed(self.written.values()):
                tensor.copy_(before)
        torch.set_rng_state(self.rng)
        if failed:  # a kernel CUDA refused invalidates the capture: ending it raises too, after the kernel's error
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HOST_SYNCS:
            raise RuntimeError(f"{func} reads a value back to the host: a CUDA graph cannot record it")
        if func in FLOAT_RATE_KERNELS and kwargs["lr"].dtype != torch.float32:
            raise RuntimeError(f"{func}: expected scalar type Float but found {kwargs['lr'].dtype} (CUDA's lr)")
        values = [*zip(func._schema.arguments, args), *((a, kwargs[a.name]) for a in func._schema.arguments
                                                         if a.name in kwargs)]
        for tensor in tree_leaves([value for arg, value in values if arg.alias_info and arg.alias_info.is_write]):
            if isinstance(tensor, torch.Tensor) and id(tensor) not in self.written:
                self.written[id(tensor)] = (tensor, tensor.detach().clone())
        out = func(*args, **kwargs)
        self.kernels.append((func, args, kwargs, out))
        return out

    @torch.no_grad()  # kernels only: the recording's autograd graph ran as kernels too, backward included
    def replay(self) -> None:
        self.replays += 1
        for func, args, kwargs, out in self.kernels:
            new = func(*args, **kwargs)
            for recorded, fresh in zip(tree_leaves(out), tree_leaves(new)):
                if isinstance(fresh, torch.Tensor) and recorded.data_ptr() != fresh.data_ptr():  # not in place
                    recorded.copy_(fresh)  # a graph's kernel writes into the memory it was recorded with


class FakeStream:
    def wait_stream(self, other: FakeStream) -> None:
        pass


@pytest.fixture
def fake_cuda_graphs(monkeypatch) -> list[RecordedGraph]:
    """torch.cuda's streams and graphs replaced by the CPU stand-ins; the graphs recorded, in order."""
    recorded: list[RecordedGraph] = []

    def new_graph() -> RecordedGraph:
        recorded.append(RecordedGraph())
        return recorded[-1]

    current = [FakeStream()]  # torch.cuda's current stream

    @contextlib.contextmanager
    def graph(recording: RecordedGraph) -> Iterator[None]:
        # as torch.cuda.graph: records on a side stream of its own, made current, and makes the stream before
        # current again only after ending the capture, so a capture that fails to end leaves the side stream current
        before, current[0] = current[0], FakeStream()
        with recording:  # entering the mode records
            yield
        current[0] = before

    monkeypatch.setattr(torch.cuda, "CUDAGraph", new_graph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "set_stream", lambda stream: current.__setitem__(0, stream))
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    return recorded
