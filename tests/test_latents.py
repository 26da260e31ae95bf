"""Views of the latent space: the multi-scale view (paper App. D; which latent coordinates belong to
which scale, and ``realnvp latents`` keeping the coarsest scales of an image and resampling the
others) and the manifold through four examples (Fig. 6, ``realnvp interpolate``), class-conditional
runs included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TINY, cli, one_line, perturb, write_mnist
from realnvp.bijectors import MultiScale, Squeeze
from realnvp.cli import main
from realnvp.latents import keep_scales, manifold, manifold_latents, scale_rows
from realnvp.models import MAF, FFJORDImage, Glow, RealNVP, VectorRealNVP

STEPS = ["--epochs", "1", "--max-steps", "3", *TINY, "--device", "cpu", "--set", "num_samples=4",
         "--set", "sample_every=0"]


def _multiscale_models():
    torch.manual_seed(0)
    return {
        "realnvp-checkerboard": RealNVP((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1),
        "realnvp-channels": RealNVP((3, 8, 8), num_scales=3, hidden_channels=4, num_blocks=1,
                                    factor_out="channels"),
        "glow": Glow((3, 16, 16), num_levels=3, steps_per_level=1, hidden_channels=4),
        "ffjord": FFJORDImage((1, 8, 8), num_scales=2, num_blocks=1, hidden_channels=4,
                              num_hidden_layers=1),
    }


@pytest.mark.parametrize("name", list(_multiscale_models()))
def test_the_scale_slices_partition_every_latent_coordinate_exactly_once(name):
    model = _multiscale_models()[name]
    slices = model.scale_slices()
    covered = torch.zeros(model.num_dims, dtype=torch.int64)
    for s in slices:
        covered[s] += 1
    assert covered.eq(1).all() and len(slices) == model.config.get("num_scales",
                                                                   model.config.get("num_levels"))
    body = model.bijector[-1]
    assert [s.stop - s.start for s in slices] == [int(np.prod(p)) for p in body.latent_shapes]


def test_each_slice_holds_what_its_scale_factored_out():
    """Squeeze-only stages: scale 1's part is the first half of the squeezed channels, scale 2's
    the squeeze of the other half."""
    body = MultiScale([Squeeze(), Squeeze()], (1, 4, 4))
    x = torch.randn(3, 1, 4, 4)
    z, _ = body(x)
    first, rest = Squeeze()(x)[0].chunk(2, dim=1)
    fine, coarse = body.scale_slices()
    torch.testing.assert_close(z[:, fine], first.reshape(3, -1), rtol=0, atol=0)
    torch.testing.assert_close(z[:, coarse], Squeeze()(rest)[0].reshape(3, -1), rtol=0, atol=0)


@pytest.mark.parametrize("model", [VectorRealNVP(4, num_couplings=2, hidden=8),
                                   MAF(4, num_layers=1, hidden=8)])
def test_a_flow_without_scales_says_so(model):
    with pytest.raises(ValueError, match="not a multi-scale flow"):
        model.scale_slices()


@pytest.mark.parametrize("name", ["realnvp-checkerboard", "glow"])
def test_keeping_every_scale_reconstructs_and_keeping_none_is_a_plain_sample(name):
    model = perturb(_multiscale_models()[name], scale=0.05).eval()
    x = (torch.randint(0, 256, (1, *model.event_shape)).float() + 0.5) / 256
    with torch.no_grad():
        z = model.encode(x)
    n, temperature = 5, 0.6
    images, keeps = scale_rows(model, z, n, temperature, torch.Generator().manual_seed(3))
    rows = images.reshape(len(keeps), n, *model.event_shape)
    assert keeps == list(range(len(model.scale_slices()), -1, -1))
    with torch.no_grad():
        torch.testing.assert_close(rows[0], model.decode(z.expand(n, -1)), rtol=0, atol=0)
    torch.testing.assert_close(rows[0], x.expand(n, -1, -1, -1), rtol=0, atol=1e-4)
    plain = model.sample(n, temperature, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(rows[-1], plain, rtol=0, atol=0)
    assert not torch.allclose(rows[1], rows[0]) and not torch.allclose(rows[1], rows[-1])


def test_a_middle_row_keeps_the_coarse_coordinates_and_takes_the_rest_from_the_noise():
    model = _multiscale_models()["realnvp-channels"]
    fine, middle, coarse = model.scale_slices()
    z, noise = torch.randn(1, model.num_dims), torch.randn(4, model.num_dims)
    kept = keep_scales(z, noise, model.scale_slices(), 2)
    assert torch.equal(kept[:, fine], noise[:, fine])
    assert torch.equal(kept[:, middle], z[:, middle].expand(4, -1))
    assert torch.equal(kept[:, coarse], z[:, coarse].expand(4, -1))
    with pytest.raises(ValueError, match="keep must be in"):
        keep_scales(z, noise, model.scale_slices(), 4)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("latents")
    from realnvp.cli import main

    for name, extra in (("realnvp", []), ("glow", ["--model", "glow", "--set", "steps_per_level=1"])):
        assert main(["train", "--out", str(root / name), *STEPS, *extra]) == 0
    return root


def _cells(png, rows: int, cols: int, side: int = 32, pad: int = 2) -> np.ndarray:
    """The ``(rows, cols, side, side)`` cells of an ``image_grid`` picture of 8×8 greyscale images
    (enlarged ×4); every cell's top-left pixel block, one pixel per image pixel."""
    arr = np.asarray(Image.open(png))
    assert arr.shape == (rows * (side + pad) + pad, cols * (side + pad) + pad)
    cells = [[arr[pad + r * (side + pad):pad + r * (side + pad) + side:4,
                  pad + c * (side + pad):pad + c * (side + pad) + side:4] for c in range(cols)]
             for r in range(rows)]
    return np.array(cells)


