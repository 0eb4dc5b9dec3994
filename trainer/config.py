"""The settings of train.py (RunConfig) as typed dataclasses mirroring config/train.yaml field by field.
train.py converts its hydra config once, first thing (`typed(RunConfig, cfg, "")`, common/settings.py):
from then on every value has its type and range, and nothing has been read or written for a bad setting.
sample.py's settings are in sample.py."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from common.device import DTYPES
from common.errors import ConfigError
from common.settings import check_fields, device_setting, not_blank, seed_setting, setting, store_defaults
from common.wandb_run import MODES
from data.config import DataConfig
from data.gpt2 import SCRATCH, pretrained_rule
from heads.config import ReportSettings
from model import GPTConfig
from trainer.optim import OPTIMIZERS

RESUME = ("auto", "true", "false")


@dataclasses.dataclass
class TrainConfig:
    """The `train` group of config/train.yaml: optimisation and the loop's rhythm."""
    batch_size: int = setting(64, minimum=1, fix="sequences per optimizer step, e.g. train.batch_size=64")
    grad_accum: int = setting(1, minimum=1, fix="micro-batches per step, e.g. train.grad_accum=1")
    max_iters: int = setting(5000, minimum=1, fix="optimizer steps, e.g. train.max_iters=5000")
    resume: str = setting("auto", check=lambda mode: None if mode in RESUME else "auto, true or false",
                          fix="auto continues from out_dir/ckpt.pt when it is there")
    overwrite: bool = setting(False, fix="true lets a new run replace the checkpoints in out_dir")
    max_seconds: float = setting(0.0, minimum=0, fix="a time budget in seconds, or train.max_seconds=0 for none")
    eval_interval: int = setting(250, minimum=1, fix="steps between evaluations, e.g. train.eval_interval=250")
    eval_windows: int = setting(64, minimum=1, fix="val windows per group, e.g. train.eval_windows=64")
    log_interval: int = setting(10, minimum=1, fix="steps between log lines, e.g. train.log_interval=10")
    learning_rate: float = setting(1e-3, above=0, fix="the peak learning rate, e.g. train.learning_rate=1e-3")
    optimizer: str = setting("adamw", choices=OPTIMIZERS, fix="adamw for everything, muon for the hidden matrices")
    min_lr: float = setting(1e-4, minimum=0, fix="the learning rate at the end of the decay, e.g. train.min_lr=1e-4")
    warmup_iters: int = setting(100, minimum=0, fix="steps of linear warmup, e.g. train.warmup_iters=100 (0 = none)")
    lr_decay_iters: int = setting(5000, minimum=1,
                                  fix="the step where the decay reaches min_lr, usually train.max_iters")
    weight_decay: float = setting(0.1, minimum=0, fix="AdamW's decoupled weight decay, e.g. train.weight_decay=0.1")
    beta1: float = setting(0.9, minimum=0, below=1, fix="Adam's momentum, e.g. train.beta1=0.9")
    beta2: float = setting(0.99, minimum=0, below=1, fix="Adam's second-moment decay, e.g. train.beta2=0.99")
    grad_clip: float = setting(1.0, minimum=0, fix="the gradient norm to clip to, or train.grad_clip=0 for none")
    max_nonfinite: int = setting(10, minimum=1, fix="non-finite steps in a row before stopping, e.g. 10")

    def __post_init__(self):
        check_fields(self, "train.")  # built by hand (tests, benches) it meets hydra's rules too


