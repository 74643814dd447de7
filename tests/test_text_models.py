"""Real Hugging Face models, built small with random weights and called as their users call
them (``model(**batch)``, a ``ModelOutput`` back): rewritten, explained per token by shap and
Captum through ``rewriter.explain``, and directly by each explainer on the module as returned.
A padded position gets no attribution when the references keep the row's mask."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import shap
import torch
from captum.attr import DeepLift

from rewriter import explain, load, rewrite, save
from rewriter.explanation import run_explanation

transformers = pytest.importorskip("transformers")

VOCAB, PAD, CLS, LENGTH, PADDED_FROM = 60, 0, 1, 10, 7
_SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
          "max_position_embeddings": 32, "num_labels": 3, "initializer_range": 0.3, "vocab_size": VOCAB}


def _bert():
    return transformers.BertForSequenceClassification(transformers.BertConfig(**_SMALL))


def _distilbert():
    return transformers.DistilBertForSequenceClassification(transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=32, num_labels=3,
        initializer_range=0.3))


def _roberta():
    return transformers.RobertaForSequenceClassification(transformers.RobertaConfig(**_SMALL, pad_token_id=PAD))


def _gpt2():
    return transformers.GPT2ForSequenceClassification(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=32, num_labels=3, pad_token_id=PAD,
        bos_token_id=CLS, eos_token_id=CLS, initializer_range=0.3))


def _squeezebert():  # grouped 1x1 convolutions in place of linear layers
    return transformers.SqueezeBertForSequenceClassification(transformers.SqueezeBertConfig(
        **_SMALL, embedding_size=32, q_groups=2, k_groups=2, v_groups=2, post_attention_groups=2,
        intermediate_groups=2, output_groups=2))


def _convbert():  # span-based dynamic convolution beside attention
    return transformers.ConvBertForSequenceClassification(transformers.ConvBertConfig(**_SMALL, embedding_size=32))


def _bloom():  # ALiBi position biases computed from the mask
    return transformers.BloomForSequenceClassification(transformers.BloomConfig(
        vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=2, num_labels=3, pad_token_id=PAD, initializer_range=0.3))


def _gemma2():  # RMSNorm, grouped-query attention, logit soft-capping, a sliding window
    return transformers.Gemma2ForSequenceClassification(transformers.Gemma2Config(
        **_SMALL, pad_token_id=PAD, num_key_value_heads=1, head_dim=16, sliding_window=8))


MODELS = {"bert": (_bert, True), "distilbert": (_distilbert, False), "roberta": (_roberta, False),
          "gpt2": (_gpt2, False), "squeezebert": (_squeezebert, False), "convbert": (_convbert, True),
          "bloom": (_bloom, False), "gemma2": (_gemma2, False)}


def batch(rows: int, token_types: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    """Token ids with a classifier token first; row 1 padded from position 7 on."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (rows, LENGTH), generator=generator)
    ids[:, 0] = CLS
    mask = torch.ones_like(ids)
    mask[1, PADDED_FROM:] = 0
    ids[1, PADDED_FROM:] = PAD
    found = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        found["token_type_ids"] = torch.zeros_like(ids)
    return found


@pytest.fixture(scope="module", params=sorted(MODELS))
def text_model(request):
    make, token_types = MODELS[request.param]
    torch.manual_seed(0)
    model = make().eval()
    rows = batch(4, token_types)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module, report = rewrite(model, **rows, report=True)
    return request.param, model, module, report, rows, token_types


