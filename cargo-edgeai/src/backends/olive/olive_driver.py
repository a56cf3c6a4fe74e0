"""cargo-edgeai Olive driver: run an Olive workflow (`olive run --config`) that quantizes an FP32
ONNX model, and collect its output. Runs in the managed `olive` toolchain.

Usage: python olive_driver.py REQUEST.json   (onnx_driver.py and the workflow sit next to it)
Success: one JSON object on stdout, exit 0. A user error: {"error", "help", "path"}, exit 3.
Olive failed: {"error", "log", "log_tail"}, exit 4. Anything else is a bug: traceback, exit 1.

Before Olive runs, the model-dependent part of the workflow is added to the pass config as
`nodes_to_exclude` (with the reason per node in the summary), so Olive quantizes the same nodes
as cargo-edgeai's onnxruntime path: MatMul/Conv/Gemm with a constant weight; activation-only
MatMuls and Gather embeddings stay float; INT8 static also keeps float the nodes whose calibrated
input peak/RMS exceeds onnx_driver.OUTLIER_RATIO.
"""
import json
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import onnx
from onnx import TensorProto

import onnx_driver as od
from onnx_driver import UserError

LOG_TAIL = 40


def weight_initializers(model):
    return {t.name for t in model.graph.initializer if t.data_type in od.FLOAT_TYPES and len(t.dims) >= 2}


def preprocess(src, work):
    """The preprocessing Olive's OnnxStaticQuantization runs (same call), so node names match."""
    from onnxruntime.quantization.preprocess import quant_pre_process
    pre = work / "edgeai-pre" / "model.onnx"
    pre.parent.mkdir(exist_ok=True)
    try:
        quant_pre_process(input_model_path=str(src), output_model_path=str(pre), auto_merge=True,
                          save_as_external_data=True)
        return pre, "quant_pre_process (as Olive runs it)"
    except Exception as e:  # noqa: BLE001 - Olive falls back to the original model too
        return src, f"quant_pre_process failed ({type(e).__name__}: {e}); Olive quantizes the model as is"


def nothing_to_quantize(scheme, model, req):
    present = sorted(od.op_counts(model))
    return UserError(
        f"{scheme} can quantize nothing in this model: it quantizes {'/'.join(od.SCHEME_OPS[scheme])} nodes with a "
        f"constant weight{' (2-D)' if scheme == 'int4' else ''} in the main graph; the model has {', '.join(present)}",
        "pick another scheme (int8-dynamic/int8-static for Conv/Gemm/MatMul, int4 only for MatMul with constant weights)",
        Path(req["input"]))


def calibration_request(model, calibration, max_length=128):
    """onnx_driver.load_calibration's request. A text file is tokenized with the tokenizer.json next
    to the model, else the one next to the text file (an FP32 export in a cache directory has
    none). Same function as in edgeai_olive_data.py: Olive reads the same samples."""
    model, cal = Path(model), Path(calibration)
    where = model if (model.parent / "tokenizer.json").is_file() or not cal.is_file() else cal.parent
    return {"model": str(where), "calibration": str(cal), "max_length": int(max_length)}


