"""A small generated sentiment task in SST-2's format, for offline demos and tests.

Sentences are built from templates: a subject, an optional intensifier, a polar adjective and
an optional negation (``not``/``never``) that flips the label; a few neutral filler clauses make
lengths vary. Label 1 = positive. The same ``seed`` always gives the same sentences. Written as
``train.tsv`` / ``dev.tsv`` with a ``sentence<TAB>label`` header, the set goes through the normal
local-file loader (task ``sst2``). From the command line: ``python -m mpcformer.data.make_synthetic FOLDER``.
"""

from __future__ import annotations

import random
from pathlib import Path

__all__ = ["synthetic_sentiment", "write_synthetic_sentiment"]

_SUBJECTS = ("the movie", "this film", "the plot", "the acting", "the soundtrack", "the script", "the ending",
             "the cast", "the director's work", "the story", "every scene", "the dialogue")
_POSITIVE = ("wonderful", "moving", "brilliant", "charming", "delightful", "gripping", "funny", "beautiful",
             "superb", "touching", "clever", "fresh")
_NEGATIVE = ("dull", "boring", "awful", "clumsy", "tedious", "predictable", "lifeless", "bland", "messy",
             "painful", "silly", "forgettable")
_INTENSIFIERS = ("", "", "very ", "truly ", "rather ", "quite ", "remarkably ")
_NEGATIONS = ("not ", "never ")
_FILLERS = ("", "", "", " , as expected", " from start to finish", " for most of its running time",
            " , at least in the second half", " in a way")


def _sentence(rng: random.Random) -> tuple[str, int]:
    positive = rng.random() < 0.5
    adjective = rng.choice(_POSITIVE if positive else _NEGATIVE)
    negated = rng.random() < 0.2
    verb = rng.choice(("is", "was", "feels", "seems"))
    negation = rng.choice(_NEGATIONS) if negated else ""
    text = f"{rng.choice(_SUBJECTS)} {verb} {negation}{rng.choice(_INTENSIFIERS)}{adjective}{rng.choice(_FILLERS)}"
    return text, int(positive != negated)


def synthetic_sentiment(num_examples: int, seed: int = 0) -> list[tuple[str, int]]:
    """``num_examples`` (sentence, label) pairs, deterministic in ``seed``."""
    rng = random.Random(seed)
    return [_sentence(rng) for _ in range(num_examples)]


def write_synthetic_sentiment(folder: str | Path, num_train: int = 2000, num_dev: int = 400, seed: int = 0) -> Path:
    """Write ``train.tsv`` and ``dev.tsv`` (SST-2 format) under ``folder``; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, count, split_seed in (("train", num_train, seed), ("dev", num_dev, seed + 10_007)):
        rows = synthetic_sentiment(count, split_seed)
        lines = ["sentence\tlabel"] + [f"{text}\t{label}" for text, label in rows]
        (folder / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
