"""Where documents come from. A source yields `Document`s in a fixed order and can skip the first n of them,
which is how an interrupted ingest resumes; `describe()` is the `source` part of the corpus identity.

Kinds: JSONL and Parquet (`id, title, url, text`, optional `links`, `attributes`), a folder of text, Markdown
and HTML files, dictd databases (`.index` + `.dict.dz`), Kiwix ZIM files, and facts from installed PyPI data
packages (`facts.py`). Cross-references become `links`: dictd `{word}` marks, HTML anchors to other documents.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urldefrag

from search_synth.corpus.model import CorpusError, Document

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst"}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}


class Source:
    """A stream of documents in a stable order."""

    def describe(self) -> str:
        raise NotImplementedError

    def documents(self, skip: int = 0) -> Iterator[Document]:
        raise NotImplementedError


@dataclass
class Limited(Source):
    """The first `limit` documents of another source."""

    inner: Source
    limit: int

    def describe(self) -> str:
        return f"{self.inner.describe()} limit={self.limit}"

    def documents(self, skip: int = 0) -> Iterator[Document]:
        return islice(self.inner.documents(skip), max(0, self.limit - skip))


@dataclass
class Chained(Source):
    """Several sources one after the other (e.g. several Debian dictionaries in one corpus)."""

    parts: list[Source]

    def describe(self) -> str:
        return " + ".join(p.describe() for p in self.parts)

    def documents(self, skip: int = 0) -> Iterator[Document]:
        for part in self.parts:
            for doc in part.documents(0):
                if skip:
                    skip -= 1
                    continue
                yield doc


def _record_document(record: dict, where: str) -> Document:
    if not isinstance(record, dict):
        raise CorpusError(f"{where}: expected an object with id, title, url, text")
    doc_id, text = record.get("id", record.get("doc_id")), record.get("text")
    if doc_id is None or doc_id == "" or not isinstance(text, str):
        raise CorpusError(f"{where}: needs a non-empty 'id' and a string 'text'")
    links = record.get("links") or []
    attributes = record.get("attributes") or {}
    if isinstance(attributes, str):
        attributes = json.loads(attributes)
    return Document(doc_id=str(doc_id), title=str(record.get("title") or doc_id), text=text,
                    url=str(record.get("url") or ""), links=[str(x) for x in links],
                    attributes={str(k): str(v) for k, v in dict(attributes).items()})


@dataclass
class JsonlSource(Source):
    path: Path

    def describe(self) -> str:
        return f"jsonl:{self.path.resolve()}"

    def documents(self, skip: int = 0) -> Iterator[Document]:
        _must_exist(self.path)
        with self.path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                if number <= skip or not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise CorpusError(f"{self.path}:{number}: not JSON ({exc})") from None
                yield _record_document(record, f"{self.path}:{number}")


@dataclass
class ParquetSource(Source):
    path: Path

    def describe(self) -> str:
        return f"parquet:{self.path.resolve()}"

    def documents(self, skip: int = 0) -> Iterator[Document]:
        import pyarrow.parquet as pq

        _must_exist(self.path)
        try:
            parquet = pq.ParquetFile(self.path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise CorpusError(f"{self.path}: not a Parquet file ({exc})") from None
        row = 0
        for batch in parquet.iter_batches(batch_size=2048):
            if row + batch.num_rows <= skip:
                row += batch.num_rows
                continue
            for record in batch.to_pylist():
                row += 1
                if row > skip:
                    yield _record_document(record, f"{self.path} row {row}")


@dataclass
class FolderSource(Source):
    """Text, Markdown and HTML files under a folder; the document id is the path relative to the folder."""

    root: Path

    def describe(self) -> str:
        return f"folder:{self.root.resolve()}"

    def documents(self, skip: int = 0) -> Iterator[Document]:
        if not self.root.is_dir():
            raise CorpusError(f"{self.root} is not a folder")
        files = sorted(p for p in self.root.rglob("*") if p.is_file()
                       and p.suffix.lower() in TEXT_SUFFIXES | HTML_SUFFIXES)
        known = {p.relative_to(self.root).as_posix() for p in files}
        for path in files[skip:]:
            rel = path.relative_to(self.root).as_posix()
            raw = path.read_bytes().decode("utf-8", errors="replace")
            if path.suffix.lower() in HTML_SUFFIXES:
                title, text, hrefs = html_to_text(raw)
                links = _resolve_links(rel, hrefs, known)
                yield Document(doc_id=rel, title=title or path.stem, text=text, url=path.resolve().as_uri(),
                               links=links)
            else:
                yield Document(doc_id=rel, title=_first_heading(raw) or path.stem, text=raw,
                               url=path.resolve().as_uri())


def _first_heading(text: str) -> str:
    for line in text.splitlines()[:20]:
        line = line.strip()
        if line:
            return line.lstrip("#").strip()[:200]
    return ""


def html_to_text(html: str) -> tuple[str, str, list[str]]:
    """(title, readable text, hrefs) of an HTML page: trafilatura's main-text extraction, and the whole
    visible text when trafilatura finds no main text (short pages, index pages)."""
    import lxml.html
    import trafilatura

    try:
        tree = lxml.html.fromstring(html)
    except Exception:  # noqa: BLE001 - an empty or broken page is an empty document, not a failed ingest
        return "", "", []
    title = (tree.findtext(".//title") or "").strip()
    if not title:
        heading = tree.find(".//h1")
        title = heading.text_content().strip() if heading is not None else ""
    hrefs = [a.get("href") for a in tree.iter("a") if a.get("href")]
    text = trafilatura.extract(html, include_comments=False, include_tables=True, favor_recall=True) or ""
    if len(text) < 40:
        for bad in tree.xpath("//script|//style|//noscript"):
            bad.drop_tree()
        text = re.sub(r"[ \t]+", " ", re.sub(r"\n\s*\n+", "\n\n", tree.text_content())).strip()
    return title, text, hrefs


def _resolve_links(current: str, hrefs: list[str], known: set[str]) -> list[str]:
    """Anchors that point at other documents of the same collection, as their ids (order kept, no repeats)."""
    links: list[str] = []
    base = PurePosixPath(current).parent
    for href in hrefs:
        target, _ = urldefrag(href)
        if not target or "://" in target or target.startswith(("mailto:", "javascript:", "data:")):
            continue
        parts: list[str] = []
        for piece in (PurePosixPath(unquote(target.lstrip("/"))) if target.startswith("/")
                      else base / unquote(target)).parts:
            if piece == "..":
                if parts:
                    parts.pop()
            elif piece not in (".", ""):
                parts.append(piece)
        resolved = "/".join(parts)
        if resolved in known and resolved != current and resolved not in links:
            links.append(resolved)
    return links


# ---------------------------------------------------------------------------------------------- dictd

_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}
_CROSS_REFERENCE = re.compile(r"\{([^{}]{1,80})\}")


def dictd_number(text: str) -> int:
    """A dictd index number: base64 digits, most significant first (not RFC 4648 byte encoding)."""
    value = 0
    for char in text:
        try:
            value = value * 64 + _B64[char]
        except KeyError:
            raise CorpusError(f"bad dictd index number {text!r}") from None
    return value


@dataclass
class DictdSource(Source):
    """A dictd database: `NAME.index` (headword, offset, length) and `NAME.dict.dz` (dictzip, i.e. gzip).

    Entries are read in file order (the index sorted by offset), so the dictionary is decompressed once,
    front to back, in bounded memory. Several headwords sharing an entry make one document; `{word}` marks
    (GCIDE, FOLDOC, Jargon) become links to the entry of that headword and plain words in the text."""

    index_path: Path
    name: str = ""
    _entries: list[tuple[int, int, list[str]]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if not self.name:
            self.name = self.index_path.name.removesuffix(".index")

    @property
    def dict_path(self) -> Path:
        for suffix in (".dict.dz", ".dict"):
            candidate = self.index_path.with_name(self.name + suffix)
            if candidate.exists():
                return candidate
        raise CorpusError(f"no {self.name}.dict.dz or {self.name}.dict next to {self.index_path}")

    def describe(self) -> str:
        return f"dictd:{self.index_path.resolve()}"

    def _read_index(self) -> tuple[list[tuple[int, int, list[str]]], dict[str, str]]:
        _must_exist(self.index_path)
        by_span: dict[tuple[int, int], list[str]] = {}
        for number, line in enumerate(self.index_path.read_bytes().decode("utf-8", "replace").splitlines(), 1):
            parts = line.split("\t")
            if len(parts) < 3:
                if line.strip():
                    raise CorpusError(f"{self.index_path}:{number}: expected 'headword<TAB>offset<TAB>length'")
                continue
            headword = parts[0]
            if headword.startswith("00-database-") or headword.startswith("00database"):
                continue
            by_span.setdefault((dictd_number(parts[1]), dictd_number(parts[2])), []).append(headword)
        entries = sorted((offset, length, words) for (offset, length), words in by_span.items())
        ids: dict[str, str] = {}
        seen: dict[str, int] = {}
        for _, _, words in entries:
            first = words[0]
            n = seen[first.lower()] = seen.get(first.lower(), 0) + 1
            doc_id = f"{self.name}:{first}" if n == 1 else f"{self.name}:{first}#{n}"
            words[:] = [doc_id, *words]
            for word in words[1:]:
                ids.setdefault(word.lower(), doc_id)
        return entries, ids

    def documents(self, skip: int = 0) -> Iterator[Document]:
        entries, ids = self._read_index()
        path = self.dict_path
        opener = gzip.open if path.suffix == ".dz" else open
        position = 0
        with opener(path, "rb") as data:
            for number, (offset, length, names) in enumerate(entries):
                if number < skip:
                    continue
                if offset > position:  # entries are usually separated by a newline or two: read past them
                    data.read(offset - position)
                elif offset < position:  # an entry overlapping the previous one (rare): gzip rereads from the top
                    data.seek(offset)
                raw = data.read(length)
                position = offset + length
                doc_id, headwords = names[0], names[1:]
                text = raw.decode("utf-8", errors="replace").strip()
                links: list[str] = []
                for ref in _CROSS_REFERENCE.findall(text):
                    target = ids.get(" ".join(ref.split()).lower())
                    if target and target != doc_id and target not in links:
                        links.append(target)
                text = _CROSS_REFERENCE.sub(lambda m: m.group(1), text)
                yield Document(doc_id=doc_id, title=headwords[0], text=text, url=f"dict://{self.name}/{headwords[0]}",
                               links=links, attributes={"dictionary": self.name}
                               | ({"headwords": "; ".join(headwords)} if len(headwords) > 1 else {}))


# ---------------------------------------------------------------------------------------------- ZIM


@dataclass
class ZimSource(Source):
    """A Kiwix ZIM archive (e.g. a Wikipedia dump): every HTML entry that is not a redirect (metadata, listings,
    images and styles are skipped); the document id is the entry's path."""

    path: Path

    def describe(self) -> str:
        return f"zim:{self.path.resolve()}"

    def documents(self, skip: int = 0) -> Iterator[Document]:
        try:
            from libzim.reader import Archive
        except ImportError:
            raise CorpusError("reading ZIM files needs libzim: pip install libzim") from None
        _must_exist(self.path)
        try:
            archive = Archive(str(self.path))
        except RuntimeError as exc:
            raise CorpusError(f"{self.path}: not a readable ZIM file ({exc})") from None
        entries = []
        for entry_id in range(archive.all_entry_count):
            entry = archive._get_entry_by_id(entry_id)
            if entry.is_redirect:
                continue
            if entry.get_item().mimetype.startswith("text/html"):  # not metadata, listings, images, styles
                entries.append(entry_id)
        known = {archive._get_entry_by_id(i).path for i in entries}
        for entry_id in entries[skip:]:
            entry = archive._get_entry_by_id(entry_id)
            item = entry.get_item()
            title, text, hrefs = html_to_text(bytes(item.content).decode("utf-8", errors="replace"))
            links = _resolve_links(entry.path, hrefs, known)
            yield Document(doc_id=entry.path, title=entry.title or title or entry.path, text=text,
                           url=f"zim://{self.path.name}/{entry.path}", links=links)


def _must_exist(path: Path) -> None:
    if not path.exists():
        raise CorpusError(f"{path} does not exist")