def plan_exclusions(req, src_path, src, work):
    """{node: reason} for the pass's nodes_to_exclude, plus facts for the summary."""
    scheme = req["quant"]
    facts = {"calibration_samples": 0}
    if scheme in ("int8-static", "int8-dynamic"):
        # Olive's ONNX quantization passes preprocess first: name the nodes of that graph.
        model_path, facts["preprocess"] = preprocess(src_path, work)
        model = onnx.load(str(model_path))
    else:
        model_path, model = src_path, src
    candidates = od.weight_nodes(model, scheme)
    if not candidates:
        raise nothing_to_quantize(scheme, model, req)
    names = {n.name for n in candidates}
    excluded = {}
    weights = weight_initializers(model)
    for n in model.graph.node:
        if n.name in names:
            continue
        if n.op_type in od.SCHEME_OPS[scheme]:
            excluded[n.name] = "no constant 2-D weight" if scheme == "int4" else "no constant weight"
        elif scheme == "int4" and n.op_type == "Gather" and n.input and n.input[0] in weights:
            # Olive's RTN pass would quantize embedding tables too; the onnxruntime path keeps them.
            excluded[n.name] = "embedding table (Gather) kept float"
    samples, source = None, None
    if scheme == "int8-static":
        samples = od.load_calibration(calibration_request(req["input"], req["calibration"]),
                                      od.model_inputs(model), src_path)
        facts["calibration_samples"], source = len(samples), "calibrated"
    elif scheme == "int8-dynamic":
        # No calibration data: a text model (tokenizer.json beside it) is probed with the
        # onnxruntime path's built-in sentences; other models get no outlier rule.
        samples = od.probe_samples({"model": req["input"]}, od.model_inputs(model), src_path)
        facts["probe_samples"], source = len(samples or []), "probed"
    if samples:
        ratios = od.activation_outliers(model_path, candidates, samples)
        outliers = {n.name: ratios.get(n.input[0], 0.0) for n in candidates
                    if ratios.get(n.input[0], 0.0) > od.OUTLIER_RATIO}
        if len(outliers) < len(candidates):
            # (Every candidate an outlier: quantize them all rather than nothing, as the onnx path.)
            for name, r in outliers.items():
                excluded[name] = f"{source} input peak/RMS {r:.1f} > {od.OUTLIER_RATIO:g}"
    excluded.pop("", None)  # unnamed nodes cannot be named to Olive
    facts["candidates"] = len(candidates)
    return excluded, facts


def first_line(e, limit=600):
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:limit]


def check_loads(path):
    """The input must load in this toolchain's onnxruntime: Olive would run on it and hand back a
    model that nothing here can load."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph/...
        raise UserError(f"onnxruntime {ort.__version__} cannot load the model: {first_line(e)}",
                        "export the model with operators and an opset ONNX Runtime supports (custom-domain "
                        "operators need their library, which Olive's CPU workflow does not load)", path)


def tail(path, n=LOG_TAIL):
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


class OliveFailed(Exception):
    def __init__(self, message, log):
        super().__init__(message)
        self.message, self.log = message, log


def run_olive(config_path, work):
    log = work / "olive.log"
    t0 = time.time()
    with open(log, "wb") as f:
        # `python -m olive` is the `olive` console script of this environment.
        rc = subprocess.call([sys.executable, "-m", "olive", "run", "--config", str(config_path)],
                             stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(work))
    seconds = time.time() - t0
    if rc != 0:
        raise OliveFailed(f"olive run --config {config_path} failed (exit {rc})", log)
    return seconds, log


def olive_output_model(output_dir, log):
    """The .onnx Olive saved: model_config.json's model_path (a file or a directory)."""
    mc_path = output_dir / "model_config.json"
    if not mc_path.is_file():
        raise OliveFailed(f"olive run produced no output model (no model_config.json in {output_dir})", log)
    mc = json.loads(mc_path.read_text())
    cfg = mc.get("config", {})
    p = Path(cfg.get("model_path") or "")
    if p.is_dir():
        p = p / cfg["onnx_file_name"] if cfg.get("onnx_file_name") else next(iter(sorted(p.glob("*.onnx"))), p)
    if p.suffix != ".onnx" or not p.is_file():
        raise OliveFailed(f"olive run's model_config.json names no .onnx model ({cfg.get('model_path')})", log)
    return p, mc


def footprint_summary(output_dir):
    """Olive's output_footprint.json, without the cache paths (gone once the work dir is)."""
    f = output_dir / "output_footprint.json"
    if not f.is_file():
        f = output_dir / "footprint.json"
    if not f.is_file():
        return None
    out = {}
    for model_id, node in json.loads(f.read_text()).items():
        out[model_id] = {k: node.get(k) for k in ("parent_model_id", "from_pass", "pass_run_config")}
        if node.get("end_time") and node.get("start_time"):
            out[model_id]["pass_seconds"] = round(node["end_time"] - node["start_time"], 3)
    return out


