#!/usr/bin/env python3
"""Convert a legacy (non-zip) torch.save state_dict to safetensors, with the standard
library alone (no torch, no numpy).

The legacy layout is a sequence of pickles followed by raw storage bytes:
  1. magic number  2. protocol version  3. sys-info dict
  4. the state_dict, whose tensors refer to storages by persistent id
  5. the list of storage keys, in the order their bytes follow
  6. per storage: an 8-byte little-endian element count, then the raw elements.

Usage: pth2safetensors.py IN.pth OUT.safetensors
"""
import collections
import json
import pickle
import struct
import sys

MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL = 1001

# storage class name -> (safetensors dtype, element size in bytes)
STORAGE_TYPES = {
    "FloatStorage": ("F32", 4),
    "DoubleStorage": ("F64", 8),
    "HalfStorage": ("F16", 2),
    "BFloat16Storage": ("BF16", 2),
    "LongStorage": ("I64", 8),
    "IntStorage": ("I32", 4),
    "ShortStorage": ("I16", 2),
    "CharStorage": ("I8", 1),
    "ByteStorage": ("U8", 1),
    "BoolStorage": ("BOOL", 1),
}


class StorageType:
    def __init__(self, name):
        if name not in STORAGE_TYPES:
            raise ValueError(f"unsupported storage type torch.{name}")
        self.dtype, self.itemsize = STORAGE_TYPES[name]


class Storage:
    def __init__(self, key, stype):
        self.key, self.stype, self.data = key, stype, None


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset = storage, offset
        self.size, self.stride = tuple(size), tuple(stride)

    def contiguous_bytes(self):
        expected, acc = [], 1
        for dim in reversed(self.size):
            expected.insert(0, acc)
            acc *= dim
        numel = acc
        if numel > 1 and tuple(s for s, d in zip(self.stride, self.size) if d > 1) != tuple(
            e for e, d in zip(expected, self.size) if d > 1
        ):
            raise ValueError(f"non-contiguous tensor (size {self.size}, stride {self.stride})")
        n = self.storage.stype.itemsize
        start = self.offset * n
        return self.storage.data[start : start + numel * n]


def rebuild_tensor_v2(storage, offset, size, stride, *_rest):
    return Tensor(storage, offset, size, stride)


class LegacyUnpickler(pickle.Unpickler):
    def __init__(self, f, storages):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return rebuild_tensor_v2
        if module == "torch" and name.endswith("Storage"):
            return StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    def persistent_load(self, pid):
        kind, stype, key, _location, _numel = pid[:5]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id kind {kind!r}")
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        if key not in self.storages:
            self.storages[key] = Storage(key, stype)
        return self.storages[key]


def load_legacy(path):
    storages = {}
    with open(path, "rb") as f:
        if pickle.load(f) != MAGIC:
            raise ValueError(f"{path}: not a legacy torch.save file (bad magic number)")
        if pickle.load(f) != PROTOCOL:
            raise ValueError(f"{path}: unsupported legacy protocol version")
        pickle.load(f)  # sys info
        state = LegacyUnpickler(f, storages).load()
        keys = pickle.load(f)
        for key in keys:
            (numel,) = struct.unpack("<q", f.read(8))
            st = storages[key]
            st.data = f.read(numel * st.stype.itemsize)
            if len(st.data) != numel * st.stype.itemsize:
                raise ValueError(f"{path}: truncated storage {key}")
    return state


def write_safetensors(tensors, path):
    header, chunks, offset = {}, [], 0
    for name, t in tensors.items():
        raw = t.contiguous_bytes()
        header[name] = {
            "dtype": t.storage.stype.dtype,
            "shape": list(t.size),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for c in chunks:
            f.write(c)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    state = load_legacy(sys.argv[1])
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    write_safetensors(tensors, sys.argv[2])
    print(f"wrote {len(tensors)} tensors to {sys.argv[2]}", file=sys.stderr)


if __name__ == "__main__":
    main()
