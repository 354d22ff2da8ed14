"""The torch-free checkpoint reader: safety without torch, equality with torch.load with it."""
import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from jaxinv.potentials.torch_pickle import Stub, load_pth


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def _archive(tmp_path, obj) -> str:
    path = tmp_path / "ckpt.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(obj, protocol=2))
        zf.writestr("archive/byteorder", "little")
    return str(path)


def test_unknown_globals_become_inert_stubs(tmp_path):
    marker = tmp_path / "pwned"
    path = _archive(tmp_path, {"a": [1, 2.5, "x"], "evil": _Evil(marker)})
    obj, stubbed = load_pth(path, return_stubbed=True)
    assert obj["a"] == [1, 2.5, "x"]
    assert isinstance(obj["evil"], Stub) and "system" in stubbed[0]
    assert not marker.exists()


def test_numpy_arrays_in_pickles(tmp_path):
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    obj = load_pth(_archive(tmp_path, {"arr": arr, "f": np.float64(1.5)}))
    np.testing.assert_array_equal(obj["arr"], arr)
    assert obj["arr"].dtype == np.float32 and obj["f"] == 1.5


@pytest.mark.crosscheck
def test_reader_equals_torch_load():
    torch = pytest.importorskip("torch", reason="needs torch (the crosscheck extra)")
    from jaxinv.potentials.sevennet import MODELS, find_checkpoint

    for name in MODELS:
        path = find_checkpoint(name)
        ours = load_pth(path)
        ref = torch.load(path, map_location="cpu", weights_only=False)
        count = 0

        def compare(a, b, where):
            nonlocal count
            if isinstance(b, torch.Tensor):
                b = b.detach().numpy()
                assert isinstance(a, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, where
                assert np.array_equal(a, b, equal_nan=True), where  # bitwise
                count += 1
            elif isinstance(b, dict):
                assert list(a) == list(b), where
                for k in b:
                    compare(a[k], b[k], f"{where}/{k}")
            elif isinstance(b, (list, tuple)):
                assert len(a) == len(b), where
                for k, (x, y) in enumerate(zip(a, b)):
                    compare(x, y, f"{where}[{k}]")
            elif isinstance(b, np.ndarray):
                assert np.array_equal(a, b), where
            elif isinstance(b, torch.device):
                assert a == str(b), where
            else:
                assert a == b or (a != a and b != b), where

        compare(ours, ref, name)
        assert count > len(ref["model_state_dict"])  # model and optimizer tensors


def test_rejects_non_zip(tmp_path):
    path = tmp_path / "legacy.pth"
    path.write_bytes(io.BytesIO(b"not a zip").getvalue())
    with pytest.raises(zipfile.BadZipFile):
        load_pth(path)
