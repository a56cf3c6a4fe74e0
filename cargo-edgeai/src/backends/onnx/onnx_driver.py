"""cargo-edgeai ONNX driver: export (HF BERT without torch), check and quantize ONNX models with
onnxruntime.quantization. Runs in the managed `onnxruntime` toolchain.

Usage: python onnx_driver.py REQUEST.json
Success: one JSON object on stdout, exit 0. A user error (bad input the user can fix): one JSON
object {"error", "help", "path"} on stdout, exit 3. Anything else is a bug: traceback, exit 1.
"""
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class UserError(Exception):
    def __init__(self, message, help, path=None):
        super().__init__(message)
        self.message, self.help, self.path = message, help, path


ONNX_TO_NP = {
    TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64,
    TensorProto.INT64: np.int64, TensorProto.INT32: np.int32, TensorProto.INT8: np.int8,
    TensorProto.UINT8: np.uint8, TensorProto.BOOL: np.bool_, TensorProto.INT16: np.int16,
}
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)


# ---------------------------------------------------------------- model inputs and checks

def all_graphs(graph):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from all_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from all_graphs(g)


def all_tensors(model):
    for g in all_graphs(model.graph):
        yield from g.initializer
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors


def check_onnx_file(path):
    """Header-only load; every external-data file must exist and be large enough."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf decode errors have no common base class
        raise UserError(f"not a readable ONNX model: {e}",
                        "re-export the model or re-download it; the file may be truncated", path)
    external = {}
    for t in all_tensors(model):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        end = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
        external[loc] = max(external.get(loc, 0), end)
    for loc, end in sorted(external.items()):
        data = path.parent / loc
        if not data.is_file():
            raise UserError(
                f"external data file `{loc}` is missing (expected at {data})",
                f"copy `{loc}` next to the model (ONNX external data is resolved relative to the .onnx file)",
                path)
        if data.stat().st_size < end:
            raise UserError(
                f"external data file `{loc}` is truncated: {data.stat().st_size} bytes, the model reads up to byte {end}",
                f"re-download or re-export `{loc}`", path)
    return model, sorted(external)


def model_inputs(model):
    inits = {i.name for i in model.graph.initializer}
    out = []
    for i in model.graph.input:
        if i.name in inits:
            continue
        tt = i.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
        out.append({"name": i.name, "elem_type": tt.elem_type, "dims": dims})
    return out


def dtype_name(elem_type):
    return TensorProto.DataType.Name(elem_type).lower()


def describe_shape(dims):
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


# ---------------------------------------------------------------- HF BERT export (no torch)

def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        buf = f.read()
    types = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "BF16": None}
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        raw = buf[a:b]
        if meta["dtype"] == "BF16":
            arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif meta["dtype"] in types:
            arr = np.frombuffer(raw, types[meta["dtype"]])
        else:
            raise UserError(f"tensor {name} has unsupported dtype {meta['dtype']}",
                            "export the model with F32, F16 or BF16 weights", path)
        out[name] = arr.reshape(meta["shape"])
    return out


def export_bert(model_dir, out_path):
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise UserError("the model directory has no config.json",
                        "pass a Hugging Face model directory (config.json + *.safetensors) or an .onnx file", model_dir)
    cfg = json.loads(cfg_path.read_text())
    mtype = cfg.get("model_type")
    if mtype != "bert":
        raise UserError(f"model_type `{mtype}` cannot be exported to ONNX here (BERT encoders only)",
                        "export it with optimum (`optimum-cli export onnx`) and pass the .onnx file", cfg_path)
    if cfg.get("position_embedding_type", "absolute") != "absolute" or cfg.get("hidden_act", "gelu") != "gelu":
        raise UserError("only absolute position embeddings and gelu are supported by the built-in BERT export",
                        "export it with optimum and pass the .onnx file", cfg_path)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UserError("no *.safetensors weights in the model directory",
                        "download the safetensors weights (pytorch_model.bin is not read)", model_dir)
    w = {}
    for f in files:
        w.update(read_safetensors(f))
    # Checkpoints saved from BertForX carry a `bert.` prefix.
    if "bert.embeddings.word_embeddings.weight" in w:
        w = {k[5:]: v for k, v in w.items() if k.startswith("bert.")}

    def W(name):
        if name not in w:
            raise UserError(f"tensor `{name}` is missing from the safetensors weights",
                            "check that the directory holds a complete BertModel checkpoint", model_dir)
        return w[name].astype(np.float32)

    H, nh, L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    dh, eps = H // nh, float(cfg.get("layer_norm_eps", 1e-12))
    nodes, inits = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], name=out + "_node", **kw))
        return out

    def linear(x, prefix, out):
        wt = init(prefix + ".weight", W(prefix + ".weight").T)
        b = init(prefix + ".bias", W(prefix + ".bias"))
        return node("Add", [node("MatMul", [x, wt], out + "_mm"), b], out)

    def layernorm(x, prefix, out):
        g = init(prefix + ".weight", W(prefix + ".weight"))
        b = init(prefix + ".bias", W(prefix + ".bias"))
        return node("LayerNormalization", [x, g, b], out, axis=-1, epsilon=eps)

    init("c_zero", np.array(0, np.int64)); init("c_one", np.array(1, np.int64))
    init("c_axis0", np.array([0], np.int64)); init("c_axes12", np.array([1, 2], np.int64))
    init("c_onef", np.array(1.0, np.float32)); init("c_neg", np.array(-1e4, np.float32))
    init("c_scale", np.array(1.0 / np.sqrt(dh), np.float32))
    init("c_split_heads", np.array([0, 0, nh, dh], np.int64)); init("c_merge", np.array([0, 0, H], np.int64))
    init("c_sqrt2", np.array(np.sqrt(2.0), np.float32)); init("c_half", np.array(0.5, np.float32))
    init("c_eps", np.array(1e-9, np.float32)); init("c_axis1", np.array([1], np.int64))

    # Embeddings: word + position (0..S-1) + token type, then LayerNorm.
    word = node("Gather", [init("embeddings.word_embeddings.weight", W("embeddings.word_embeddings.weight")), "input_ids"], "emb_word")
    shape = node("Shape", ["input_ids"], "ids_shape")
    seq = node("Gather", [shape, "c_one"], "seq_len")
    pos = node("Range", ["c_zero", seq, "c_one"], "pos_range")
    pos = node("Unsqueeze", [pos, "c_axis0"], "pos_ids")
    pos = node("Gather", [init("embeddings.position_embeddings.weight", W("embeddings.position_embeddings.weight")), pos], "emb_pos")
    typ = node("Gather", [init("embeddings.token_type_embeddings.weight", W("embeddings.token_type_embeddings.weight")), "token_type_ids"], "emb_type")
    x = node("Add", [node("Add", [word, pos], "emb_wp"), typ], "emb_sum")
    x = layernorm(x, "embeddings.LayerNorm", "emb_ln")

    # Additive attention mask [B,1,1,S]: 0 where attended, -1e4 where padded (as HF BERT).
    maskf = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    inv = node("Sub", ["c_onef", maskf], "mask_inv")
    add_mask = node("Unsqueeze", [node("Mul", [inv, "c_neg"], "mask_neg"), "c_axes12"], "mask_add")

    for i in range(L):
        p = f"encoder.layer.{i}"
        t = f"l{i}"

        def heads(y, name, perm):
            return node("Transpose", [node("Reshape", [y, "c_split_heads"], name + "_r")], name, perm=perm)
        q = heads(linear(x, p + ".attention.self.query", t + "_q"), t + "_qh", [0, 2, 1, 3])
        k = heads(linear(x, p + ".attention.self.key", t + "_k"), t + "_kh", [0, 2, 3, 1])
        v = heads(linear(x, p + ".attention.self.value", t + "_v"), t + "_vh", [0, 2, 1, 3])
        s = node("Mul", [node("MatMul", [q, k], t + "_qk"), "c_scale"], t + "_scaled")
        s = node("Add", [s, add_mask], t + "_masked")
        pr = node("Softmax", [s], t + "_probs", axis=-1)
        c = node("MatMul", [pr, v], t + "_ctx")
        c = node("Reshape", [node("Transpose", [c], t + "_ctx_t", perm=[0, 2, 1, 3]), "c_merge"], t + "_ctx_m")
        a = linear(c, p + ".attention.output.dense", t + "_attn_out")
        x = layernorm(node("Add", [a, x], t + "_res1"), p + ".attention.output.LayerNorm", t + "_ln1")
        f = linear(x, p + ".intermediate.dense", t + "_ff1")
        # Exact (erf) GELU, as BERT's "gelu".
        g = node("Add", [node("Erf", [node("Div", [f, "c_sqrt2"], t + "_g_div")], t + "_g_erf"), "c_onef"], t + "_g_add")
        f = node("Mul", [node("Mul", [f, g], t + "_g_mul"), "c_half"], t + "_gelu")
        f = linear(f, p + ".output.dense", t + "_ff2")
        x = layernorm(node("Add", [f, x], t + "_res2"), p + ".output.LayerNorm", t + "_ln2")
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="last_hidden_state_node"))

    # Mean pooling over attended tokens (sentence-transformers Pooling), L2-normalised when the
    # directory's modules.json has a Normalize module.
    init("c_axism1", np.array([-1], np.int64))
    m3 = node("Unsqueeze", [maskf, "c_axism1"], "pool_mask")
    summed = node("ReduceSum", [node("Mul", ["last_hidden_state", m3], "pool_mul"), "c_axis1"], "pool_sum", keepdims=0)
    count = node("Max", [node("ReduceSum", [m3, "c_axis1"], "pool_cnt", keepdims=0), "c_eps"], "pool_cnt_c")
    pooled = node("Div", [summed, count], "pool_mean")
    normalize = False
    modules = model_dir / "modules.json"
    if modules.is_file():
        normalize = any("Normalize" in m.get("type", "") for m in json.loads(modules.read_text()))
    if normalize:
        # Sqrt(ReduceSum(x*x)) rather than ReduceL2: onnxruntime's symbolic shape inference
        # (quant_pre_process) does not know opset-18 ReduceL2 with an `axes` input.
        sq = node("ReduceSum", [node("Mul", [pooled, pooled], "pool_sq"), "c_axism1"], "pool_sqsum", keepdims=1)
        n2 = node("Sqrt", [sq], "pool_l2")
        pooled = node("Div", [pooled, node("Max", [n2, "c_eps"], "pool_l2_c")], "pool_norm")
    nodes.append(helper.make_node("Identity", [pooled], ["sentence_embedding"], name="sentence_embedding_node"))

    dyn = ["batch", "sequence"]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, dyn)
              for n in ("input_ids", "attention_mask", "token_type_ids")]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", H]),
               helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", H])]
    graph = helper.make_graph(nodes, "bert", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              producer_name="cargo-edgeai", producer_version="bert-export")
    model.ir_version = 8
    helper.set_model_props(model, {"edgeai.source": "hf-bert", "edgeai.normalized": str(normalize).lower()})
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out_path))
    return {"layers": L, "hidden_size": H, "heads": nh, "normalized": normalize}


# ---------------------------------------------------------------- calibration data

def find_tokenizer(req, model_path):
    for d in ([Path(req["model"])] if Path(req["model"]).is_dir() else []) + [model_path.parent, Path(req["model"]).parent]:
        if (d / "tokenizer.json").is_file():
            return d / "tokenizer.json"
    return None


def tokenize_lines(tok_path, lines, by_name, origin, max_length=128):
    """One sample per line, unpadded (batch 1), as an embedding service feeds the model."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tok_path))
    tok.no_padding()
    tok.enable_truncation(max_length)
    out = []
    for n, line in enumerate(lines, 1):
        enc = tok.encode(line)
        feed = {"input_ids": np.array([enc.ids], np.int64),
                "attention_mask": np.array([enc.attention_mask], np.int64),
                "token_type_ids": np.array([enc.type_ids], np.int64)}
        out.append((f"{origin}:{n}", {k: v for k, v in feed.items() if k in by_name}))
    return out


