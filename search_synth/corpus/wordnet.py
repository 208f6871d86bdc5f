"""WordNet's own database (Debian's `wordnet-base`: /usr/share/wordnet/data.{noun,verb,adj,adv}) as a corpus:
one document per synset, its words as the title and synonyms, its gloss as the text, and its pointers
(hypernym, hyponym, part, antonym, ...) as links to the other synsets, named in the text so they can be searched.

Line format (wndb(5)): `offset lex_filenum ss_type w_cnt word lex_id [word lex_id]... p_cnt [ptr]... [frames]
| gloss`, with w_cnt in hexadecimal and each pointer `symbol offset pos source/target`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from search_synth.corpus.model import CorpusError, Document
from search_synth.corpus.sources import Source

FILES = (("noun", "n"), ("verb", "v"), ("adj", "a"), ("adv", "r"))
POS_NAMES = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
POINTERS = {"@": "is a kind of", "@i": "is an instance of", "~": "has kinds", "~i": "has instances",
            "#m": "is a member of", "#s": "is a substance of", "#p": "is a part of", "%m": "has members",
            "%s": "has substances", "%p": "has parts", "!": "is the opposite of", "=": "has attribute",
            "*": "entails", ">": "causes", "&": "is similar to", "^": "see also", "+": "is related to",
            "$": "verb group", "<": "participle of", "\\": "pertains to", ";c": "topic domain",
            "-c": "member of topic domain", ";r": "region domain", "-r": "member of region domain",
            ";u": "usage domain", "-u": "member of usage domain"}


def _doc_id(pos: str, offset: str) -> str:
    return f"wordnet:{'a' if pos == 's' else pos}:{offset}"


@dataclass
class Synset:
    doc_id: str
    pos: str
    words: list[str]
    pointers: list[tuple[str, str]]  # (symbol, target doc id)
    gloss: str


def parse_line(line: str) -> Synset | None:
    if not line or line.startswith("  "):  # the licence header lines start with two spaces
        return None
    data, _, gloss = line.partition(" | ")
    fields = data.split()
    offset, pos, count = fields[0], fields[2], int(fields[3], 16)
    words = [fields[4 + 2 * i].replace("_", " ") for i in range(count)]
    words = [w.split("(")[0] for w in words]  # adjective markers like "(a)" or "(p)"
    at = 4 + 2 * count
    pointers = []
    for i in range(int(fields[at])):
        symbol, target, target_pos = fields[at + 1 + 4 * i: at + 4 + 4 * i]
        pointers.append((symbol, _doc_id(target_pos, target)))
    return Synset(_doc_id(pos, offset), pos, words, pointers, gloss.strip())


@dataclass
class WordNetSource(Source):
    folder: Path = Path("/usr/share/wordnet")

    def describe(self) -> str:
        return f"wordnet:{self.folder.resolve()}"

    def _synsets(self) -> Iterator[Synset]:
        for name, _ in FILES:
            path = self.folder / f"data.{name}"
            if not path.exists():
                raise CorpusError(f"no WordNet database file {path} (apt-get install wordnet-base)")
            with path.open(encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    synset = parse_line(line.rstrip("\n"))
                    if synset:
                        yield synset

    def documents(self, skip: int = 0) -> Iterator[Document]:
        titles = {s.doc_id: s.words[0] for s in self._synsets()}  # ~120k short strings: names for the links
        for number, synset in enumerate(self._synsets()):
            if number < skip:
                continue
            relations: dict[str, list[str]] = {}
            for symbol, target in synset.pointers:
                if target in titles and target != synset.doc_id:
                    relations.setdefault(POINTERS.get(symbol, "related"), []).append(titles[target])
            lines = [f"{', '.join(synset.words)} ({POS_NAMES.get(synset.pos, synset.pos)}): {synset.gloss}"]
            lines += [f"{synset.words[0]} {relation} {', '.join(dict.fromkeys(names))}."
                      for relation, names in relations.items()]
            links = list(dict.fromkeys(t for _, t in synset.pointers if t in titles and t != synset.doc_id))
            attributes = {"part_of_speech": POS_NAMES.get(synset.pos, synset.pos)}
            if len(synset.words) > 1:
                attributes["synonyms"] = "; ".join(synset.words)
            yield Document(doc_id=synset.doc_id, title=synset.words[0], text="\n".join(lines),
                           url=f"wordnet://{synset.doc_id.split(':', 1)[1]}", links=links, attributes=attributes)