def nodes_quantized(src, scheme, qm):
    """Weight nodes of the input whose weight no longer reaches a float op directly."""
    before = len(od.weight_nodes(src, scheme))
    floats = weight_initializers(qm)
    left = sum(1 for n in qm.graph.node
               if n.op_type in od.SCHEME_OPS[scheme] and n.op_type not in od.QUANT_MARKERS
               and len(n.input) > od.WEIGHT_INPUT[n.op_type] and n.input[od.WEIGHT_INPUT[n.op_type]] in floats)
    return max(before - left, 0)


def run(req):
    src_path = Path(req["input"])
    config_path = Path(req["config"])
    output_dir = Path(req["output_dir"])
    work = config_path.parent
    scheme = req["quant"]
    od.check_onnx_file(src_path)
    check_loads(src_path)
    try:
        src = onnx.load(str(src_path))
    except Exception as e:  # noqa: BLE001 - external data or protobuf errors
        raise UserError(f"cannot load the ONNX model: {e}", "re-export the model; the file may be truncated", src_path)

    config = json.loads(config_path.read_text())
    excluded, facts = plan_exclusions(req, src_path, src, work)
    qpass = config["passes"]["quantize"]
    qpass["nodes_to_exclude"] = sorted(excluded)
    config_path.write_text(json.dumps(config, indent=2))

    olive_seconds, log = run_olive(config_path, work)
    model_path, model_config = olive_output_model(output_dir, log)
    qm = onnx.load(str(model_path))
    before, after = od.op_counts(src), od.op_counts(qm)
    quantized = {k: v for k, v in after.items() if k in od.QUANT_MARKERS and v > before.get(k, 0)}
    if not quantized:
        raise UserError(f"olive run quantized nothing in this model ({facts['candidates']} candidate nodes)",
                        "pick another scheme, or check the model with `cargo edgeai inspect`", src_path)
    unq = od.unquantized_weight_ops(qm)
    try:
        output_bytes = od.publish(model_path, Path(req["output"]))
    except Exception as e:  # noqa: BLE001 - publish stages and checks in onnxruntime; nothing is at OUT
        raise OliveFailed(f"the model olive run produced does not load in onnxruntime: {first_line(e)}", log)
    import onnxruntime
    return {
        "output": req["output"],
        "output_bytes": output_bytes,
        "fp32_bytes": od.file_bytes(src_path),
        "quant": scheme,
        "olive_version": metadata.version("olive-ai"),
        "onnxruntime": onnxruntime.__version__,
        "passes": [p["type"] for ps in config["passes"].values() for p in (ps if isinstance(ps, list) else [ps])],
        "nodes_quantized": nodes_quantized(src, scheme, qm),
        "quantized_op_counts": dict(sorted(quantized.items())),
        "op_counts": dict(sorted(after.items())),
        "unquantized_weight_ops": {k: {"count": len(v), "nodes": v[:8]} for k, v in sorted(unq.items())},
        "nodes_excluded": dict(sorted(excluded.items())),
        "olive_seconds": round(olive_seconds, 3),
        "olive_footprint": footprint_summary(output_dir),
        "olive_model_config": model_config,
        "external_data_in_olive_output": any(t.data_location == TensorProto.EXTERNAL for t in
                                             onnx.load(str(model_path), load_external_data=False).graph.initializer),
        "workflow": config,
        **facts,
    }


def main():
    req = json.loads(Path(sys.argv[1]).read_text())
    try:
        result = run(req)
    except UserError as e:
        print(json.dumps({"error": e.message, "help": e.help, "path": str(e.path) if e.path else None}))
        sys.exit(3)
    except OliveFailed as e:
        print(json.dumps({"error": e.message, "log": str(e.log), "log_tail": tail(e.log)}))
        sys.exit(4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