def probe_samples(req, inputs, model_path):
    """INT8 dynamic without --calibration: PROBE_TEXT for a text model, else None."""
    by_name = {i["name"]: i for i in inputs}
    tok_path = find_tokenizer(req, model_path)
    if tok_path is None or "input_ids" not in by_name or not set(by_name) <= {"input_ids", "attention_mask", "token_type_ids"}:
        return None
    lines = [l.strip() for l in PROBE_TEXT.splitlines() if l.strip()]
    return tokenize_lines(tok_path, lines, by_name, "built-in probe text")


def load_calibration(req, inputs, model_path):
    cal = Path(req["calibration"])
    by_name = {i["name"]: i for i in inputs}
    samples = []  # (source, {name: array})
    if cal.is_file() and cal.suffix == ".npz":
        samples.append((cal, dict(np.load(cal))))
    elif cal.is_file():
        tok_path = find_tokenizer(req, model_path)
        if tok_path is None:
            raise UserError("a text calibration file needs the model's tokenizer.json, found none",
                            "pass the HF model directory as MODEL, or put tokenizer.json next to the .onnx file", cal)
        if "input_ids" not in by_name:
            raise UserError(f"a text calibration file needs a model input `input_ids`; the model's inputs are {sorted(by_name)}",
                            "pass a folder of .npz/.npy files keyed by the model's input names", cal)
        try:
            lines = [l.strip() for l in cal.read_text(encoding="utf-8").splitlines() if l.strip()]
        except UnicodeDecodeError:
            raise UserError("calibration text is not UTF-8", "pass a UTF-8 text file, one sample per line, or a folder of .npz files", cal)
        samples.extend(tokenize_lines(tok_path, lines, by_name, str(cal), int(req.get("max_length", 128))))
    elif cal.is_dir():
        for f in sorted(cal.iterdir()):
            if f.suffix == ".npz":
                samples.append((f, dict(np.load(f))))
        # `<input>.npy` files directly in the folder are one sample; sub-folders of them more.
        for d in [cal] + sorted(p for p in cal.iterdir() if p.is_dir()):
            npys = sorted(d.glob("*.npy"))
            if npys:
                samples.append((d, {p.stem: np.load(p) for p in npys}))
    else:
        raise UserError("calibration path does not exist", "pass a folder of .npz/.npy samples or a text file", cal)
    if not samples:
        raise UserError("no calibration samples found (no .npz, no .npy, no non-empty text line)",
                        "add samples: one .npz per sample keyed by input name, or <input>.npy files", cal)
    for src, feed in samples:
        for name, arr in feed.items():
            if name not in by_name:
                raise UserError(f"calibration input `{name}` in {src} is not an input of the model; expected one of {sorted(by_name)}",
                                "name the arrays after the model's inputs", cal)
            spec = by_name[name]
            want = ONNX_TO_NP.get(spec["elem_type"])
            if want is None or arr.dtype != np.dtype(want):
                raise UserError(f"calibration input `{name}` in {src}: expected dtype {dtype_name(spec['elem_type'])}, found {arr.dtype}",
                                f"save `{name}` as {np.dtype(want).name if want else dtype_name(spec['elem_type'])}", cal)
            dims = spec["dims"]
            ok = arr.ndim == len(dims) and all(d is None or not isinstance(d, int) or d == s for d, s in zip(dims, arr.shape))
            if not ok:
                raise UserError(f"calibration input `{name}` in {src}: expected shape {describe_shape(dims)}, found {list(arr.shape)}",
                                f"give `{name}` the model's shape ({describe_shape(dims)}; ? = any size)", cal)
        missing = sorted(set(by_name) - set(feed))
        if missing:
            raise UserError(f"calibration sample {src} lacks model input(s) {missing}",
                            "every sample must hold one array per model input", cal)
    return samples


