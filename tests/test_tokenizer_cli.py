"""The BPE tokenizer through sample.py in a child process: no sample ends a stream with a
replacement character, in any output format. The tokenizer's own tests are in tests/test_tokenizer.py."""
from __future__ import annotations

import json
import re

from conftest import fresh_machine_env, make_tiny_corpus, run_entry, tiny_args

from data.tokenizer import EOT, Tokenizer

# --- through sample.py ---------------------------------------------------------------------------

def expected_text(data: bytes) -> str:
    """`data` as errors="replace" decodes it, less an incomplete character at the end."""
    text = ""
    while True:
        try:
            return text + data.decode("utf-8")
        except UnicodeDecodeError as e:
            text += data[:e.start].decode("utf-8")
            if e.reason == "unexpected end of data":  # the first bytes of a character, cut off
                return text
            text, data = text + "\ufffd", data[e.end:]


def sample_blocks(stdout: str) -> list[str]:
    """What text format prints under each sample's header: the prompt, the new text, a line break."""
    return re.split(r"^--- sample \d+/\d+ \(prompt .*\) ---\n", stdout, flags=re.M)[1:]


def test_sample_never_ends_a_stream_with_a_replacement_character(tmp_path):
    # a 10-step model writes byte tokens of Chinese characters at random: some samples end (or reach
    # <|endoftext|>) inside a character, which sample.py used to print as U+FFFD
    corpus = make_tiny_corpus(tmp_path / "corpus")
    env = fresh_machine_env(tmp_path)
    result = run_entry("train.py", *tiny_args(corpus, tmp_path / 'data'),
                       "dtype=float32", "wandb.mode=disabled", "train.max_iters=10", "train.eval_interval=5",
                       f"out_dir={tmp_path / 'out'}", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    tokenizer = Tokenizer.load(tmp_path / "out" / "tokenizer.json")
    prompts = ["", "中国", "the king", "王", "人民", "雨"]
    common = [f"out_dir={tmp_path / 'out'}", "device=cpu", "seed=1", "max_new_tokens=8",
              "prompt=[" + ", ".join(f'"{p}"' for p in prompts) + "]"]
    outputs = {}
    # the last run: 16 samples a prompt (one batch), so that some of its 96 endings cut a character
    for fmt, stream, n in (("jsonl", "false", 1), ("text", "true", 1), ("text", "false", 1), ("jsonl", "false", 16)):
        result = run_entry("sample.py", *common, f"format={fmt}", f"stream={stream}", f"num_samples={n}", cwd=tmp_path,
                           env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        outputs[fmt, stream, n] = result.stdout
    samples = [json.loads(line) for line in outputs["jsonl", "false", 1].splitlines()]
    assert [s["prompt"] for s in samples] == prompts
    cut = 0
    for s in samples + [json.loads(line) for line in outputs["jsonl", "false", 16].splitlines()]:
        documents = tokenizer.decode_bytes(s["tokens"]).split(EOT.encode())
        assert s["text"] == "\n".join(expected_text(d) for d in documents), s
        cut += sum(expected_text(d) != d.decode("utf-8", errors="replace") for d in documents)
    assert cut >= 1  # the case at hand: at least one character cut by the end or by <|endoftext|>
    expected = [s["prompt"] + s["text"] + "\n" for s in samples]
    assert sample_blocks(outputs["text", "true", 1]) == expected  # streamed
    assert sample_blocks(outputs["text", "false", 1]) == expected
