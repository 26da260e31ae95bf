"""Distributed training equals single-process training on the same global batch.

Batch-norm statistics are global across processes (:mod:`realnvp.syncstats`), the dequantization
noise follows the example, and the logged loss is averaged over processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import ENV, TINY, metrics_rows
from realnvp import RealNVP, bits_per_dim

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


def _model():
    torch.manual_seed(0)
    return RealNVP((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1).double()


def _batch():
    return torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _step(model, x, forward):
    """One Adam step; returns the loss, the gradients and the state after the step."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = bits_per_dim(forward(x), 64, 17).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    return loss.detach(), grads, {k: v.clone() for k, v in model.state_dict().items()}


def _worker(rank, init_file, out_file, sync):
    from torch.nn.parallel import DistributedDataParallel

    import realnvp.syncstats as syncstats

    if not sync:  # negative control: per-process statistics, as plain DDP would use
        syncstats._distributed = lambda: False
        import realnvp.nets.norm as norm

        norm._distributed = lambda: False
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    model = _model()
    net = DistributedDataParallel(model)
    loss, grads, state = _step(model, _batch()[rank::2], net)
    dist.all_reduce(loss)
    if rank == 0:
        torch.save({"loss": loss / 2, "grads": grads, "state": state}, out_file)
    del net  # DDP holds the process group: alive at exit, gloo can abort the process
    dist.barrier()  # no rank may tear gloo down while another is still using it
    dist.destroy_process_group()
    # The result is on disk. Leave without the interpreter's teardown: gloo's threads can still
    # abort a process there ("terminate called without an active exception"; 2 of 21 runs on a
    # 2-core machine, even with the wrapper dropped), which fails mp.spawn.
    os._exit(0)


def _two_process_step(tmp_path, sync=True):
    out = tmp_path / f"two-{sync}.pt"
    mp.spawn(_worker, args=(str(tmp_path / f"rdzv-{sync}"), str(out), sync), nprocs=2)
    return torch.load(out, weights_only=True)


def test_one_step_on_two_processes_equals_one_process(tmp_path):
    model = _model()
    loss, grads, state = _step(model, _batch(), model)
    two = _two_process_step(tmp_path)
    torch.testing.assert_close(two["loss"], loss, rtol=1e-12, atol=1e-12)
    for name, g in grads.items():
        torch.testing.assert_close(two["grads"][name], g, rtol=1e-7, atol=1e-10, msg=name)
    for name, v in state.items():  # parameters after Adam and every running statistic
        torch.testing.assert_close(two["state"][name], v, rtol=1e-7, atol=1e-9, msg=name)

    unsynced = _two_process_step(tmp_path, sync=False)
    assert abs(unsynced["loss"] - loss) > 1e-6, "per-process statistics should change the result"


@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
def test_torchrun_training_matches_single_process(tmp_path, dequantization):
    """End to end through the CLI: sampler, noise sharding, loss averaging, rank-0 writing (and a
    learned dequantizer's own DDP wrapper, its actnorms initialised from the global batch). In
    float32 over many Adam steps rounding differences grow (Adam rescales even gradients that are
    pure rounding noise), so this compares at a looser tolerance than the exact one-step test."""
    tiny = ["--epochs", "1", *TINY, "--set", "sample_every=0", "--dequantization", dequantization,
            "--set", "dequant_hidden=4", "--set", "dequant_steps=1"]
    env = ENV
    single, double = tmp_path / "single", tmp_path / "double"
    subprocess.run([sys.executable, "-m", "realnvp", "train", "--batch-size", "64", "--out",
                    str(single), *tiny], check=True, env=env, timeout=600, capture_output=True)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "realnvp", "train", "--batch-size", "32", "--out", str(double), *tiny],
        env=env, timeout=600, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = metrics_rows(single), metrics_rows(double)
    # 1347 training examples: 150 of the 1497 are carved out for validation
    assert [r["step"] for r in a] == [r["step"] for r in b] == ["21"]
    for key in ("train_bpd", "valid_bpd"):
        assert abs(float(a[0][key]) - float(b[0][key])) < 5e-3, (key, a, b)
    ea = json.loads((single / "eval.json").read_text())["bits_per_dim"]
    eb = json.loads((double / "eval.json").read_text())["bits_per_dim"]
    assert abs(ea - eb) < 5e-3
    assert not (double / "checkpoints" / "last.safetensors.prev").exists()  # one writer, one epoch
