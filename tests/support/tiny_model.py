"""Build a tiny, randomly initialised BERT sentence-transformer offline, in about a second.

Its embeddings carry no meaning, but they are deterministic: identical texts get identical vectors, which is
all the engine tests need. Tests about ranking quality use the packaged MiniLM instead."""

from __future__ import annotations

import string
from pathlib import Path

WORDS = [
    "the",
    "a",
    "an",
    "of",
    "and",
    "or",
    "to",
    "in",
    "on",
    "for",
    "with",
    "is",
    "are",
    "was",
    "be",
    "by",
    "as",
    "at",
    "from",
    "this",
    "that",
    "it",
    "not",
    "no",
    "yes",
    "cat",
    "dog",
    "mat",
    "sat",
    "bird",
    "fish",
    "tree",
    "house",
    "car",
    "road",
    "city",
    "river",
    "sea",
    "sun",
    "moon",
    "star",
    "rain",
    "snow",
    "wind",
    "fire",
    "water",
    "earth",
    "apple",
    "banana",
    "orange",
    "bread",
    "milk",
    "coffee",
    "tea",
    "sugar",
    "salt",
    "book",
    "paper",
    "pen",
    "code",
    "python",
    "rust",
    "java",
    "server",
    "client",
    "search",
    "query",
    "index",
    "vector",
    "keyword",
    "model",
    "train",
    "test",
    "data",
    "file",
    "folder",
    "note",
    "quantum",
    "physics",
    "force",
    "strong",
    "weak",
    "energy",
    "cell",
    "gene",
    "protein",
    "cancer",
    "drug",
    "vitamin",
    "bone",
    "heart",
    "brain",
    "red",
    "green",
    "blue",
    "black",
    "white",
    "big",
    "small",
    "fast",
    "slow",
    "new",
    "old",
    "good",
    "bad",
    "first",
    "last",
    "one",
    "two",
    "three",
]


def build_tiny_model(path: Path, hidden: int = 32, seed: int = 0, words: bool = True) -> Path:
    """A random BERT with a small vocabulary (`words` off: characters only, so a text is many more tokens)."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    raw = path / "raw"
    raw.mkdir(exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *[f"##{c}" for c in chars], *(WORDS if words else [])]
    vocab = list(dict.fromkeys(vocab))
    (raw / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 ignores `vocab_file=`; pass the vocabulary itself or every word becomes [UNK].
    tokenizer = BertTokenizerFast(vocab={tok: i for i, tok in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(str(raw))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(str(raw))
    transformer = models.Transformer(str(raw), max_seq_length=64)
    pooling = models.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    model = SentenceTransformer(modules=[transformer, pooling], device="cpu")
    out = path / "model"
    model.save(str(out))
    return out
