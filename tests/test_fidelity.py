"""The training recipe on the authors' scale, honest model selection, and the tighter bound.

The cost is the authors' (``real_nvp_multiscale_dataset.py``): the mean NLL in nats per example
plus ``l2 · Σθ²`` over the penalised parameters, and the gradient of that cost is clipped at
global norm ``grad_clip``; both are checked against a hand computation. The validation split is
carved from the training split, disjoint from it and from the test split, and the same for
every run and process count; the best checkpoint is chosen on it and the test split is reported
once, for that checkpoint. The importance-weighted estimate is at least the mean of the bound on
every example (Jensen) and equals it for one draw.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import cli, same
from realnvp import RealNVP, bits_per_dim, checkpoint
from realnvp.config import Config, ConfigError
from realnvp.data import DataInfo
from realnvp.distributed import DistInfo
from realnvp.evaluate import evaluate, importance_weighted, per_draw_log_likelihoods
from realnvp.training import Faults, MaximumLikelihood, load_split, load_training_data, train
from realnvp.training.data import validation_indices
from realnvp.training.step import gradient_step

INFO = DataInfo("digits", "image", (1, 8, 8), 17)


def tiny(**changes) -> Config:
    base = dict(epochs=2, hidden_channels=4, num_blocks=1, eval_dequant_samples=2, num_samples=4,
                batch_size=32, sample_every=0, device="cpu")
    return Config().replace(**{**base, **changes})


class Captured(Faults):
    """Keeps the context of the first step, then stops the run (nothing to train for)."""

    def loss(self, ctx, loss):
        self.ctx, self.loss_value = ctx, loss
        raise KeyboardInterrupt


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    faults = Captured()
    with pytest.raises(KeyboardInterrupt):
        train(tiny(), tmp_path_factory.mktemp("ctx") / "run", quiet=True, log=lambda *a: None,
              faults=faults)
    faults.ctx.net = faults.ctx.model  # the trainer let go of it on the way out
    return faults.ctx


def test_the_cost_is_the_authors_nll_in_nats_plus_l2(context):
    ctx = context
    x = torch.stack([ctx.data.train[i] for i in range(32)])
    torch.manual_seed(5)
    loss, bpd = ctx.objective.loss(ctx, x)
    torch.manual_seed(5)
    y = (x.float() + torch.rand(x.shape)) / 17  # the same dequantization noise, by hand
    log_p = ctx.model.log_prob(y)
    d = 64
    nll_nats = (-log_p + d * math.log(17)).mean()
    l2 = sum((p ** 2).sum() for p in ctx.model.regularized_parameters())
    torch.testing.assert_close(loss, nll_nats + 5e-5 * l2, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(bpd, nll_nats.detach() / (d * math.log(2)), rtol=1e-6, atol=1e-6)
    assert ctx.cfg.l2 == 5e-5
    # the bits/dim cost of before weighed the penalty D ln 2 times more than the authors'
    assert d * math.log(2) == pytest.approx(44.36, abs=0.01)


def test_the_gradient_of_that_cost_is_clipped_at_grad_clip(context):
    ctx = context
    ctx.cfg = ctx.cfg.replace(grad_clip=1.0)
    try:
        x = torch.stack([ctx.data.train[i] for i in range(32)])
        ctx.model.train()
        buffers = [b.clone() for b in ctx.model.buffers()]
        torch.manual_seed(3)
        loss, _ = ctx.objective.loss(ctx, x)
        params = ctx.parameters()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads
                                                     if g is not None]))
        assert norm > 1.0  # the clip binds on the nats scale (it never did on bits/dim)
        with torch.no_grad():
            for b, saved in zip(ctx.model.buffers(), buffers, strict=True):
                b.copy_(saved)
        torch.manual_seed(3)
        ctx.faults = Faults()
        finite, _ = gradient_step(ctx, x)
        assert finite
        for p, g in zip(params, grads, strict=True):
            if g is not None:
                torch.testing.assert_close(p.grad, g / (norm + 1e-6), rtol=1e-4, atol=1e-7)
    finally:
        ctx.cfg = ctx.cfg.replace(grad_clip=100.0)


def test_the_validation_split_is_carved_from_train_and_is_the_same_for_every_run():
    cfg = tiny()
    whole, _ = load_split(cfg.replace(valid_size=0), "train")
    train_rows, valid_rows = validation_indices(len(whole), cfg.valid_size)
    assert len(valid_rows) == round(0.1 * len(whole)) and not set(train_rows) & set(valid_rows)
    assert sorted([*train_rows, *valid_rows]) == list(range(len(whole)))
    data = load_training_data(cfg)
    again = load_training_data(cfg.replace(seed=7))
    # valid and train are rows of the data set's training split (so neither meets its test
    # split), disjoint, covering it; the same rows for every seed, and the same through load_split
    assert data.valid.dataset.data.data_ptr() == data.train.dataset.data.data_ptr()
    assert data.valid.indices == valid_rows.tolist() and data.train.indices == train_rows.tolist()
    assert again.valid.indices == data.valid.indices
    assert load_split(cfg, "valid")[0].indices == data.valid.indices
    assert not data.valid.dataset.flip and torch.equal(data.valid.data, whole.data[valid_rows])
    assert data.selection is data.valid and data.selection_name == "valid"
    # one process or several: the carve comes before the sampler deals rows out
    ranks = [list(data.loader(3, 8, DistInfo(True, r, 2))) for r in (0, 1)]
    assert sum(len(b) for b in ranks[0] + ranks[1]) == 2 * (len(data.train) // 2 // 8) * 8
    with pytest.raises(ConfigError, match="no validation split"):
        load_split(cfg.replace(valid_size=0), "valid")
    with pytest.raises(ConfigError, match="valid_size"):
        cfg.replace(valid_size=2.5)


def test_the_best_checkpoint_is_chosen_on_valid_and_test_is_reported_once_for_it(tmp_path):
    run = tmp_path / "run"
    result = train(tiny(epochs=3), run, quiet=True, log=lambda *a: None)
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[3] == "valid_bpd"
    best_state = checkpoint.load(run / "checkpoints" / "best.safetensors")[1]["state"]
    assert result["selected_epoch"] == best_state["epoch"]
    assert result["split"] == "test" and result["weights"] == "best (model)"
    assert result["best_valid_bpd_during_training"] == best_state["best_score"]
    assert json.loads((run / "eval.json").read_text()) == result
    from PIL import Image

    with Image.open(run / "curves.png") as curves:  # train and validation bits/dim per epoch
        assert curves.format == "PNG" and curves.size == (640, 400)


class Worse(MaximumLikelihood):
    """Every epoch's validation (or monitored test) score worse than the one before."""

    calls = 0

    def evaluate(self, ctx, model, dataset, final, progress=False):
        result = super().evaluate(ctx, model, dataset, final, progress)
        if not final:
            self.calls += 1
            result["bits_per_dim"] = float(self.calls)
        return result