@dataclasses.dataclass
class WandbConfig(ReportSettings):
    """The `wandb` group of config/train.yaml: the run, and its attention report (ReportSettings)."""
    mode: str = setting("auto", choices=MODES, fix="auto is online with an API key, else offline")
    project: str = setting("gpt-attention", check=not_blank, fix="e.g. wandb.project=gpt-attention")
    name: str | None = setting(None, fix="a run name, or null for wandb's own")
    attn_every: int = setting(1000, minimum=0, fix="steps between attention reports, or wandb.attn_every=0 for none")
    ablation: str = setting("final", choices=("final", "every", "off"),
                            fix="final ablates the heads in the last report only, every in each")
    # which reports draw PNGs, and where (heads/plots.py: Painter)
    pictures: str = setting("auto", choices=("auto", "inline", "background", "final"),
                            fix="auto is background on a GPU and final on a CPU; inline draws every report's in "
                                "place, background in a worker process, final the last report's only")


@dataclasses.dataclass
class RunConfig:
    """train.py's whole config (config/train.yaml with its groups)."""
    out_dir: str = setting("out", path=True, fix="the folder for the checkpoints, e.g. out_dir=out")
    init_from: str = setting(SCRATCH, path=True, check=pretrained_rule,
                             fix="scratch trains a new model; a GPT-2 is fine-tuned with its own architecture and "
                                 "tokenizer (of the model group only block_size, dropout, attn_impl and attn_tile "
                                 "apply)")
    device: str = device_setting()
    dtype: str = setting("auto", choices=DTYPES,
                         fix="auto: bf16 where the hardware has it, else fp16 on GPUs, else fp32")
    compile: str = setting("auto", choices=("auto", "true", "false"),
                           fix="auto compiles on CUDA only: a 2-core CPU spent 65 s of the CPU preset's 420 s "
                               "compiling, for steps ~15 % faster, so no more steps in all")
    cuda_graph: str = setting("auto", choices=("auto", "true", "false"),
                              fix="auto replays the whole training step as one recorded CUDA graph on one CUDA GPU, "
                                  "not with several processes or fp16's loss scaling")
    seed: int = seed_setting()
    model: dict[str, Any] = setting({k: v for k, v in dataclasses.asdict(GPTConfig()).items() if k != "vocab_size"},
                                    fix="model.<setting>=<value>: see model/config.py (GPTConfig)")
    data: DataConfig = setting(DataConfig())
    train: TrainConfig = setting(TrainConfig())
    wandb: WandbConfig = setting(WandbConfig())

    def __post_init__(self):
        self.gpt_config()  # the model's settings too, before any data is read

    def compiles(self, device_type: str) -> bool:
        """Whether the training step is torch.compiled on this device type: compile=auto on CUDA only."""
        return self.compile == "true" or (self.compile == "auto" and device_type == "cuda")

    def records_cuda_graph(self, device_type: str, world_size: int, dtype: torch.dtype) -> bool:
        """Whether the training step replays a recorded CUDA graph (trainer/cuda_graph.py): cuda_graph=auto does
        on one CUDA GPU in bf16 or fp32. DDP's all-reduce and fp16's loss scaling are not recorded."""
        fits = device_type == "cuda" and world_size == 1 and dtype != torch.float16
        if self.cuda_graph == "true" and not fits:
            raise ConfigError(f"cuda_graph=true records one CUDA GPU's step in bf16 or fp32 (this run: {device_type}, "
                              f"{world_size} process(es), {str(dtype).removeprefix('torch.')}): use cuda_graph=auto")
        return self.cuda_graph == "true" or (self.cuda_graph == "auto" and fits)

    def gpt_config(self, vocab_size: int = GPTConfig.vocab_size) -> GPTConfig:
        """model.* as a GPTConfig; its vocab_size comes from the tokenizer, not from the config."""
        known = {f.name for f in dataclasses.fields(GPTConfig)} - {"vocab_size"}
        for key, value in self.model.items():
            if key not in known:
                why = ("comes from the tokenizer: set data.vocab_size" if key == "vocab_size"
                       else f"the model settings are {', '.join(sorted(known))}")
                raise ConfigError(f"model.{key}={value!r} is not a setting: {why}")
        return GPTConfig(vocab_size=vocab_size, **self.model)  # checked by the same rules as every setting


store_defaults("train_settings", RunConfig)  # config/train.yaml starts from these
