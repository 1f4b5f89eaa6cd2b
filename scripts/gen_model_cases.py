#!/usr/bin/env python3
"""Make small official-format checkpoints of other shapes, with expected features.

Writes tests/fixtures/model_cases/CASE.pt (torch.save zip format, written
without torch) and tests/fixtures/model_cases/cases.json (the architecture
the loader must infer, token ids, pixels, and the features of an independent
float64 numpy implementation of the official forward pass).

The numpy forward is first checked against the official PyTorch outputs in
../shared/fixtures/reference (cos >= 0.99999), so it is a trustworthy
reference for shapes the fixtures do not cover.

usage: python3 scripts/gen_model_cases.py [SHARED_DIR]
needs: numpy, safetensors (pip install numpy safetensors)
"""
import collections
import copyreg
import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "model_cases")

# ---------------------------------------------------------------------------
# torch.save without torch: fake `torch` modules so pickle emits the globals
# that torch.load (and longclip) expect.

torch_mod = types.ModuleType("torch")
utils_mod = types.ModuleType("torch._utils")


def _rebuild_tensor_v2(*args):
    raise RuntimeError("only for pickling")


_rebuild_tensor_v2.__module__ = "torch._utils"
utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
STORAGES = {}
for name in ["FloatStorage", "HalfStorage", "BFloat16Storage"]:
    cls = type(name, (), {"__module__": "torch"})
    setattr(torch_mod, name, cls)
    STORAGES[name] = cls
torch_mod._utils = utils_mod
sys.modules["torch"] = torch_mod
sys.modules["torch._utils"] = utils_mod


class Storage:
    def __init__(self, key, kind, numel):
        self.key, self.kind, self.numel = key, kind, numel


class TensorRef:
    def __init__(self, storage, shape, stride):
        self.storage, self.shape, self.stride = storage, shape, stride

    def __reduce__(self):
        return (_rebuild_tensor_v2, (self.storage, 0, tuple(self.shape), tuple(self.stride), False, collections.OrderedDict()))


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", STORAGES[obj.kind], obj.key, "cpu", obj.numel)
        return None


def to_bytes(array, kind):
    if kind == "FloatStorage":
        return array.astype("<f4").tobytes()
    if kind == "HalfStorage":
        return array.astype("<f2").tobytes()
    bits = np.ascontiguousarray(array, dtype="<f4").view("<u4")
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()  # round to nearest even


def stored_value(array, kind):
    """What a reader gets back after storing `array` as `kind`."""
    if kind == "FloatStorage":
        return array.astype(np.float32).astype(np.float64)
    if kind == "HalfStorage":
        return array.astype(np.float16).astype(np.float64)
    b = np.frombuffer(to_bytes(array, kind), dtype="<u2").astype("<u4") << 16
    return b.view("<f4").reshape(array.shape).astype(np.float64)


def script_class(qualname):
    """A class pickle names as `qualname`, like TorchScript's `__torch__...` module classes."""
    module_name, name = qualname.rsplit(".", 1)
    parts = module_name.split(".")
    for i in range(1, len(parts)):
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    module = sys.modules.setdefault(module_name, types.ModuleType(module_name))
    if not hasattr(module, name):
        cls = type(name, (), {"__module__": module_name, "__qualname__": name})
        cls.__reduce_ex__ = lambda self, proto: (copyreg.__newobj__, (type(self),), self.state)
        setattr(module, name, cls)
    return getattr(module, name)


def script_tree(state):
    """Flat state dict -> nested module objects, as a TorchScript data.pkl holds them."""
    root = collections.OrderedDict()
    for name, value in state.items():
        node = root
        parts = name.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, collections.OrderedDict())
        node[parts[-1]] = value

    def build(node, qualname):
        obj = script_class(qualname).__new__(script_class(qualname))
        obj.state = collections.OrderedDict([("training", False)])
        for key, value in node.items():
            is_module = isinstance(value, collections.OrderedDict)
            obj.state[key] = build(value, "__torch__.torch.nn.modules.module.Module") if is_module else value
        return obj

    return build(root, "__torch__.clip.model.CLIP")


class FixedTimeZip:
    """Entries with a fixed timestamp, so regenerated files are byte-identical."""

    def __init__(self, zf):
        self.zf = zf

    def writestr(self, name, data):
        self.zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)


