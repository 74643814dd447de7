"""A text classifier explained per token, called as Hugging Face models are called.

    python examples/explain_text.py

Synthetic reviews of 6 to 10 words from a small vocabulary; a review is positive exactly
when it contains the word "superb", wherever it stands. A tokenizer is built locally with
the ``tokenizers`` package (no download) and a two-layer BERT from ``transformers`` (a small
config, random initial weights) learns the task in a few seconds. ``rewrite(model, **batch)``
takes the batch as the model takes it (``input_ids``, ``attention_mask``,
``token_type_ids``) and returns a module that explains the embeddings of the ids, with the
attention mask as context; ``rewriter.explain`` takes the token ids back and gives one
attribution per token, against each review with its words replaced by ``[PAD]`` (the
``[CLS]`` and ``[SEP]`` tokens kept). "superb" gets the largest attribution in every positive
review, padded positions get none, and the plot with each token coloured by its attribution
is saved to ``out/text_attributions.png``.
"""

from __future__ import annotations

import random
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertForSequenceClassification

from rewriter import rewrite
from rewriter.explanation import run_explanation
from rewriter.plots import plot_attributions

WORDS = ["the", "food", "was", "service", "staff", "room", "view", "price", "place", "menu", "quite", "rather", "very", "a", "bit", "really", "fairly", "good", "fine", "okay", "nice", "plain", "bland", "slow", "clean", "noisy", "small", "warm", "cold"]
DECIDING, SPECIALS = "superb", ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def tokenizer() -> Tokenizer:
    vocabulary = {token: i for i, token in enumerate([*SPECIALS, *WORDS, DECIDING])}
    found = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    found.pre_tokenizer = pre_tokenizers.Whitespace()
    found.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
        ("[CLS]", vocabulary["[CLS]"]), ("[SEP]", vocabulary["[SEP]"])])
    found.enable_padding(pad_id=vocabulary["[PAD]"], pad_token="[PAD]")
    return found


def reviews(count: int, rng: random.Random) -> tuple[list[str], torch.Tensor]:
    texts, labels = [], []
    for _ in range(count):
        words = rng.choices(WORDS, k=rng.randint(6, 10))
        positive = rng.random() < 0.5
        if positive:
            words[rng.randrange(len(words))] = DECIDING
        texts.append(" ".join(words))
        labels.append(int(positive))
    return texts, torch.tensor(labels)


def encode(tok: Tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """What a Hugging Face tokenizer's ``__call__`` returns, built from ``tokenizers``' output."""
    encodings = tok.encode_batch(texts)
    return {"input_ids": torch.tensor([e.ids for e in encodings]),
            "attention_mask": torch.tensor([e.attention_mask for e in encodings]),
            "token_type_ids": torch.tensor([e.type_ids for e in encodings])}


def train(model, tok: Tokenizer, rng: random.Random) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(150):
        texts, labels = reviews(32, rng)
        loss = model(**encode(tok, texts), labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    texts, labels = reviews(300, rng)
    with torch.no_grad():
        return float((model(**encode(tok, texts)).logits.argmax(1) == labels).float().mean())


def main() -> int:
    torch.manual_seed(0)
    rng = random.Random(0)
    tok = tokenizer()
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16, num_labels=2)
    model = BertForSequenceClassification(config)
    print(f"1. trained a 2-layer BERT on synthetic reviews: accuracy {train(model, tok, rng):.2f} on held-out ones")

    texts, _ = reviews(6, random.Random(1))
    batch = encode(tok, texts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainable, report = rewrite(model, **batch, report=True)
    inputs = [(e["name"], e["role"]) for e in report.as_dict()["interface"]["inputs"]]
    print(f"2. rewritten: inputs {inputs}, output {report.as_dict()['interface']['outputs']['kept']}, "
          f"exact: {report.as_dict()['exact']}")

    vocabulary = tok.get_vocab()
    result = run_explanation(explainable, batch, reference=vocabulary["[PAD]"],
                             keep_tokens=[vocabulary["[CLS]"], vocabulary["[SEP]"]], progress=False)
    values = result.attributions[0]  # [reviews, tokens, outputs]
    print(f"3. explained {result.rows} reviews per token: worst relative additivity error {result.worst_error:.1e}")

    ids = batch["input_ids"].numpy()
    positive = [r for r in range(len(ids)) if vocabulary[DECIDING] in ids[r]]
    found = [int(ids[r, np.argmax(values[r, :, 1])]) == vocabulary[DECIDING] for r in positive]
    padded = batch["attention_mask"].numpy() == 0
    print(f"4. '{DECIDING}' has the largest attribution to 'positive' in {sum(found)} of {len(positive)} positive "
          f"reviews; padded positions get {np.abs(values[padded]).max(initial=0.0):.1f}")

    out = Path("out")
    out.mkdir(exist_ok=True)
    names = [token for token, _ in sorted(vocabulary.items(), key=lambda item: item[1])]
    plot_attributions(values, ids, out / "text_attributions.png", tokens=names)
    print(f"5. saved {out / 'text_attributions.png'}")
    exact = result.worst_error < 1e-4 and report.as_dict()["exact"]
    return 0 if exact and all(found) and positive and not np.abs(values[padded]).any() else 1


if __name__ == "__main__":
    sys.exit(main())