@pytest.mark.parametrize("name", ["realnvp", "glow"])
def test_latents_writes_one_row_per_kept_scale_count(tmp_path, capsys, runs, name):
    out = tmp_path / "scales.png"
    code, stdout, err = cli(capsys, "latents", runs / name, "-o", out, "-n", "5", "--image", "7",
                            "--temperature", "0.8", "--seed", "4")
    assert code == 0, err
    assert "test example 7" in stdout and "keeping the coarsest 2, 1, 0 of 2 scales" in stdout
    cells = _cells(out, rows=3, cols=5)
    assert (cells[0] == cells[0, :1]).all()  # every scale kept: the same reconstruction
    assert cli(capsys, "sample", runs / name, "-n", "5", "--temperature", "0.8", "--seed", "4",
               "-o", tmp_path / "plain.npy")[0] == 0
    plain = np.load(tmp_path / "plain.npy")[:, 0]  # levels 0…16 of the 17-level digits
    assert np.array_equal(cells[2], np.rint(plain * (255 / 16)).astype(np.uint8))


def test_latents_of_an_image_file_and_of_a_sample(tmp_path, capsys, runs):
    picture = tmp_path / "digit.png"
    Image.fromarray(np.tile(np.arange(0, 256, 32, dtype=np.uint8), (8, 1)), mode="L").save(picture)
    code, stdout, _ = cli(capsys, "latents", runs / "realnvp", "--image", picture, "-n", "3",
                          "-o", tmp_path / "file.png")
    assert code == 0 and str(picture) in stdout
    _cells(tmp_path / "file.png", rows=3, cols=3)
    code, stdout, _ = cli(capsys, "latents", runs / "realnvp", "--image", "sample", "-o",
                          tmp_path / "sample.png")
    assert code == 0 and "a sample" in stdout
    _cells(tmp_path / "sample.png", rows=3, cols=8)


@pytest.mark.parametrize("argv, message", [
    (["--image", "300"], "the test split has examples 0 to 299"),
    (["--image", "nothing.png"], "input not found"),
    (["-n", "0"], "-n must be in [1, 64]"),
    (["-n", "65"], "-n must be in [1, 64]"),
    (["--temperature", "-1"], "--temperature must be a finite number"),
    (["-o", "scales.jpg"], "give a .png file"),
])
def test_latents_bad_arguments_are_one_line(tmp_path, capsys, runs, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "latents", runs / "realnvp", *argv)
    assert code == 2 and message in one_line(err)
    assert not (tmp_path / "scales.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--data", "toy:moons", "--set", "num_couplings=2", "--set", "hidden=8"], "is a vector run"),
    (["--set", "num_scales=1"], "has a single scale"),
])
def test_latents_refuses_runs_without_scales_to_show(tmp_path, capsys, argv, message):
    run = tmp_path / "run"
    assert cli(capsys, "train", "--out", run, *STEPS, *argv)[0] == 0
    code, _, err = cli(capsys, "latents", run, "-o", tmp_path / "scales.png")
    assert code == 2 and message in one_line(err)
    assert not (tmp_path / "scales.png").exists()


