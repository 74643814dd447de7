"""Models from the libraries practitioners build them with, built small with random weights (or a
few steps of their own training) and called as their libraries call them: rewritten,
verified, reported exact, and explained exactly by shap, Captum and the engine.

The slowest are marked ``slow`` (``-m "not slow"`` skips them in a quick run; CI runs all).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from rewriter import rewrite
from rewriter.explanation import run_explanation


def _explained_exactly(module, rows, background) -> None:
    found = {name: run_explanation(module, rows, background, explainer=name, progress=False, threshold=None)
             for name in ("exact", "shap", "captum")}
    for name, result in found.items():
        assert result.worst_error < 1e-4, (name, result.worst_error)
    scale = np.abs(found["shap"].attributions[0]).max()  # float32 sums in another order: a few ulps of deep graphs
    np.testing.assert_allclose(found["exact"].attributions[0], found["shap"].attributions[0], rtol=0,
                               atol=1e-4 * scale)


@pytest.fixture(scope="module", params=["sparsemax", "entmax"])
def tabnet(request):
    pytest.importorskip("pytorch_tabnet")
    from pytorch_tabnet.tab_model import TabNetClassifier

    rng = np.random.default_rng(0)
    features = rng.normal(size=(64, 6)).astype(np.float32)
    labels = (features[:, 0] + features[:, 3] > 0).astype(int)
    classifier = TabNetClassifier(n_d=4, n_a=4, n_steps=2, mask_type=request.param, seed=0, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        classifier.fit(features, labels, max_epochs=2, batch_size=32, virtual_batch_size=16)
    return classifier.network.eval(), features, {"sparsemax": "Sparsemax", "entmax": "Entmax15"}[request.param]


def test_tabnet_returns_its_logits_with_sparse_attention_exact(tabnet):
    """TabNet's forward returns ``(logits, M_loss)``; its attentive transformer selects
    features with sparsemax or entmax-1.5, each coming out as one module with an exact rule."""
    network, features, selector = tabnet
    x = torch.from_numpy(features[:8])
    module, report = rewrite(network, x, report=True)
    document = report.as_dict()
    assert document["exact"], document["not_exact_because"]
    assert document["interface"]["outputs"]["kept"] == ["0"]
    assert sum(entry.get("module") == selector for entry in document["nodes"]) == 2  # one per step
    with torch.no_grad():
        torch.testing.assert_close(module(torch.from_numpy(features[8:20])), network(torch.from_numpy(features[8:20]))[0])
    _explained_exactly(module, features[:6], features[20:30])


@pytest.mark.slow
def test_a_darts_temporal_fusion_transformer_is_exact_as_darts_calls_it():
    """darts calls its torch module with a ``PLModuleInput`` dataclass and gets a
    ``PLModuleOutput`` back; its TFT caches an attention mask for the last batch size it saw
    (rebuilt only when the batch changes), which an export at the example's batch would bake."""
    pytest.importorskip("darts")
    import logging

    from darts import TimeSeries
    from darts.models import TFTModel
    from darts.utils.data.torch_datasets.utils import PLModuleInput

    logging.getLogger("darts").setLevel(logging.ERROR)
    values = np.sin(np.arange(60) / 4.0).astype(np.float32)
    model = TFTModel(input_chunk_length=8, output_chunk_length=2, hidden_size=8, lstm_layers=1,
                     num_attention_heads=1, dropout=0.0, batch_size=16, n_epochs=1, add_relative_index=True,
                     random_state=0, pl_trainer_kwargs={"accelerator": "cpu", "enable_progress_bar": False,
                                                        "enable_model_summary": False, "logger": False})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(TimeSeries.from_values(values), verbose=False)
    network = model.model.eval()

    def window(rows: int, seed: int) -> PLModuleInput:
        generator = torch.Generator().manual_seed(seed)
        return PLModuleInput(past_target=torch.randn(rows, 8, 1, generator=generator),
                             historic_future_covariates=torch.randn(rows, 8, 1, generator=generator),
                             future_covariates=torch.randn(rows, 2, 1, generator=generator))

    example = window(3, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module, report = rewrite(network, example, report=True)
    document = report.as_dict()
    assert document["exact"], document["not_exact_because"]
    assert document["interface"]["outputs"]["kept"] == ["prediction"]
    other = window(5, 1)
    with torch.no_grad():
        torch.testing.assert_close(module(*module.embed(other)), network(other).prediction.flatten(1), rtol=1e-4,
                                   atol=1e-5)

    def named(x: PLModuleInput) -> dict:
        return {f"x_in.{key}": getattr(x, key) for key in ("past_target", "historic_future_covariates",
                                                           "future_covariates")}

    _explained_exactly(module, named(window(4, 2)), named(window(6, 3)))


def _forecasting_batch():
    pytest.importorskip("pytorch_forecasting")
    import pandas as pd
    from pytorch_forecasting import TimeSeriesDataSet
    from pytorch_forecasting.data import GroupNormalizer

    rng = np.random.default_rng(0)
    frame = pd.DataFrame([{"series": str(g), "time_idx": t, "value": float(np.sin(t / 4 + g) + rng.normal(0, .1)),
                           "temp": float(rng.normal())} for g in range(4) for t in range(40)])
    dataset = TimeSeriesDataSet(frame, time_idx="time_idx", target="value", group_ids=["series"],
                                max_encoder_length=8, max_prediction_length=3, time_varying_unknown_reals=["value"],
                                time_varying_known_reals=["temp"], static_categoricals=["series"],
                                target_normalizer=GroupNormalizer(groups=["series"]))
    x, _ = next(iter(dataset.to_dataloader(train=False, batch_size=4, num_workers=0)))
    return dataset, x


@pytest.mark.slow
def test_pytorch_forecasting_tft_with_its_lengths_fixed_is_exact():
    """With every window at full length, ``fixed=`` bakes the lengths in: the TFT exports (its
    ``int(encoder_lengths.max())`` is a constant), its packed LSTMs drop lengths that are the
    full length in every row, and the rows its packing sorts by equal lengths stay in place."""
    import pytorch_forecasting

    from rewriter import InputError

    dataset, x = _forecasting_batch()
    torch.manual_seed(0)
    model = pytorch_forecasting.TemporalFusionTransformer.from_dataset(
        dataset, hidden_size=8, attention_head_size=1, hidden_continuous_size=4, dropout=0.0).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module, report = rewrite(model, x, fixed=["encoder_lengths", "decoder_lengths"], report=True)
    document = report.as_dict()
    assert document["exact"], document["not_exact_because"]
    assert document["interface"]["fixed"] == {"x.encoder_lengths": [8], "x.decoder_lengths": [3]}
    with torch.no_grad():
        torch.testing.assert_close(module(*module.embed(x)), model(x).prediction.flatten(1))
    rows, background = ({k: v[:2] for k, v in x.items()}, {k: v[2:] for k, v in x.items()})
    _explained_exactly(module, rows, background)
    shorter = {**x, "encoder_lengths": x["encoder_lengths"] - 1}
    with pytest.raises(InputError, match="was fixed when the model was rewritten"):
        module.embed(shorter)


@pytest.mark.slow
@pytest.mark.parametrize("name, line", [("TemporalFusionTransformer", "int(encoder_lengths.max())"),
                                        ("DeepAR", 'x["encoder_lengths"].min() > 0')])
def test_pytorch_forecasting_models_are_refused_naming_their_data_dependent_line(name, line):
    """Both read the per-row sequence lengths as Python numbers to size their tensors: an
    export follows one size only. The refusal is the model's (ExportError), with its line."""
    import pytorch_forecasting

    from rewriter import ExportError

    dataset, x = _forecasting_batch()
    torch.manual_seed(0)
    model_class = getattr(pytorch_forecasting, name)
    options = {"hidden_size": 8, "attention_head_size": 1, "hidden_continuous_size": 4, "dropout": 0.0} \
        if name == "TemporalFusionTransformer" else {"hidden_size": 8, "rnn_layers": 1}
    model = model_class.from_dataset(dataset, **options).eval()
    with warnings.catch_warnings(), pytest.raises(ExportError) as caught:
        warnings.simplefilter("ignore")
        rewrite(model, x)
    assert line in str(caught.value) and "pytorch_forecasting/models" in str(caught.value)
    assert "\x1b[" not in str(caught.value)  # no terminal colours


@pytest.mark.slow
def test_neuralforecast_timesnet_is_refused_naming_its_period_search():
    """TimesNet picks its periods from the batch's Fourier amplitudes and reshapes by them in
    Python: the graph depends on the data, and mixes the rows of a batch."""
    pytest.importorskip("neuralforecast")
    from neuralforecast.models import TimesNet

    from rewriter import ExportError

    torch.manual_seed(0)
    model = TimesNet(h=4, input_size=16, hidden_size=8, conv_hidden_size=8, encoder_layers=1, top_k=2,
                     num_kernels=2, max_steps=1).eval()
    batch = {"insample_y": torch.randn(3, 16, 1), "insample_mask": torch.ones(3, 16, 1), "futr_exog": None,
             "hist_exog": None, "stat_exog": None}
    with warnings.catch_warnings(), pytest.raises(ExportError, match="timesnet.py:60 in FFT_for_Period"):
        warnings.simplefilter("ignore")
        rewrite(model, batch)
