"""Regenerate the tiny offline stand-ins for Hugging Face datasets (committed parquet).

    python tests/data/hf/make.py

Same columns and feature types as ``flwrlabs/femnist`` (image, writer_id, character)
and ``flwrlabs/shakespeare`` (character_id, x: 80 characters, y: the next one), written
by ``datasets`` itself so that ``load_dataset("parquet", ...)`` restores the features.
The contents are random: these files test the code path, not learning.
"""

from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image, Value

HERE = Path(__file__).parent
TEXT = "the quick brown fox jumps over the lazy dog. ROMEO: O, she doth teach the torches!\n"


def femnist(rng: np.random.Generator) -> None:
    rows = {"image": [], "writer_id": [], "character": []}
    for w in range(3):
        for i in range(8):
            img = (rng.random((28, 28)) * 255).astype(np.uint8)
            rows["image"].append(img)
            rows["writer_id"].append(f"f{w:04d}_0{w}")
            rows["character"].append(int((w * 8 + i) % 62))
    features = Features(
        {"image": Image(), "writer_id": Value("string"), "character": ClassLabel(num_classes=62)}
    )
    Dataset.from_dict(rows, features=features).to_parquet(HERE / "femnist.parquet")


def shakespeare(rng: np.random.Generator) -> None:
    rows = {"character_id": [], "x": [], "y": []}
    for name in ["ROMEO", "JULIET", "NURSE"]:
        for _ in range(10):
            start = int(rng.integers(0, len(TEXT) - 81))
            window = (TEXT * 2)[start : start + 81]
            rows["character_id"].append(f"THE_TRAGEDY_{name}")
            rows["x"].append(window[:80])
            rows["y"].append(window[80])
    features = Features(
        {"character_id": Value("string"), "x": Value("string"), "y": Value("string")}
    )
    Dataset.from_dict(rows, features=features).to_parquet(HERE / "shakespeare.parquet")


if __name__ == "__main__":
    rng = np.random.default_rng(0)
    femnist(rng)
    shakespeare(rng)
    for p in sorted(HERE.glob("*.parquet")):
        print(p, p.stat().st_size)
