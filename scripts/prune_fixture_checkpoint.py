#!/usr/bin/env python3
"""Make a small copy of an official-format checkpoint for tests/fixtures.

The reference checkpoints in ../shared are mostly token embedding (49,408 rows).
Tests only feed the fixture captions, so the rows of token ids that no fixture
caption uses are zeroed and the zip is rewritten with deflate. Every other
tensor, the pickle and the entry names are kept byte for byte, so the file is
still a torch.save zip that longclip (and torch.load) reads.

usage: prune_fixture_checkpoint.py SRC.pt TOKENIZER_JSON DST.pt
"""
import collections
import io
import json
import pickle
import sys
import zipfile


class _Rebuild:
    def __init__(self, *args):
        self.args = args


class _Unpickler(pickle.Unpickler):
    """Reads torch.save's data.pkl without torch: tensors become their args."""

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return lambda *args: _Rebuild(*args)
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, *rest: data
        return lambda *args, **kw: None

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel)
        return pid


def token_rows(tokenizer_json):
    rows = json.load(open(tokenizer_json))["rows"]
    ids = set()
    for row in rows:
        for key in ("bpe", "ids_248", "ids_77"):
            ids.update(row[key])
    return ids


def main(src, tok, dst):
    keep = token_rows(tok)
    zin = zipfile.ZipFile(src)
    pkl = next(n for n in zin.namelist() if n.endswith("/data.pkl"))
    prefix = pkl[: -len("data.pkl")]
    state = _Unpickler(io.BytesIO(zin.read(pkl))).load()
    emb = state["token_embedding.weight"]
    storage, offset, size, stride = emb.args[0], emb.args[1], emb.args[2], emb.args[3]
    assert offset == 0 and stride == (size[1], 1), "expects a plain [vocab, width] tensor"
    data_name = f"{prefix}data/{storage[2]}"
    raw = bytearray(zin.read(data_name))
    row_bytes = len(raw) // size[0]
    for row in range(size[0]):
        if row not in keep:
            raw[row * row_bytes : (row + 1) * row_bytes] = bytes(row_bytes)
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        for info in zin.infolist():
            data = bytes(raw) if info.filename == data_name else zin.read(info.filename)
            zout.writestr(info.filename, data)
    print(f"{dst}: kept {len(keep)} of {size[0]} token rows")


if __name__ == "__main__":
    main(*sys.argv[1:])
