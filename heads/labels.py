"""Readable labels for tokens on heatmap axes and in the head view.

Byte-level BPE tokens can hold part of a UTF-8 character (a CJK character is three bytes and may
be split across tokens). Such tokens are grouped with their neighbours until the bytes decode,
and each is labelled with the whole text and its part: '中文(1/2)', '中文(2/2)'. Invisible
characters get visible stand-ins, and characters no bundled font can draw become U+XXXX, so a
plot never shows U+FFFD or an empty box.
"""
from __future__ import annotations

from collections.abc import Callable

VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def token_texts(token_bytes: list[bytes]) -> list[str]:
    """One label per token: its text, or the text of the smallest run of tokens that decodes, with i/n."""
    labels: list[str] = []
    start = 0
    while start < len(token_bytes):
        end, text = start + 1, None
        while end <= len(token_bytes):
            try:
                text = b"".join(token_bytes[start:end]).decode("utf-8")
                break
            except UnicodeDecodeError as e:
                if e.reason != "unexpected end of data" or end == len(token_bytes):
                    break
                end += 1
        if text is None:  # bytes that never become valid UTF-8: show them as hex
            labels.append(" ".join(f"{b:02x}" for b in token_bytes[start]))
            start += 1
            continue
        n = end - start
        labels += [text] if n == 1 else [f"{text}({i + 1}/{n})" for i in range(n)]
        start = end
    return labels


def visible(text: str, drawable: Callable[[str], bool] = lambda ch: True) -> str:
    """Whitespace as visible symbols; characters no font can draw as U+XXXX."""
    return "".join(VISIBLE.get(ch) or (ch if drawable(ch) else f"U+{ord(ch):04X}") for ch in text)
