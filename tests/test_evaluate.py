"""Evaluation helpers: per-example bits/dim, summaries, the histogram baseline, and results of a
trained run (in process and through ``realnvp eval``) that do not depend on the batch size."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from helpers import cli
from realnvp import RealNVP
from realnvp.data import DataInfo
from realnvp.evaluate import evaluate, histogram_baseline, per_example_bits_per_dim, summarize
from realnvp.runs import load_run


class Items(torch.utils.data.Dataset):
    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i]


def test_histogram_baseline_closed_form():
    info = DataInfo("t", "image", (1, 1, 2), 2)
    train = Items(torch.tensor([[[[0, 1]]], [[[0, 1]]], [[[0, 0]]]], dtype=torch.uint8))
    test = Items(torch.tensor([[[[0, 1]]]], dtype=torch.uint8))
    # pixel 0: counts (3.5, 0.5) -> p(0) = 7/8; pixel 1: counts (1.5, 2.5) -> p(1) = 5/8
    expected = -(math.log2(7 / 8) + math.log2(5 / 8)) / 2
    assert histogram_baseline(train, test, info) == pytest.approx(expected)
    assert histogram_baseline(TensorDataset(train.data), test, info) is None


def test_evaluate_is_batch_size_independent_and_summarises():
    torch.manual_seed(0)
    info = DataInfo("t", "image", (1, 4, 4), 17)
    model = RealNVP((1, 4, 4), num_scales=2, hidden_channels=4, num_blocks=1).eval()
    data = Items(torch.randint(0, 17, (10, 1, 4, 4), dtype=torch.uint8))
    torch.manual_seed(5)
    a = evaluate(model, data, info, batch_size=10, dequant_samples=3)
    torch.manual_seed(5)
    per = per_example_bits_per_dim(model, data.data, info, dequant_samples=3)
    assert a["num_examples"] == 10 and a["dequant_samples"] == 3
    assert a["bits_per_dim"] == pytest.approx(per.mean().item())
    assert a["bits_per_dim_stderr"] == pytest.approx(per.std().item() / math.sqrt(10))
    # batch size 1 gives the same per-example figures: eval-mode batch norm, and the noise
    # stream is consumed example by example in order
    torch.manual_seed(5)
    singles = torch.cat([per_example_bits_per_dim(model, data.data[i:i + 1], info, 1)
                         for i in range(10)])
    torch.manual_seed(5)
    together = per_example_bits_per_dim(model, data.data, info, 1)
    torch.testing.assert_close(singles, together, atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, Items(data.data[:0]), info)


def test_summarize_continuous_data_reports_nats():
    info = DataInfo("v", "vector", (2,), None)
    out = summarize(torch.tensor([1.0, 3.0], dtype=torch.float64), info)
    assert out["nll_nats"] == pytest.approx(2.0 * 2 * math.log(2))
    assert out["bits_per_dim"] == pytest.approx(2.0)


def test_eval_mode_results_do_not_depend_on_the_batch_size(tmp_path, capsys, reference_run):
    run = load_run(reference_run, which="last")
    x = torch.stack(_digits_test()[:40])
    torch.manual_seed(5)
    whole = per_example_bits_per_dim(run.model, x, run.info, dequant_samples=1)
    torch.manual_seed(5)  # the same noise, drawn one example at a time
    single = torch.cat([per_example_bits_per_dim(run.model, x[i:i + 1], run.info, 1) for i in range(40)])
    assert torch.isfinite(whole).all()
    torch.testing.assert_close(single, whole, rtol=1e-5, atol=1e-6)
    results = {}
    for batch in (1, 7, 256):
        code, _, _ = cli(capsys, "eval", reference_run, "--quiet", "--batch-size", batch,
                         "--dequant-samples", "1", "--seed", "3", "--json", tmp_path / f"{batch}.json")
        assert code == 0
        results[batch] = json.loads((tmp_path / f"{batch}.json").read_text())["bits_per_dim"]
    assert results[1] == pytest.approx(results[256], rel=1e-6, abs=1e-6)
    assert results[7] == pytest.approx(results[256], rel=1e-6, abs=1e-6)


def _digits_test():
    from realnvp.data import load_dataset

    dataset, _ = load_dataset("digits", "test")
    return [dataset[i] for i in range(len(dataset))]