# ---------------------------------------------------------------- quantization

def op_counts(model):
    return Counter(n.op_type for g in all_graphs(model.graph) for n in g.node)


QUANT_MARKERS = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QuantizeLinear", "DequantizeLinear",
                 "MatMulNBits", "GatherBlockQuantized", "QLinearMatMul", "QLinearConv", "DynamicQuantizeLSTM",
                 "QAttention", "QEmbedLayerNormalization"}


def unquantized_weight_ops(model):
    """Nodes that still read a float weight (an initializer with >= 2 dims) directly."""
    out = {}
    for g in all_graphs(model.graph):
        floats = {t.name for t in g.initializer if t.data_type in FLOAT_TYPES and len(t.dims) >= 2}
        for n in g.node:
            if n.op_type in QUANT_MARKERS:
                continue
            if any(i in floats for i in n.input):
                out.setdefault(n.op_type, []).append(n.name or "(unnamed)")
    return out


# Ops each scheme quantizes here: those with a constant float weight (MatMul's B, Conv's W,
# Gemm's B). Activation-only MatMuls (Q.K^T, P.V) and embeddings (Gather) stay float: quantizing
# them cost MiniLM 0.005-0.01 of cosine for no size or speed gain worth it.
SCHEME_OPS = {
    "int8-dynamic": ("MatMul", "Conv", "Gemm"),
    "int8-static": ("MatMul", "Conv", "ConvTranspose", "Gemm"),
    "int4": ("MatMul",),
}
WEIGHT_INPUT = {"MatMul": 1, "Conv": 1, "ConvTranspose": 1, "Gemm": 1}
# INT8 (static and dynamic): an activation whose peak is more than this many times its RMS over
# the calibration/probe samples (GELU outputs feeding a transformer's FFN projections) loses too
# much at 8 bits per tensor (the step is ~2*peak/255): the node reading it is kept FP32 and listed.
OUTLIER_RATIO = 24.0
# Accuracy-aware mixed precision (as Olive's and Neural Compressor's accuracy-driven tuning):
# after the outlier rule, while the worst cosine of any float output vs FP32 over the samples is
# below ACCURACY_TARGET, the nodes that cost most when quantized alone stay FP32 too, at most
# MAX_KEPT_FRACTION of the candidates. Measured on the calibration/probe samples only, never on
# validation data.
ACCURACY_TARGET = 0.99
# INT4 (weight-only): the sensitive MatMuls get 8-bit blocks (MatMulNBits bits=8) instead of 4,
# as llama.cpp's Q4_K_M mixture gives attn_v/ffn_down more bits; target on the probe samples
# above the 0.95 acceptance gate because probe text never covers every input.
ACCURACY_TARGET_INT4 = 0.97
MAX_KEPT_FRACTION = 0.6
SENSITIVITY_SAMPLES = 24
# INT8 dynamic has no calibration data; for a text model (input_ids + tokenizer.json) without
# --calibration these sentences probe activation ranges and sensitivity: varied length, casing,
# punctuation, numbers and scripts, as real queries are.
PROBE_TEXT = """yes
Thanks a lot!
Where is the nearest train station?
What's the difference between a virus and a bacterium?
The meeting was moved from Tuesday to Thursday at 10:30.
Our Q3 revenue rose 8.4% to $12.1 million, beating forecasts.
Order #55321 shipped on 2023-11-02 via DHL (tracking: 1Z999AA10123456784).
LOL... that's hilarious!!! :)
Please don't forget to water the plants -- they're very dry.
Résumé writing tips: keep it short, clear and honest.
Müller and Søren met at the Café de Flore in Paris.
Il pleut depuis trois jours et la rivière a débordé.
La reunión empieza a las ocho y media de la mañana.
Ich möchte bitte zwei Brötchen und einen Kaffee.
今日はとても暑いです。
Добрый вечер, как прошёл твой день?
The mitochondria is the powerhouse of the cell.
Photosynthesis converts light energy into chemical energy stored in glucose.
A dog chased the ball across the wet grass and into the pond.
The judge dismissed the case because the evidence had been obtained without a warrant.
Install the package with pip, then import it and call the main function with your config file.
After years of drought the farmers finally saw rain, and the whole valley turned green within a few weeks, bringing back birds, insects and hope for a better harvest than anyone had expected.
The new smartphone features a larger battery, a brighter display, a faster processor and three cameras, yet it weighs less than last year's model and costs about the same.
Although the bridge was designed to withstand earthquakes of magnitude seven, engineers recommended additional inspections after the recent tremors damaged several nearby buildings and roads.
"""