def test_the_result_embeds_ids_and_computes_the_models_logits(text_model):
    name, model, module, report, rows, _ = text_model
    document = report.as_dict()
    assert document["exact"], document["not_exact_because"]
    assert document["interface"]["outputs"]["kept"] == ["logits"]
    explained = [e for e in document["interface"]["inputs"] if e["role"] == "explained"]
    assert [e["name"] for e in explained] == ["input_ids_embeds"]
    assert "attention_mask" in module.context_names
    inputs = module.embed(**rows)
    assert inputs[0].dtype == torch.float32 and inputs[0].shape[:2] == rows["input_ids"].shape
    with torch.no_grad():
        torch.testing.assert_close(module(*inputs), model(**rows).logits)
        other = batch(6, "token_type_ids" in rows, seed=3)  # another batch size, other ids
        torch.testing.assert_close(module(*module.embed(**other)), model(**other).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("explainer", ["exact", "shap", "captum"])
@pytest.mark.parametrize("references", ["background", "token"])
def test_explain_gives_exact_attributions_per_token(text_model, explainer, references):
    _, _, module, _, rows, token_types = text_model
    background = batch(3, token_types, seed=1) if references == "background" else None
    result = run_explanation(module, rows, background, reference=PAD if references == "token" else None,
                             keep_tokens=[CLS], explainer=explainer, progress=False)
    values = result.attributions[0]
    assert result.names == ["input_ids"] and values.shape == (4, LENGTH, 3)
    assert result.worst_error < 1e-4
    padded = values[1, PADDED_FROM:]
    if references == "token" or not _reads_padding(module, rows):  # the mask is the row's own
        np.testing.assert_array_equal(padded, 0.0)
    else:  # ConvBERT's convolution reads the padded positions' embeddings, unmasked
        assert np.abs(padded).max() > 1e-3


def _reads_padding(module, rows: dict[str, torch.Tensor]) -> bool:
    """Whether row 1's output changes with the embeddings at its padded positions."""
    embeds, *context = module.embed(**rows)
    moved = embeds.clone()
    moved[1, PADDED_FROM:] += torch.linspace(-1, 1, moved.shape[-1])  # not constant: LayerNorm drops that
    with torch.no_grad():
        return not torch.allclose(module(embeds, *context)[1], module(moved, *context)[1], atol=1e-6)


def test_the_exact_engine_gives_shaps_numbers_per_token(text_model):
    _, _, module, _, rows, token_types = text_model
    background = batch(3, token_types, seed=1)
    exact, shap_values = (run_explanation(module, rows, background, explainer=name, progress=False).attributions[0]
                          for name in ("exact", "shap"))
    np.testing.assert_allclose(exact, shap_values, rtol=0, atol=1e-5 * np.abs(shap_values).max())


# Gemma's pad embedding is 0, so against pad references its RMSNorms start at 0: the exact
# attributions are ~100x the output change and float32 cannot add them up to 1e-4 (rewriter.explain
# retries such rows in float64 itself; a direct caller converts the module).
_NEEDS_FLOAT64 = {"gemma2"}


def test_shap_and_captum_run_on_the_module_as_returned(text_model):
    """Captum with the context as additional_forward_args; shap with it bound for one row."""
    name, _, module, _, rows, token_types = text_model
    if name in _NEEDS_FLOAT64:
        module = copy.deepcopy(module).double()
    embeds, *context = module.embed(**rows)
    reference_ids = torch.where(rows["input_ids"] == CLS, CLS, PAD)
    references, *_ = module.embed(**{**rows, "input_ids": reference_ids})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainer = DeepLift(module)
        with torch.no_grad():
            gap = module(embeds, *context) - module(references, *context)
        for target in range(3):
            values, delta = explainer.attribute(embeds, baselines=references, target=target,
                                                additional_forward_args=tuple(context), return_convergence_delta=True)
            assert delta.abs().max() <= 1e-4 * gap.abs().max()
            assert values[1, PADDED_FROM:].abs().max() == 0
        background, *_ = module.embed(**batch(3, token_types, seed=1))
        bound = module.with_context(*(c[1:2] for c in context))
        shap.DeepExplainer(bound, background).shap_values(embeds[1:2], check_additivity=True)


def test_a_saved_text_model_keeps_its_embedder(text_model, tmp_path):
    _, _, module, _, rows, _ = text_model
    save(module, tmp_path / "text.pt")
    loaded = load(tmp_path / "text.pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(*loaded.embed(**rows)), module(*module.embed(**rows)))
    np.testing.assert_allclose(explain(loaded, rows, reference=PAD, progress=False),
                               explain(module, rows, reference=PAD, progress=False), rtol=1e-5, atol=1e-7)


def test_a_vit_image_classifier_returns_its_logits():
    config = transformers.ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=4)
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    pixels = torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module, report = rewrite(model, pixel_values=pixels, report=True)
    assert report.as_dict()["exact"], report.as_dict()["not_exact_because"]
    torch.testing.assert_close(module(pixels), model(pixel_values=pixels).logits, rtol=1e-4, atol=1e-5)
    values = explain(module, torch.randn(3, 3, 16, 16), torch.randn(4, 3, 16, 16), progress=False)
    assert values.shape == (3, 3, 16, 16, 4)


def test_ids_outside_the_vocabulary_and_a_mask_of_the_wrong_shape_are_refused(text_model):
    from rewriter import InputError

    _, _, module, _, rows, _ = text_model
    too_large = {**rows, "input_ids": rows["input_ids"].clone()}
    too_large["input_ids"][0, 3] = VOCAB + 5
    with pytest.raises(InputError, match="vocabulary"):
        explain(module, too_large, reference=PAD, progress=False)
    with pytest.raises(InputError, match="attention_mask"):
        explain(module, {**rows, "attention_mask": rows["attention_mask"][:, :4]}, reference=PAD, progress=False)
    with pytest.raises(InputError, match="missing \\['attention_mask'\\]"):
        explain(module, {k: v for k, v in rows.items() if k != "attention_mask"}, reference=PAD, progress=False)


def test_the_command_explains_token_ids_from_an_npz_and_plots_the_tokens(tmp_path):
    import subprocess
    import sys

    torch.manual_seed(0)
    model = _bert().eval()
    rows = batch(4, token_types=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save(rewrite(model, **rows), tmp_path / "text.pt")
    np.savez(tmp_path / "batch.npz", **{k: v.numpy() for k, v in rows.items()})
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[CLS]"] + [f"w{i}" for i in range(2, VOCAB)]))
    done = subprocess.run([sys.executable, "-m", "rewriter", "explain", str(tmp_path / "text.pt"), "--inputs",
                           str(tmp_path / "batch.npz"), "--reference", str(PAD), "--keep-tokens", str(CLS), "--out",
                           str(tmp_path / "a.npy"), "--plot", str(tmp_path / "a.png"), "--tokens",
                           str(tmp_path / "vocab.txt")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    values = np.load(tmp_path / "a.npy")
    assert values.shape == (4, LENGTH, 3) and not values[1, PADDED_FROM:].any()
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
