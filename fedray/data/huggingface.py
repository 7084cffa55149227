"""Hugging Face datasets as a data source: natural federated datasets from config alone.

``data.dataset: huggingface`` loads ``datasets.load_dataset(data.name, split=data.split)``
inside each host (cached by ``datasets`` in ``~/.cache/huggingface``), e.g.
``flwrlabs/femnist`` (handwritten characters by writer, LEAF: Caldas et al. 2018,
arXiv:1812.01097), ``flwrlabs/shakespeare`` (next character by speaking role) or
``flwrlabs/cifar10``. With ``data.path`` the same code path reads local files through
a packaged builder: ``data.name: parquet`` (or ``csv``, ``json``) and
``data.path: FILES``, which is how the tests run offline.

Columns become arrays:

* an image column (``datasets.Image``): float32 in [0, 1], with a channel axis;
* a text column: one integer per character in ``data.vocabulary`` (default: every
  character of the split, sorted, so all hosts agree), padded or cut to
  ``data.sequence_length`` (default: the longest); a one-character label column
  (Shakespeare's next character) is encoded with the same vocabulary, and the class
  count is the vocabulary's size;
* a text column without a label column is cut into windows of ``sequence_length``
  characters, each labelled with the character that follows it;
* anything else: ``numpy.asarray``.

Partition by a natural column with ``data.partition: column`` and ``data.column``
(``writer_id``, ``character_id``), or with any partitioner.

Layer 3 (an edge): ``datasets`` is an optional extra (``pip install "fedray[hf]"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedray.config import DataConfig
from fedray.errors import DataError

FEATURE_COLUMNS = ("image", "img", "x", "text", "features")
"""Tried in order when ``data.feature`` is unset."""


def _load(cfg: DataConfig, split: str) -> Any:
    try:
        import datasets
    except ImportError:  # pragma: no cover - the dev extra installs it
        raise DataError(
            "data.dataset='huggingface' needs the Hugging Face extra: pip install \"fedray[hf]\""
        ) from None
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    kwargs: dict[str, Any] = {"split": split}
    if cfg.path:
        kwargs["data_files"] = cfg.path
    try:
        return datasets.load_dataset(cfg.name, **kwargs)
    except Exception as exc:  # datasets raises many types (hub, files, splits)
        raise DataError(
            f"data.name={cfg.name!r} (split {split!r}"
            + (f", data.path={cfg.path!r}" if cfg.path else "")
            + f"): cannot load it: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        ) from None


def _feature(table: Any, cfg: DataConfig) -> str:
    if cfg.feature is not None:
        if cfg.feature not in table.column_names:
            raise DataError(
                f"data.feature={cfg.feature!r} is not a column of {cfg.name!r}; "
                f"columns are: {', '.join(table.column_names)}"
            )
        return cfg.feature
    for name in FEATURE_COLUMNS:
        if name in table.column_names and name != cfg.label:
            return name
    raise DataError(
        f"{cfg.name!r} has none of the feature columns {list(FEATURE_COLUMNS)}; set "
        f"data.feature to one of: {', '.join(table.column_names)}"
    )


def vocabulary(texts: list[str], given: str | None) -> str:
    """``given``, or every character of ``texts`` in sorted order.

    >>> vocabulary(["ba", "c"], None), vocabulary(["zz"], "xyz")
    ('abc', 'xyz')
    """
    return given if given is not None else "".join(sorted(set("".join(texts))))


def encode_text(texts: list[str], vocab: str, length: int) -> np.ndarray:
    """Each text as ``length`` character ids (cut, or padded with id 0).

    >>> encode_text(["ab", "c"], "abc", 3).tolist()
    [[0, 1, 0], [2, 0, 0]]

    Raises:
        DataError: A character outside the vocabulary.
    """
    index = {c: i for i, c in enumerate(vocab)}
    out = np.zeros((len(texts), length), np.int64)
    for row, text in enumerate(texts):
        try:
            ids = [index[c] for c in text[:length]]
        except KeyError as exc:
            raise DataError(
                f"character {exc.args[0]!r} is not in data.vocabulary ({len(vocab)} characters)"
            ) from None
        out[row, : len(ids)] = ids
    return out


def windows(text: str, length: int) -> tuple[list[str], list[str]]:
    """Every ``length``-character window of ``text`` and the character after it.

    >>> windows("abcd", 2)
    (['ab', 'bc'], ['c', 'd'])
    """
    starts = range(len(text) - length)
    return [text[i : i + length] for i in starts], [text[i + length] for i in starts]


def _is_text(kind: Any) -> bool:
    return getattr(kind, "dtype", None) in ("string", "large_string")


def _images(column: Any) -> np.ndarray:
    x = np.stack([np.asarray(img, np.float32) for img in column]) / 255.0
    return x[..., None] if x.ndim == 3 else x


def _arrays(
    table: Any, cfg: DataConfig, vocab: str | None
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    import datasets

    feature = _feature(table, cfg)
    groups: dict[str, np.ndarray] = {}
    if cfg.partition == "column" and cfg.column:
        if cfg.column not in table.column_names:
            raise DataError(
                f"data.column={cfg.column!r} is not a column of {cfg.name!r}; "
                f"columns are: {', '.join(table.column_names)}"
            )
        groups[cfg.column] = np.asarray(table[cfg.column])
    kind = table.features[feature]
    if isinstance(kind, datasets.Image):
        x = _images(table[feature])
    elif _is_text(kind):
        texts = list(table[feature])
        if cfg.label not in table.column_names:  # raw text: next-character windows
            pairs = [windows(t, cfg.sequence_length or 80) for t in texts]
            texts, labels = [w for p in pairs for w in p[0]], [c for p in pairs for c in p[1]]
            group_rows = [len(p[0]) for p in pairs]
            groups = {k: np.repeat(v, group_rows) for k, v in groups.items()}
        else:
            labels = list(table[cfg.label])
        if vocab is None:
            raise ValueError("a text column needs the vocabulary (load_arrays sets it)")
        length = cfg.sequence_length or max((len(t) for t in texts), default=1)
        x = encode_text(texts, vocab, length).astype(np.float32)
        return x, encode_text([str(c) for c in labels], vocab, 1)[:, 0], groups
    else:
        x = np.asarray(table[feature], np.float32)
    if cfg.label not in table.column_names:
        raise DataError(
            f"{cfg.name!r} has no label column {cfg.label!r} (data.label); columns are: "
            f"{', '.join(table.column_names)}"
        )
    return x, np.asarray(table[cfg.label]), groups


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, Any]]


def load_arrays(cfg: DataConfig) -> tuple[Arrays, int | None]:
    """((x, y, x_test, y_test, groups), num_classes) of ``cfg``'s Hugging Face dataset.

    ``num_classes`` is the vocabulary's size for text, else None (inferred later).
    """
    train = _load(cfg, cfg.split)
    test = _load(cfg, cfg.test_split) if cfg.test_split else None
    vocab = None
    feature = _feature(train, cfg)
    if _is_text(train.features[feature]):
        texts = list(train[feature])
        for part in [train, *([test] if test is not None else [])]:
            if cfg.label in part.column_names:
                texts += [str(c) for c in part[cfg.label]]
        if test is not None:
            texts += list(test[feature])
        vocab = vocabulary(texts, cfg.vocabulary)
        if cfg.sequence_length is None and cfg.label in train.column_names:  # train's longest
            longest = max((len(t) for t in train[feature]), default=1)
            cfg = cfg.model_copy(update={"sequence_length": longest})
    x, y, groups = _arrays(train, cfg, vocab)
    xt = yt = None
    if test is not None:
        xt, yt, _ = _arrays(test, cfg.model_copy(update={"partition": "iid"}), vocab)
    return (x, y, xt, yt, groups), (len(vocab) if vocab is not None else None)
