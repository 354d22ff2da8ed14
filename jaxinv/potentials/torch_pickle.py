"""Read PyTorch ``.pth`` checkpoints without torch.

``torch.save`` (zip format, torch >= 1.6) writes a zip archive::

    <prefix>/data.pkl        pickle of the saved object
    <prefix>/data/<key>      raw bytes of each tensor storage
    <prefix>/byteorder       'little' or 'big' (absent in older files: little)

Inside ``data.pkl`` a storage is a persistent id
``('storage', StorageType, key, location, numel)`` and a tensor is rebuilt by
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``. This
module resolves both with NumPy, so a checkpoint becomes plain Python
containers (dict, OrderedDict, list, tuple) of NumPy arrays and scalars.

Only an allow-list of globals is resolved (containers, tensor rebuilders,
NumPy arrays and dtypes, ``codecs.encode``); every other class becomes an inert
:class:`Stub` that records its arguments. Unlike a plain ``pickle.load``,
reading a file therefore never calls arbitrary code, similar in spirit to
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import codecs
import collections
import pickle
import zipfile
from typing import Any

import numpy as np

__all__ = ["load_pth", "Stub"]

# torch storage classes (``torch.FloatStorage``) and dtypes (``torch.float32``)
_STORAGES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128, "UntypedStorage": np.uint8,
}
_DTYPES = {
    "float64": np.float64, "double": np.float64, "float32": np.float32, "float": np.float32,
    "float16": np.float16, "half": np.float16, "bfloat16": "bfloat16", "int64": np.int64,
    "long": np.int64, "int32": np.int32, "int": np.int32, "int16": np.int16, "short": np.int16,
    "int8": np.int8, "uint8": np.uint8, "bool": np.bool_, "complex64": np.complex64,
    "complex128": np.complex128,
}
_BUILTINS = {"set", "frozenset", "slice", "range", "complex", "bytearray", "dict", "list", "tuple",
             "int", "float", "str", "bytes", "bool"}


class _DType:
    """Stands in for a torch storage class or ``torch.<dtype>``: only the dtype matters."""

    def __init__(self, dtype):
        self.dtype = dtype


class Stub:
    """Inert replacement for a class outside the allow-list (optimizer state classes, ...)."""

    qualname = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<Stub {self.qualname}{self.args!r}>"


def _stub(module: str, name: str) -> type:
    return type(name, (Stub,), {"qualname": f"{module}.{name}"})


def _rebuild_tensor(storage: np.ndarray, offset, size, stride, *_unused, **_kw) -> np.ndarray:
    """A contiguous copy of the strided view of a storage."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if 0 in size:
        return np.zeros(size, storage.dtype)
    view = np.lib.stride_tricks.as_strided(storage[int(offset):], shape=size,
                                           strides=tuple(s * storage.itemsize for s in stride),
                                           writeable=False)
    return np.array(view, copy=True)


def _rebuild_parameter(data, *_unused):
    return data


def _torch_device(kind="cpu", index=None):
    return kind if index is None else f"{kind}:{index}"


def _numpy_global(name: str):
    try:
        from numpy._core import multiarray  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core import multiarray
    return getattr(multiarray, name)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(file)
        self._archive, self._prefix, self._byteorder = archive, prefix, byteorder
        self._storages: dict[str, np.ndarray] = {}
        self.stubbed: set[str] = set()

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils":
            if name.startswith("_rebuild_tensor"):
                return _rebuild_tensor
            if name.startswith("_rebuild_parameter"):
                return _rebuild_parameter
        if module == "torch":
            if name in _STORAGES:
                return _DType(_STORAGES[name])
            if name in _DTYPES:
                return _DType(_DTYPES[name])
            if name == "device":
                return _torch_device
            if name == "Size":
                return tuple
        if module == "torch.storage" and name in ("UntypedStorage", "TypedStorage"):
            return _DType(np.uint8)
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            return _numpy_global(name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module.startswith("numpy.dtypes") and name.endswith("DType"):
            return super().find_class(module, name)
        if module in ("_codecs", "codecs") and name == "encode":
            return codecs.encode  # NumPy pickles byte buffers as codecs.encode(str, 'latin1')
        if module == "builtins" and name in _BUILTINS:
            return getattr(__import__("builtins"), name)
        self.stubbed.add(f"{module}.{name}")
        return _stub(module, name)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, kind, key, _location, _numel = pid[:5]
        key = str(key)
        if key not in self._storages:
            raw = self._archive.read(f"{self._prefix}/data/{key}" if self._prefix else f"data/{key}")
            dtype = kind.dtype if isinstance(kind, _DType) else np.uint8
            order = "<" if self._byteorder == "little" else ">"
            if isinstance(dtype, str):  # bfloat16: the high half of a float32
                bits = np.frombuffer(raw, np.dtype(np.uint16).newbyteorder(order)).astype(np.uint32)
                array = (bits << 16).view(np.float32)
            else:
                array = np.frombuffer(raw, np.dtype(dtype).newbyteorder(order)).astype(dtype)
            self._storages[key] = array
        return self._storages[key]


def load_pth(path, return_stubbed: bool = False) -> Any:
    """Load a ``torch.save`` zip archive as nested Python containers of NumPy arrays.

    Tensors become NumPy arrays of the same dtype, shape and values; ``torch.device``
    becomes a string. With ``return_stubbed`` the names of the classes that were
    replaced by :class:`Stub` are returned too.
    """
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
        if not pickles:
            raise ValueError(f"{path}: no data.pkl inside; legacy (pre-zip) torch files are not supported")
        prefix = pickles[0][: -len("data.pkl")].rstrip("/")
        byteorder_name = f"{prefix}/byteorder" if prefix else "byteorder"
        byteorder = archive.read(byteorder_name).decode().strip() if byteorder_name in names else "little"
        with archive.open(pickles[0]) as fh:
            unpickler = _Unpickler(fh, archive, prefix, byteorder)
            obj = unpickler.load()
    return (obj, sorted(unpickler.stubbed)) if return_stubbed else obj