def torch_save(path, tensors, kinds, fortran=(), nest_key=None, torchscript=False):
    """tensors: name -> array; kinds: name -> storage kind; fortran: names stored transposed."""
    archive = os.path.splitext(os.path.basename(path))[0]
    state = collections.OrderedDict()
    blobs = []
    for i, (name, array) in enumerate(tensors.items()):
        kind = kinds[name]
        shape = list(array.shape)
        if name in fortran and array.ndim == 2:
            data, stride = array.T.copy(), [1, shape[0]]
        else:
            data = array
            stride = [int(np.prod(shape[j + 1:])) for j in range(len(shape))]
        storage = Storage(str(i), kind, int(array.size))
        state[name] = TensorRef(storage, shape, stride)
        blobs.append((str(i), to_bytes(data.reshape(-1), kind)))
    obj = {nest_key: state} if nest_key else state
    if torchscript:
        obj = script_tree(state)
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        z = FixedTimeZip(zf)
        z.writestr(f"{archive}/data.pkl", buf.getvalue())
        z.writestr(f"{archive}/byteorder", "little")
        for key, blob in blobs:
            z.writestr(f"{archive}/data/{key}", blob)
        z.writestr(f"{archive}/version", "3\n")
        if torchscript:
            z.writestr(f"{archive}/constants.pkl", pickle.dumps((), protocol=2))
            z.writestr(f"{archive}/code/__torch__/clip/model.py", "class CLIP(Module):\n  pass\n")


# ---------------------------------------------------------------------------
# The official forward pass in float64 numpy.

def layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def block(sd, p, x, heads, mask):
    n, l, w = x.shape
    hd = w // heads
    h = layer_norm(x, sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
    qkv = h @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]
    q, k, v = [qkv[..., i * w:(i + 1) * w].reshape(n, l, heads, hd).transpose(0, 2, 1, 3) for i in range(3)]
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
    if mask is not None:
        s = s + mask
    a = (softmax(s) @ v).transpose(0, 2, 1, 3).reshape(n, l, w)
    x = x + a @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
    h = layer_norm(x, sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
    h = h @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"]
    h = h * (1 / (1 + np.exp(-1.702 * h)))
    return x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]


def count_layers(sd, prefix):
    return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


def encode_text(sd, ids, heads):
    """ids: [N, context] zero padded, like the official tokenize()."""
    pe = sd["positional_embedding"].copy()
    if "positional_embedding_res" in sd:
        pe[20:] = sd["positional_embedding_res"][20:]
    ids = np.asarray(ids)
    x = sd["token_embedding.weight"][ids] + pe[: ids.shape[1]]
    l = ids.shape[1]
    mask = np.triu(np.full((l, l), -np.inf), 1)
    for i in range(count_layers(sd, "transformer.resblocks.")):
        x = block(sd, f"transformer.resblocks.{i}.", x, heads, mask)
    x = layer_norm(x, sd["ln_final.weight"], sd["ln_final.bias"])
    return x[np.arange(len(ids)), ids.argmax(-1)] @ sd["text_projection"]