def test_early_stopping_ends_the_run_after_patience_epochs_without_improvement(tmp_path):
    result = train(tiny(epochs=10, patience=2), tmp_path / "run", quiet=True, log=lambda *a: None,
                   objective=Worse())
    assert result["stopped"] == "early_stopping" and result["epochs"] == 3
    assert result["selected_epoch"] == 1


@pytest.mark.parametrize("valid_size", [0.1, 0])
def test_only_a_validation_split_selects(tmp_path, capsys, valid_size):
    """With a validation split the best checkpoint is the best epoch's (here the first); without
    one the test split is only monitored: ``best`` is the last epoch's weights and ``eval.json``
    names no best score. Early stopping without a validation split is refused, leaving nothing."""
    run = tmp_path / "run"
    result = train(tiny(epochs=3, valid_size=valid_size), run, quiet=True, log=lambda *a: None,
                   objective=Worse())
    best, meta = checkpoint.load(run / "checkpoints" / "best.safetensors")
    last, _ = checkpoint.load(run / "checkpoints" / "last.safetensors")
    assert meta["state"]["epoch"] == (1 if valid_size else 3)
    assert same({k: v for k, v in best.items() if k.startswith("model.")},
                {k: v for k, v in last.items() if k.startswith("model.")}) is not bool(valid_size)
    assert [k for k in result if k.startswith("best_")] == (["best_valid_bpd_during_training"] if valid_size
                                                             else [])
    code, out, _ = cli(capsys, "info", run, "--json")
    summary = json.loads(out)
    assert code == 0 and summary["selected_on"] == ("valid" if valid_size else None)
    assert (summary["best_selection_score"], summary["last_test_score"]) == \
        ((1.0, None) if valid_size else (None, 3.0))
    with pytest.raises(ConfigError, match="patience needs a validation split"):
        train(tiny(patience=2, valid_size=0), tmp_path / "refused", quiet=True, log=lambda *a: None)
    assert not (tmp_path / "refused").exists()


def test_the_importance_weighted_estimate_is_tighter_and_equal_for_one_draw():
    torch.manual_seed(0)
    model = RealNVP((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1).eval()
    x = torch.randint(0, 17, (12, 1, 8, 8))
    log_p = per_draw_log_likelihoods(model, x, INFO, draws=6)
    iw = bits_per_dim(importance_weighted(log_p), 64, 17)
    mean = bits_per_dim(log_p, 64, 17).mean(dim=1)
    assert (iw <= mean + 1e-12).all() and (iw < mean).any()
    assert torch.equal(importance_weighted(log_p[:, :1]), log_p[:, 0])
    dataset = torch.utils.data.TensorDataset(x)
    dataset = [t[0] for t in dataset]
    torch.manual_seed(1)
    one = evaluate(model, dataset, INFO, dequant_samples=1)
    assert one["importance_weighted_bpd"] == pytest.approx(one["bits_per_dim"], abs=1e-12)
    torch.manual_seed(1)
    four = evaluate(model, dataset, INFO, dequant_samples=4, importance_samples=4)
    assert four["importance_weighted_bpd"] < four["bits_per_dim"]