def weight_nodes(model, scheme):
    """Top-level nodes `scheme` can quantize: op in SCHEME_OPS with a constant float weight."""
    floats = {t.name: t for t in model.graph.initializer if t.data_type in FLOAT_TYPES and len(t.dims) >= 2}
    out = []
    for n in model.graph.node:
        if n.op_type not in SCHEME_OPS[scheme] or len(n.input) <= WEIGHT_INPUT[n.op_type]:
            continue
        w = floats.get(n.input[WEIGHT_INPUT[n.op_type]])
        if w is None:
            continue
        if scheme == "int4" and len(w.dims) != 2:
            continue
        out.append(n)
    return out


def activation_outliers(model_path, nodes, samples):
    """peak/RMS of each node's activation input over the calibration samples."""
    import onnxruntime as ort
    m = onnx.load(str(model_path))
    inits = {t.name for t in m.graph.initializer}
    acts = sorted({n.input[0] for n in nodes if n.input[0] not in inits})
    existing = {o.name for o in m.graph.output}
    for a in acts:
        if a not in existing:
            m.graph.output.append(helper.make_tensor_value_info(a, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    peak = dict.fromkeys(acts, 0.0)
    sq = dict.fromkeys(acts, 0.0)
    cnt = dict.fromkeys(acts, 0)
    for _, feed in samples:
        for a, o in zip(acts, s.run(acts, feed)):
            o = np.asarray(o, np.float64)
            peak[a] = max(peak[a], float(np.abs(o).max()) if o.size else 0.0)
            sq[a] += float((o * o).sum())
            cnt[a] += o.size
    return {a: peak[a] / max((sq[a] / max(cnt[a], 1)) ** 0.5, 1e-12) for a in acts}


class Reader:
    def __init__(self, samples):
        self.it = iter([feed for _, feed in samples])

    def get_next(self):
        return next(self.it, None)


def float_outputs(session, feeds):
    """Every float output of every sample, flattened as float64."""
    names = [o.name for o in session.get_outputs() if o.type in ("tensor(float)", "tensor(double)", "tensor(float16)")]
    return [[np.asarray(o, np.float64).ravel() for o in session.run(names, f)] for f in feeds], names


def worst_cosine(session, feeds, refs, names):
    """Lowest cosine vs FP32 of any float output of any sample (1.0 for two zero outputs)."""
    worst = 1.0
    for f, ref in zip(feeds, refs):
        for o, r in zip(session.run(names, f), ref):
            o = np.asarray(o, np.float64).ravel()
            na, nb = np.linalg.norm(o), np.linalg.norm(r)
            c = 1.0 if na == 0 and nb == 0 else (float(o @ r / (na * nb)) if na > 0 and nb > 0 else 0.0)
            worst = min(worst, c)
    return worst


class Quantizer:
    """One INT8 scheme with a fixed recipe; `model(nodes, out)` quantizes exactly `nodes`.
    Static: activation ranges are calibrated once (MinMax) and reused for every node subset
    through onnxruntime's calibration cache."""

    def __init__(self, scheme, pre, samples, external, work, block=32, symmetric=False, candidates=()):
        self.scheme, self.pre, self.external, self.samples = scheme, pre, external, samples
        self.cache = work / "calibration-cache.json"
        self.block, self.symmetric, self.candidates = block, symmetric, list(candidates)
        self.work = work
        self.target = ACCURACY_TARGET_INT4 if scheme == "int4" else ACCURACY_TARGET

    def nbits(self, src, out, nodes, bits):
        """MatMulNBits on exactly `nodes` (nodes_to_include only adds to the op types, so every
        other MatMul is excluded by name)."""
        from onnxruntime.quantization import QuantFormat
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
        m = onnx.load(str(src))
        others = [n.name for g in all_graphs(m.graph) for n in g.node if n.op_type == "MatMul" and n.name not in set(nodes)]
        cfg = DefaultWeightOnlyQuantConfig(block_size=self.block, is_symmetric=self.symmetric, accuracy_level=None,
                                           quant_format=QuantFormat.QOperator, op_types_to_quantize=("MatMul",), bits=bits)
        q = MatMulNBitsQuantizer(m, block_size=self.block, is_symmetric=self.symmetric, op_types_to_quantize=("MatMul",),
                                 nodes_to_exclude=others, algo_config=cfg)
        q.process()
        q.model.save_model_to_file(str(out), use_external_data_format=self.external)

    def model(self, nodes, out, alone=False):
        """Quantize `nodes`; INT4: the other candidates get 8-bit blocks unless `alone`."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
        if self.scheme == "int4":
            rest = [n for n in self.candidates if n not in set(nodes)]
            if alone or not rest:
                self.nbits(self.pre, out, nodes, 4)
            else:
                mid = self.work / "int4-pass.onnx"
                self.nbits(self.pre, mid, nodes, 4)
                self.nbits(mid, out, rest, 8)
        elif self.scheme == "int8-dynamic":
            # Per-channel weights: per-tensor INT8 weights cost MiniLM 0.03 of cosine (0.957 min).
            # reduce_range (7-bit weights against u8s8 saturation on CPUs without VNNI) measured
            # worse on MiniLM on an AVX2 host (min 0.9646 vs 0.9695): off.
            quantize_dynamic(str(self.pre), str(out), weight_type=QuantType.QInt8, per_channel=True, reduce_range=False,
                             nodes_to_quantize=list(nodes), use_external_data_format=self.external)
        else:
            quantize_static(str(self.pre), str(out), Reader(self.samples), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            reduce_range=False, calibrate_method=CalibrationMethod.MinMax,
                            calibration_cache_path=str(self.cache),
                            nodes_to_quantize=list(nodes), use_external_data_format=self.external,
                            # Symmetric per-channel weights (zero point 0, what int8 kernels
                            # want), asymmetric uint8 activations (ActivationSymmetric measured
                            # 0.977 vs 0.986 min on MiniLM).
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        return out


def accuracy_search(quantizer, pre, candidates, samples, work):
    """Nodes to keep FP32 so that the worst output cosine over `samples` reaches ACCURACY_TARGET:
    the fewest of the most sensitive ones (each node's cost measured quantizing it alone)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    feeds = [f for _, f in samples]
    ref, names = float_outputs(ort.InferenceSession(str(pre), so, providers=["CPUExecutionProvider"]), feeds)
    probe = work / "probe.onnx"

    target = quantizer.target

    def score(nodes, k=len(feeds), alone=False):
        quantizer.model(nodes, probe, alone=alone)
        s = ort.InferenceSession(str(probe), so, providers=["CPUExecutionProvider"])
        return worst_cosine(s, feeds[:k], ref[:k], names)

    full = score(candidates)
    result = {"metric": "lowest cosine vs FP32 of any float output over the samples", "target": target,
              "samples": len(feeds), "all_candidates_quantized": round(full, 6)}
    if full >= target or not names:
        result.update(achieved=round(full, 6), met=full >= target)
        return {}, result
    # Fewer samples for the per-node costs (a ranking), all of them for the decisions; `alone`:
    # just that node quantized (INT4: the others FP32, not 8-bit).
    k = min(len(feeds), SENSITIVITY_SAMPLES)
    cost = sorted(((1.0 - score([n], k, alone=True), n) for n in candidates), reverse=True)
    limit = max(1, int(MAX_KEPT_FRACTION * len(candidates)))
    # Smallest k (binary search; the score is close to monotone in k) that meets the target.
    lo, hi, best = 1, limit, None
    while lo <= hi:
        mid = (lo + hi) // 2
        kept = {n for _, n in cost[:mid]}
        sc = score([n for n in candidates if n not in kept])
        if sc >= target:
            best, hi = (mid, sc), mid - 1
        else:
            lo = mid + 1
    if best is None:
        kept = {n for _, n in cost[:limit]}
        best = (limit, score([n for n in candidates if n not in kept]))
    kept = {n: round(c, 6) for c, n in cost[:best[0]]}
    result.update(achieved=round(best[1], 6), met=best[1] >= target)
    return kept, result


def select_fp32_nodes(quantizer, pre, candidates, samples, work):
    """The INT8 mixed-precision choice: (outlier nodes {name: peak/RMS}, sensitive nodes
    {name: cost}, accuracy dict or None, note or None). Without samples nothing is kept FP32."""
    if not samples:
        return {}, {}, None, None
    kept_float, note = {}, None
    ratios = activation_outliers(pre, candidates, samples)
    for n in candidates:
        r = ratios.get(n.input[0], 0.0)
        if r > OUTLIER_RATIO:
            kept_float[n.name] = round(r, 1)
    rest = [n.name for n in candidates if n.name not in kept_float]
    if not rest:
        # Every candidate has outliers: keeping all FP32 would be no quantization at all (and
        # onnxruntime reads an empty node list as "all"): quantize them, say so.
        rest, kept_float = [n.name for n in candidates], {}
        note = "every candidate has activation outliers: quantized all"
    kept_sensitive, accuracy = accuracy_search(quantizer, pre, rest, samples, work)
    return kept_float, kept_sensitive, accuracy, note


def quantize(req, src_path, work):
    import onnxruntime
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    scheme = req["quant"]
    src = onnx.load(str(src_path))
    external = any(t.data_location == TensorProto.EXTERNAL for t in all_tensors(onnx.load(str(src_path), load_external_data=False)))
    inputs = model_inputs(src)
    samples = load_calibration(req, inputs, src_path) if req.get("calibration") else None

    # onnxruntime's recommended preprocessing: symbolic shape inference + graph optimisation.
    pre = work / "pre.onnx"
    pre_note = None
    try:
        quant_pre_process(str(src_path), str(pre), skip_optimization=False,
                          save_as_external_data=external, all_tensors_to_one_file=True)
    except Exception as e:  # noqa: BLE001 - symbolic shape inference fails on some graphs
        try:
            quant_pre_process(str(src_path), str(pre), skip_optimization=False, skip_symbolic_shape=True,
                              save_as_external_data=external, all_tensors_to_one_file=True)
            pre_note = f"quant_pre_process without symbolic shape inference ({type(e).__name__}: {e})"
        except Exception as e2:  # noqa: BLE001 - quantize the model as it is
            pre_note = f"quant_pre_process failed ({type(e2).__name__}: {e2}); quantized the model as is"
            pre = src_path
    pre_model = onnx.load(str(pre))
    candidates = weight_nodes(pre_model, scheme)
    if not candidates:
        present = sorted(op_counts(pre_model))
        raise UserError(
            f"{scheme} can quantize nothing in this model: it quantizes {'/'.join(SCHEME_OPS[scheme])} nodes with a constant "
            f"weight{' (2-D)' if scheme == 'int4' else ''} in the main graph; the model has {', '.join(present)}"
            + (" (nodes inside If/Loop subgraphs are not quantized)" if any(n.op_type in ("If", "Loop", "Scan") for n in pre_model.graph.node) else ""),
            "pick another scheme (int8-dynamic/int8-static for Conv/Gemm/MatMul, int4 only for MatMul with constant weights), "
            "or export the model without control flow",
            Path(req["model"]))
    kept_float = {}
    kept_sensitive = {}
    accuracy = None
    probe_source = None
    if samples:
        probe_source = "calibration data"
    elif scheme in ("int8-dynamic", "int4"):
        probe = probe_samples(req, inputs, src_path)
        if probe:
            samples, probe_source = probe, "built-in probe text (PROBE_TEXT)"
    out = work / "quant.onnx"
    t0 = time.time()
    if scheme in ("int8-dynamic", "int8-static"):
        quantizer = Quantizer(scheme, pre, samples, external, work)
        kept_float, kept_sensitive, accuracy, note = select_fp32_nodes(quantizer, pre, candidates, samples, work)
        if accuracy:
            accuracy["source"] = probe_source
        if note:
            pre_note = (pre_note + "; " if pre_note else "") + note
        nodes = [n.name for n in candidates if n.name not in kept_float and n.name not in kept_sensitive]
        quantizer.model(nodes, out)
    else:
        names = [n.name for n in candidates]
        quantizer = Quantizer(scheme, pre, samples, external, work, block=int(req["block"]),
                              symmetric=bool(req["symmetric"]), candidates=names)
        if samples:
            kept_sensitive, accuracy = accuracy_search(quantizer, pre, names, samples, work)
            accuracy["source"] = probe_source
        nodes = [n for n in names if n not in kept_sensitive]
        quantizer.model(nodes, out)
    seconds = time.time() - t0

    qm = onnx.load(str(out))
    before, after = op_counts(src), op_counts(qm)
    quantized = {k: v for k, v in after.items() if k in QUANT_MARKERS and v > before.get(k, 0)}
    if not quantized:
        raise UserError(f"{scheme} quantized nothing in this model ({len(nodes)} candidate nodes were refused by onnxruntime)",
                        "pick another scheme, or check the model with `cargo edgeai inspect`", Path(req["model"]))
    unq = unquantized_weight_ops(qm)
    ops = {n.name: n.op_type for n in candidates}
    recipe = None
    if scheme == "int4":
        recipe = {
            "weights": f"int4 blocks of {req['block']}, {'symmetric' if req['symmetric'] else 'asymmetric'} (MatMulNBits, RTN)",
            "activations": "float32",
            "probe_samples": len(samples) if samples else 0,
            "probe_source": probe_source,
            "kept_int8": [{"node": n, "op": ops.get(n, "?"),
                           "reason": f"accuracy search: 4-bit alone it lowers the worst output cosine by {c:.4f}; 8-bit blocks instead"}
                          for n, c in kept_sensitive.items()],
            "accuracy": accuracy,
        }
    if scheme in ("int8-dynamic", "int8-static"):
        recipe = {
            "weights": "int8, symmetric, per output channel",
            "activations": ("uint8, asymmetric, per tensor, range computed at run time" if scheme == "int8-dynamic"
                            else f"uint8, asymmetric, per tensor, MinMax ranges from {len(samples)} calibration samples (QDQ)"),
            "reduce_range": False,
            "op_types": list(SCHEME_OPS[scheme]),
            "calibration_method": "MinMax" if scheme == "int8-static" else None,
            # onnxruntime's Percentile/Entropy collectors stack all samples into one array: they
            # fail on variable-length text samples, and clip the outliers BERT needs anyway.
            "probe_samples": len(samples) if samples else 0,
            "probe_source": probe_source,
            "kept_fp32": [{"node": n, "op": ops.get(n, "?"), "reason": f"activation peak/RMS {r} > {OUTLIER_RATIO:g}"}
                          for n, r in kept_float.items()]
                         + [{"node": n, "op": ops.get(n, "?"),
                             "reason": f"accuracy search: quantized alone it lowers the worst output cosine by {c:.4f}"}
                            for n, c in kept_sensitive.items()],
            "accuracy": accuracy,
            "why": "8-bit per-tensor activations cannot hold outlier channels (a transformer's FFN inputs): nodes "
                   "whose input has outliers, then the most sensitive ones (measured on the calibration/probe "
                   "samples, never on validation data), stay FP32 until the worst output cosine reaches the target",
        }
    return out, {
        "recipe": recipe,
        "kept_float_sensitive": kept_sensitive if scheme != "int4" else {},
        "kept_int8_sensitive": kept_sensitive if scheme == "int4" else {},
        "quantized_nodes": len(nodes),
        "quantized_op_counts": dict(sorted(quantized.items())),
        "unquantized_weight_ops": {k: {"count": len(v), "nodes": v[:8]} for k, v in sorted(unq.items())},
        "kept_float_outliers": kept_float,
        "scheme_op_types": list(SCHEME_OPS[scheme]),
        "calibration_samples": len(samples) if samples and scheme == "int8-static" else 0,
        "preprocess": pre_note or "quant_pre_process (symbolic shape inference + optimisation)",
        "quantize_seconds": round(seconds, 3),
        "onnxruntime": onnxruntime.__version__,
        "external_data": external,
        "block": int(req["block"]) if scheme == "int4" else None,
        "symmetric": bool(req["symmetric"]) if scheme == "int4" else None,
    }


def file_bytes(path):
    m = onnx.load(str(path), load_external_data=False)
    locs = {dict((e.key, e.value) for e in t.external_data).get("location") for t in all_tensors(m)
            if t.data_location == TensorProto.EXTERNAL}
    return path.stat().st_size + sum((path.parent / l).stat().st_size for l in locs if l)


def publish(model_path, final):
    """Write `model_path` (and its external data) to `final` atomically: saved into a temp dir
    beside `final`, checked by loading it in onnxruntime, then renamed into place."""
    import onnxruntime as ort
    final = final.resolve()
    m = onnx.load(str(model_path))
    big = m.ByteSize() > 1_800_000_000 if hasattr(m, "ByteSize") else False
    tmp = Path(tempfile.mkdtemp(prefix=".edgeai-onnx-", dir=final.parent))
    try:
        staged = tmp / final.name
        data_name = final.name + ".data"
        if big:
            onnx.save(m, str(staged), save_as_external_data=True, all_tensors_to_one_file=True, location=data_name)
        else:
            onnx.save(m, str(staged))
        so = ort.SessionOptions()
        so.log_severity_level = 3
        ort.InferenceSession(str(staged), so, providers=["CPUExecutionProvider"])
        if big:
            os.replace(tmp / data_name, final.parent / data_name)
        os.replace(staged, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return file_bytes(final)


def convert(req):
    model = Path(req["model"])
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="edgeai-onnx-") as work:
        work = Path(work)
        summary = {"model": str(model), "output": req["output"], "quant": req.get("quant")}
        if model.is_dir():
            src = work / "export.onnx"
            summary["export"] = export_bert(model, src)
            summary["source"] = "hf-export"
            summary["input_bytes"] = sum(f.stat().st_size for f in model.glob("*.safetensors"))
        else:
            _, ext = check_onnx_file(model)
            src = model
            summary["source"] = "onnx"
            summary["external_data_files"] = ext
            summary["input_bytes"] = file_bytes(model)
        m = onnx.load(str(src), load_external_data=False)
        summary["inputs"] = [{"name": i["name"], "dtype": dtype_name(i["elem_type"]), "shape": describe_shape(i["dims"])}
                             for i in model_inputs(m)]
        summary["outputs"] = [o.name for o in m.graph.output]
        summary["fp32_bytes"] = file_bytes(src)
        if req.get("quant"):
            out, qsum = quantize(req, src, work)
            summary.update(qsum)
        else:
            out = src
        summary["output_bytes"] = publish(out, Path(req["output"]))
        summary["seconds"] = round(time.time() - t0, 3)
    return summary


def main():
    req = json.loads(Path(sys.argv[1]).read_text())
    try:
        if req["command"] == "convert":
            result = convert(req)
        else:
            raise SystemExit(f"unknown command {req['command']}")
    except UserError as e:
        print(json.dumps({"error": e.message, "help": e.help, "path": str(e.path) if e.path else None}))
        sys.exit(3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