def encode_image(sd, pixels, heads):
    w = sd["visual.conv1.weight"]
    width, _, p, _ = w.shape
    n, _, r, _ = pixels.shape
    g = r // p
    patches = pixels.reshape(n, 3, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(n, g * g, 3 * p * p)
    x = patches @ w.reshape(width, -1).T
    cls = np.broadcast_to(sd["visual.class_embedding"], (n, 1, width))
    x = np.concatenate([cls, x], 1) + sd["visual.positional_embedding"]
    x = layer_norm(x, sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    for i in range(count_layers(sd, "visual.transformer.resblocks.")):
        x = block(sd, f"visual.transformer.resblocks.{i}.", x, heads, None)
    x = layer_norm(x[:, 0], sd["visual.ln_post.weight"], sd["visual.ln_post.bias"])
    return x @ sd["visual.proj"]


def cosines(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


# ---------------------------------------------------------------------------
# Self-check against the official outputs.

def read_official(path):
    """Reads a torch.save zip without torch (arrays in float64)."""

    class Rebuild:
        pass

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if module == "collections" and name == "OrderedDict":
                return collections.OrderedDict
            if name == "_rebuild_tensor_v2":
                return lambda storage, offset, size, stride, *rest: (storage, offset, size, stride)
            if name.endswith("Storage"):
                return name
            return lambda *a, **k: None

        def persistent_load(self, pid):
            return pid

    z = zipfile.ZipFile(path)
    pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
    prefix = pkl[: -len("data.pkl")]
    state = Unpickler(io.BytesIO(z.read(pkl))).load()
    out = {}
    for name, (storage, offset, size, stride) in state.items():
        kind, key = storage[1], storage[2]
        dt = {"FloatStorage": "<f4", "HalfStorage": "<f2"}[kind]
        flat = np.frombuffer(z.read(f"{prefix}data/{key}"), dtype=dt).astype(np.float64)
        out[name] = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=size, strides=[s * 8 for s in stride]
        ).copy() if size else flat[offset:offset + 1].reshape(())
    return out


def self_check(shared):
    from safetensors.numpy import load_file

    ref = os.path.join(shared, "fixtures", "reference")
    sd = read_official(os.path.join(ref, "tiny-longclip.pt"))
    exp = load_file(os.path.join(ref, "expected.safetensors"))
    rows = json.load(open(os.path.join(ref, "tokenizer.json")))["rows"]
    heads = sd["ln_final.weight"].shape[0] // 64
    t = encode_text(sd, [r["ids_248"] for r in rows], heads)
    i = encode_image(sd, exp["pixels"].astype(np.float64), sd["visual.conv1.weight"].shape[0] // 64)
    ct = cosines(t, exp["longclip.text_features"]).min()
    ci = cosines(i, exp["longclip.image_features"]).min()
    print(f"numpy reference vs official: text cos min {ct:.7f}, image cos min {ci:.7f}")
    assert ct > 0.99999 and ci > 0.99999, "the numpy reference does not match the official code"


# ---------------------------------------------------------------------------
# Cases

CASES = [
    # 1 head and 3 text layers, 3 heads in vision, patch 8 at 32 px, Long-CLIP tables, fp32.
    dict(name="w64-h1-long", embed=48, vocab=600, ctx=248, long=True,
         text=dict(width=64, layers=3, mlp=256), vision=dict(width=192, layers=1, mlp=768, patch=8, res=32),
         kind="FloatStorage", fortran=(), nest=None),
    # 4 heads in text, 1 in vision, patch 14 at 28 px, plain 77-position CLIP, fp16 weights like
    # the official files, nested under "state_dict", a transposed (Fortran-order) projection.
    dict(name="w256-h4-clip77", embed=32, vocab=500, ctx=77, long=False,
         text=dict(width=256, layers=1, mlp=1024), vision=dict(width=64, layers=2, mlp=256, patch=14, res=28),
         kind="HalfStorage", fortran=("text_projection", "visual.proj"), nest="state_dict"),
    # bf16 storage, MLP 3x wide, 2 heads of 64 in both towers, patch 4 at 16 px.
    dict(name="w128-bf16-mlp3", embed=64, vocab=400, ctx=248, long=True,
         text=dict(width=128, layers=2, mlp=384), vision=dict(width=128, layers=3, mlp=384, patch=4, res=16),
         kind="BFloat16Storage", fortran=(), nest=None),
    # A TorchScript archive like OpenAI's released .pt: modules as nested objects.
    dict(name="script-w64", embed=32, vocab=300, ctx=77, long=False,
         text=dict(width=64, layers=1, mlp=256), vision=dict(width=64, layers=1, mlp=256, patch=8, res=16),
         kind="HalfStorage", fortran=(), nest=None, torchscript=True),
]


def make_weights(case, rng):
    t, v, e = case["text"], case["vision"], case["embed"]
    sd = collections.OrderedDict()

    def normal(*shape, std=0.02):
        return rng.normal(0, std, shape)

    def blocks(prefix, layers, w, mlp):
        for i in range(layers):
            p = f"{prefix}{i}."
            sd[p + "attn.in_proj_weight"] = normal(3 * w, w, std=w ** -0.5)
            sd[p + "attn.in_proj_bias"] = normal(3 * w)
            sd[p + "attn.out_proj.weight"] = normal(w, w, std=w ** -0.5)
            sd[p + "attn.out_proj.bias"] = normal(w)
            sd[p + "ln_1.weight"] = 1 + normal(w, std=0.1)
            sd[p + "ln_1.bias"] = normal(w)
            sd[p + "mlp.c_fc.weight"] = normal(mlp, w, std=w ** -0.5)
            sd[p + "mlp.c_fc.bias"] = normal(mlp)
            sd[p + "mlp.c_proj.weight"] = normal(w, mlp, std=mlp ** -0.5)
            sd[p + "mlp.c_proj.bias"] = normal(w)
            sd[p + "ln_2.weight"] = 1 + normal(w, std=0.1)
            sd[p + "ln_2.bias"] = normal(w)

    sd["positional_embedding"] = normal(case["ctx"], t["width"], std=0.01)
    if case["long"]:
        sd["positional_embedding_res"] = normal(case["ctx"], t["width"], std=0.01)
    sd["text_projection"] = normal(t["width"], e, std=t["width"] ** -0.5)
    sd["logit_scale"] = np.array(np.log(1 / 0.07))
    g = v["res"] // v["patch"]
    sd["visual.class_embedding"] = normal(v["width"], std=v["width"] ** -0.5)
    sd["visual.positional_embedding"] = normal(g * g + 1, v["width"], std=v["width"] ** -0.5)
    sd["visual.proj"] = normal(v["width"], e, std=v["width"] ** -0.5)
    sd["visual.conv1.weight"] = normal(v["width"], 3, v["patch"], v["patch"], std=0.05)
    sd["visual.ln_pre.weight"] = 1 + normal(v["width"], std=0.1)
    sd["visual.ln_pre.bias"] = normal(v["width"])
    blocks("visual.transformer.resblocks.", v["layers"], v["width"], v["mlp"])
    sd["visual.ln_post.weight"] = 1 + normal(v["width"], std=0.1)
    sd["visual.ln_post.bias"] = normal(v["width"])
    blocks("transformer.resblocks.", t["layers"], t["width"], t["mlp"])
    sd["token_embedding.weight"] = normal(case["vocab"], t["width"])
    sd["ln_final.weight"] = 1 + normal(t["width"], std=0.1)
    sd["ln_final.bias"] = normal(t["width"])
    return sd


def storage_kind(case, name):
    """fp16 files keep norms, embeddings and tables in fp32, as the official ones do."""
    if name == "logit_scale":
        return "FloatStorage"
    half_typed = ("weight", "bias", "in_proj_weight", "in_proj_bias", "text_projection", "visual.proj")
    is_matrix_param = name.endswith(half_typed) and ("ln_" not in name and "ln_final" not in name)
    if case["kind"] == "HalfStorage" and (not is_matrix_param or name == "token_embedding.weight"):
        return "FloatStorage" if name != "token_embedding.weight" else "HalfStorage"
    return case["kind"]


def make_ids(case, rng):
    """Sequences SOT..EOT of several lengths, with SOT/EOT the two top ids."""
    vocab, ctx = case["vocab"], case["ctx"]
    sot, eot = vocab - 2, vocab - 1
    seqs = []
    for length in [2, 5, 17, 30, ctx // 2, ctx]:
        body = list(rng.integers(1, vocab - 2, max(length - 2, 0)))
        seqs.append([sot] + [int(x) for x in body] + [eot])
    return seqs


def main():
    shared = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared")
    self_check(shared)
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(1234)
    cases = []
    for case in CASES:
        sd = make_weights(case, rng)
        kinds = {k: storage_kind(case, k) for k in sd}
        path = os.path.join(OUT, case["name"] + ".pt")
        torch_save(path, sd, kinds, case["fortran"], case["nest"], case.get("torchscript", False))
        stored = {k: stored_value(a, kinds[k]) for k, a in sd.items()}
        ids = make_ids(case, rng)
        padded = [s + [0] * (case["ctx"] - len(s)) for s in ids]
        v = case["vision"]
        pixels = rng.normal(0, 1, (2, 3, v["res"], v["res"]))
        pixels = pixels.astype(np.float32).astype(np.float64)
        t_heads, v_heads = case["text"]["width"] // 64, v["width"] // 64
        cases.append(dict(
            name=case["name"],
            file=case["name"] + ".pt",
            config=dict(embed_dim=case["embed"],
                        text=dict(width=case["text"]["width"], layers=case["text"]["layers"], heads=t_heads,
                                  mlp_width=case["text"]["mlp"], context_length=case["ctx"], vocab_size=case["vocab"]),
                        vision=dict(width=v["width"], layers=v["layers"], heads=v_heads, mlp_width=v["mlp"],
                                    patch_size=v["patch"], image_size=v["res"]),
                        activation="quick_gelu"),
            long_clip=case["long"],
            format="TorchScript" if case.get("torchscript") else "TorchStateDict",
            ids=ids,
            pixels=pixels.reshape(-1).tolist(),
            text_features=encode_text(stored, padded, t_heads).tolist(),
            image_features=encode_image(stored, pixels, v_heads).tolist(),
        ))
        print(f"{path}: {os.path.getsize(path)} bytes")
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(cases, f)


if __name__ == "__main__":
    main()
