"""Calibration data sources: .npy, .npz, folders of arrays or images, Python iterables."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_quantization_helpers import conv_data, conv_net, mlp  # noqa: E402

from qcompile.errors import QuantizationError  # noqa: E402
from qcompile.quantization import quantize  # noqa: E402
from qcompile.quantization.datasets import Dataset, DatasetConfig, make_dataset, take  # noqa


def _feeds(src, model=None, cfg=None, transform=None):
    return list(take(make_dataset(src, model or conv_net(), cfg, transform), None))


def test_npy_splits_along_the_batch_axis(tmp_path):
    np.save(tmp_path / "a.npy", conv_data(5))                    # [N, 3, 16, 16]
    f = _feeds(tmp_path / "a.npy")
    assert len(f) == 5 and f[0]["input"].shape == (1, 3, 16, 16)
    np.save(tmp_path / "b.npy", conv_data(4)[:, None])          # [N, 1, 3, 16, 16]
    assert len(_feeds(tmp_path / "b.npy")) == 4
    np.save(tmp_path / "c.npy", conv_data(1)[0])                # one sample, no batch axis
    assert _feeds(tmp_path / "c.npy")[0]["input"].shape == (1, 3, 16, 16)
    np.save(tmp_path / "d.npy", conv_data(2)[:, :, :8])         # wrong spatial size
    with pytest.raises(QuantizationError, match=r"shape \(1, 3, 8, 16\).*expects"):
        _feeds(tmp_path / "d.npy")


def test_npz_by_input_name_and_dynamic_batch(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.ones((6, 16), np.float32))
    f = _feeds(tmp_path / "a.npz", mlp())                       # mlp input 'x' is [B, 16]
    assert len(f) == 6 and f[0]["x"].shape == (1, 16)
    np.savez(tmp_path / "b.npz", y=np.ones((6, 16), np.float32), z=np.ones((6, 16)))
    with pytest.raises(QuantizationError, match=r"no array for model input\(s\) \['x'\]"):
        _feeds(tmp_path / "b.npz", mlp())


def test_folder_of_npy(tmp_path):
    for i, x in enumerate(conv_data(3)):
        np.save(tmp_path / f"{i}.npy", x)
    f = _feeds(tmp_path)
    assert len(f) == 3 and all(v["input"].shape == (1, 3, 16, 16) for v in f)
    assert make_dataset(tmp_path, conv_net()).length == 3


def test_folder_of_images_resized_and_normalised(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(3):
        img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    cfg = DatasetConfig(image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25))
    f = _feeds(tmp_path, cfg=cfg)
    assert len(f) == 3 and f[0]["input"].shape == (1, 3, 16, 16)
    x = f[0]["input"]
    assert -2.0 - 1e-6 <= x.min() and x.max() <= 2.0 + 1e-6     # (p/255 - .5)/.25
    img = np.asarray(Image.open(tmp_path / "0.png").resize((16, 16), Image.BILINEAR), np.float32)
    np.testing.assert_allclose(x[0].transpose(1, 2, 0), (img / 255 - 0.5) / 0.25, atol=1e-5)
    cfg = DatasetConfig(image_resize="keep-ratio-pad", image_size=(8, 16))
    m = conv_net()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 8
    x = _feeds(tmp_path, m, cfg)[0]["input"]
    assert x.shape == (1, 3, 8, 16) and np.all(x[..., 12:] == 0)   # 30x20 -> 12x8, padded


def test_python_iterables():
    xs = conv_data(4)
    assert len(_feeds([{"input": x[None]} for x in xs])) == 4
    assert len(_feeds([x for x in xs])) == 4                        # arrays, batch axis added
    assert len(_feeds((x, 0) for x in xs)) == 4                     # (data, label) pairs
    f = _feeds(xs, transform=None)                                  # one stacked array
    assert len(f) == 4
    f = _feeds(list(range(3)), transform=lambda i: xs[i])           # like nncf.Dataset
    assert len(f) == 3 and np.array_equal(f[2]["input"][0], xs[2])

    class NncfLike:
        def get_inference_data(self):
            return [{"input": x[None]} for x in xs]
    assert len(_feeds(NncfLike())) == 4
    with pytest.raises(QuantizationError, match="keys"):
        _feeds([{"wrong": xs[0]}])
    with pytest.raises(QuantizationError, match="not iterable"):
        _feeds(3.5)


def test_subset_size_takes_the_first_samples_and_says_so():
    msgs = []
    q = quantize(conv_net(), Dataset(iter(conv_data(3))), subset_size=300, target="avx512-vnni",
                 log=msgs.append)
    from qcompile.quantization import read_report
    assert read_report(q)["calibration"]["samples"] == 3
    assert any("3 samples (< --subset-size 300)" in m for m in msgs)
    q = quantize(conv_net(), conv_data(8), subset_size=5, target="avx512-vnni")
    assert read_report(q)["calibration"]["samples"] == 5


def test_missing_data_errors(tmp_path):
    with pytest.raises(QuantizationError, match="does not exist"):
        _feeds(tmp_path / "nope.npy")
    (tmp_path / "empty").mkdir()
    with pytest.raises(QuantizationError, match="no .npy, .npz or image files"):
        _feeds(tmp_path / "empty")
    with pytest.raises(QuantizationError, match="calibration dataset is empty"):
        quantize(conv_net(), [], target="avx512-vnni")