def test_a_class_conditional_view_encodes_and_decodes_under_one_label():
    """Every row is decoded under the image's context: the first reconstructs it, the last is
    the plain conditional sample, and another class gives other images."""
    torch.manual_seed(0)
    model = perturb(RealNVP((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1,
                            context_features=3), scale=0.05).eval()
    x = (torch.randint(0, 256, (1, 1, 8, 8)).float() + 0.5) / 256
    c = torch.tensor([[0.0, 1.0, 0.0]])
    with torch.no_grad():
        z = model.encode(x, c)
    n = 4
    images, keeps = scale_rows(model, z, n, 0.6, torch.Generator().manual_seed(3), context=c)
    rows = images.reshape(len(keeps), n, 1, 8, 8)
    torch.testing.assert_close(rows[0], x.expand(n, -1, -1, -1), rtol=0, atol=1e-4)
    plain = model.sample(n, 0.6, generator=torch.Generator().manual_seed(3), context=c.expand(n, -1))
    torch.testing.assert_close(rows[-1], plain, rtol=0, atol=0)
    other, _ = scale_rows(model, z, n, 0.6, torch.Generator().manual_seed(3),
                          context=torch.tensor([[0.0, 0.0, 1.0]]))
    assert not torch.allclose(other, images, atol=1e-3)


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    """A class-conditional RealNVP run on the digits, three steps."""
    run = tmp_path_factory.mktemp("runs") / "conditional"
    assert main(["train", "--out", str(run), *STEPS, "--set", "conditional=true"]) == 0
    return run


def _test_labels() -> torch.Tensor:
    from realnvp.config import Config
    from realnvp.training import load_split

    return load_split(Config(conditional=True), "test")[0].labels


def test_latents_of_a_class_conditional_run(tmp_path, capsys, conditional_run):
    run = conditional_run
    label = int(_test_labels()[7])
    code, out, err = cli(capsys, "latents", run, "--image", "7", "-n", "3", "-o", tmp_path / "a.png")
    assert code == 0 and f"test example 7, class {label}" in out, err
    code, _, err = cli(capsys, "latents", run, "--image", "sample", "-o", tmp_path / "b.png")
    assert code == 2 and "class-conditional: give --label N" in one_line(err)
    assert not (tmp_path / "b.png").exists()
    code, out, _ = cli(capsys, "latents", run, "--image", "sample", "--label", "4", "-o", tmp_path / "b.png")
    assert code == 0 and "a sample (seed 0), class 4" in out


def test_the_manifold_passes_through_its_four_examples_in_their_class():
    """Fig. 6 under a class: the grid's corners decode to the four examples encoded in that class,
    the grid is the decoded ``manifold_latents`` of their latents, and another class gives other
    images; an unconditional model's manifold is the same computation without a context."""
    torch.manual_seed(0)
    model = perturb(RealNVP((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1,
                            context_features=3), scale=0.05).eval()
    x = (torch.randint(0, 256, (4, 1, 8, 8)).float() + 0.5) / 256
    c = torch.tensor([[0.0, 1.0, 0.0]])
    steps = 3
    images = manifold(model, x, steps, c)
    assert images.shape == (steps * steps, 1, 8, 8)
    corners = images[[0, steps - 1, steps * (steps - 1), steps * steps - 1]]
    torch.testing.assert_close(corners, x, rtol=0, atol=1e-4)
    with torch.no_grad():
        z = model.encode(x, c.expand(4, -1))
        by_hand = model.decode(manifold_latents(z, steps), c.expand(steps * steps, -1))
    torch.testing.assert_close(images, by_hand, rtol=0, atol=0)
    other = manifold(model, x, steps, torch.tensor([[0.0, 0.0, 1.0]]))
    torch.testing.assert_close(other[[0, steps * steps - 1]], x[[0, 3]], rtol=0, atol=1e-4)
    assert not torch.allclose(other[1], images[1], atol=1e-3)  # between the corners, the class shows

    plain = perturb(RealNVP((1, 8, 8), num_scales=2, hidden_channels=4, num_blocks=1), scale=0.05).eval()
    with torch.no_grad():
        expected = plain.decode(manifold_latents(plain.encode(x), steps))
    torch.testing.assert_close(manifold(plain, x, steps), expected, rtol=0, atol=0)


def _examples(out: str) -> list[int]:
    return [int(i) for i in out.split("test examples [")[1].split("]")[0].split(", ")]


def test_interpolate_of_a_class_conditional_run(tmp_path, capsys, conditional_run):
    run, labels = conditional_run, _test_labels()
    code, out, err = cli(capsys, "interpolate", run, "--steps", "2", "-o", tmp_path / "a.png")
    assert code == 0 and (tmp_path / "a.png").is_file(), err
    label = int(out.split("decoded in class ")[1].split()[0])
    assert all(int(labels[i]) == label for i in _examples(out))  # four of one class, drawn

    code, out, _ = cli(capsys, "interpolate", run, "--steps", "2", "--label", "3", "--seed", "5",
                       "-o", tmp_path / "b.png")
    assert code == 0 and "decoded in class 3" in out
    assert all(int(labels[i]) == 3 for i in _examples(out))

    mixed = [int((labels == k).nonzero()[0]) for k in (0, 1, 1, 2)]
    code, out, _ = cli(capsys, "interpolate", run, "--steps", "2", "--indices", *map(str, mixed),
                       "--label", "4", "-o", tmp_path / "c.png")
    assert code == 0 and f"test examples {mixed}, encoded and decoded in class 4" in out
    same = [int(i) for i in (labels == 6).nonzero()[:4, 0]]
    code, out, _ = cli(capsys, "interpolate", run, "--steps", "2", "--indices", *map(str, same),
                       "-o", tmp_path / "d.png")
    assert code == 0 and "decoded in class 6" in out

    for argv, message in [
        (["--indices", *map(str, mixed)], "test examples of classes [0, 1, 2]; the manifold is "
                                          "encoded and decoded in one class: give --label N"),
        (["--label", "10"], "--label 10"),
        (["--label", "-1"], "--label -1"),
    ]:
        code, _, err = cli(capsys, "interpolate", run, *argv, "-o", tmp_path / "e.png")
        assert code == 2 and message in one_line(err), err
        assert not (tmp_path / "e.png").exists()


def test_interpolate_refuses_a_label_on_an_unconditional_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(capsys, "train", "--out", run, *STEPS)[0] == 0
    code, _, err = cli(capsys, "interpolate", run, "--label", "3", "-o", tmp_path / "m.png")
    assert code == 2 and "this model is unconditional" in one_line(err)
    assert not (tmp_path / "m.png").exists()
    code, out, _ = cli(capsys, "interpolate", run, "--steps", "2", "-o", tmp_path / "m.png")
    assert code == 0 and "decoded in class" not in out


def test_interpolate_refuses_a_test_split_of_fewer_than_four(tmp_path, capsys):
    """MNIST files with 2 test images: a one-line refusal, not the traceback of a 2-row manifold;
    and before its first epoch ends a run has no best checkpoint, which commands say how to
    get round."""
    data, run = write_mnist(tmp_path / "mnist", 24, 2), tmp_path / "run"
    assert cli(capsys, "train", "--config", "mnist", "--data-dir", data, "--out", run, *STEPS,
               "--batch-size", "4", "--set", "valid_size=4")[0] == 0
    code, _, err = cli(capsys, "interpolate", run, "-o", tmp_path / "m.png")
    assert code == 2 and "the test split has 2 examples; the manifold needs 4" in one_line(err)
    assert not (tmp_path / "m.png").exists()
    code, _, err = cli(capsys, "export", run, "-o", tmp_path / "exported")
    assert code == 2 and "no best checkpoint yet; it is written when an epoch ends, and the last " \
        "checkpoint holds the latest weights (--checkpoint last)" in one_line(err)
    assert not (tmp_path / "exported").exists()
