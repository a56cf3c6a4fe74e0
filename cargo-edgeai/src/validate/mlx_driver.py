# cargo-edgeai MLX validation driver (embedded in the cargo-edgeai binary, run by the `mlx`
# toolchain's python). One request (a JSON file named by argv[1]) per run; one JSON object on stdout; on
# failure one line `EDGEAI-ERROR {"kind": ..., "message": ...}` on stderr and exit status 3.
#
# Two modes, in two processes so that the candidate's peak memory is its own:
#   reference: load the reference, tokenize the text, evaluate it in chunks of ctx tokens,
#              write the log-probabilities of the scored positions to scratch/ref-N.npy and
#              the token ids to scratch/tokens.npy; perplexity; greedy decode.
#   candidate: load the candidate, evaluate the same tokens, compare with the reference's
#              log-probabilities (KL divergence, top-1), perplexity, greedy decode and speed.
#
# Chunking follows llama-perplexity: chunk i is tokens[i*ctx:(i+1)*ctx] with its first token
# replaced by BOS when the tokenizer adds one; the first half of a chunk is context, positions
# ctx/2 .. ctx-2 predict the next token and are scored (ctx - 1 - ctx/2 tokens per chunk).
import json
import os
import resource
import sys
import time
import traceback

# Local directories only: never reach for the Hugging Face hub (read at import time).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_REAL_STDOUT = sys.stdout
# Libraries print progress and warnings to stdout; only our one JSON object may go there.
sys.stdout = sys.stderr


def fail(kind, message):
    sys.stderr.write("EDGEAI-ERROR " + json.dumps({"kind": kind, "message": message}) + "\n")
    sys.stderr.flush()
    sys.exit(3)


try:
    import numpy as np
    import mlx.core as mx
    import mlx_lm
    from mlx_lm.generate import generate_step
except ImportError as e:  # a broken or foreign environment
    fail("environment", f"cannot import mlx / mlx-lm / numpy: {e}")


def peak_rss_bytes():
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(r) if sys.platform == "darwin" else int(r) * 1024


def load(path):
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    try:
        model, tokenizer = mlx_lm.load(path)
    except ValueError as e:
        if "not supported" in str(e):
            fail("unsupported_architecture", f"{path}: {e} (model_type {config.get('model_type')!r})")
        fail("load", f"{path}: {e}")
    except Exception as e:  # noqa: BLE001 - any loader failure is reported, not a traceback
        fail("load", f"{path}: {type(e).__name__}: {e}")
    return model, tokenizer, config


def chunk_tokens(tokens, i, ctx, bos):
    chunk = list(tokens[i * ctx:(i + 1) * ctx])
    if bos is not None:
        chunk[0] = bos
    return chunk


def greedy(model, prompt, n):
    """Greedy-decode n tokens after prompt (no stop at EOS: the comparison needs n tokens).
    Returns the tokens, the time to the first token and the decode rate of the rest."""
    out = []
    t0 = time.perf_counter()
    t_first = None
    for tok, _ in generate_step(mx.array(prompt), model, max_tokens=n):
        tok = int(tok)
        out.append(tok)
        if t_first is None:
            t_first = time.perf_counter()
    t_end = time.perf_counter()
    ttft = (t_first - t0) if t_first is not None else None
    decode = (len(out) - 1) / (t_end - t_first) if len(out) > 1 and t_end > t_first else None
    return out, ttft, decode


def prompt_rate(model, prompt):
    """Prompt tokens/s: one forward pass over the prompt, forced to completion."""
    mx.eval(model(mx.array([prompt])))  # warm-up (kernels, lazy weights)
    t0 = time.perf_counter()
    mx.eval(model(mx.array([prompt])))
    dt = time.perf_counter() - t0
    return len(prompt) / dt if dt > 0 else None


def decode_text(tokenizer, ids):
    try:
        return tokenizer.decode(ids)
    except Exception:  # noqa: BLE001 - the text is informational
        return ""


def run_reference(req):
    model, tokenizer, config = load(req["model"])
    with open(req["text"], encoding="utf-8", errors="replace") as f:
        text = f.read()
    ids = tokenizer.encode(text)
    bos = tokenizer.bos_token_id
    add_bos = bos is not None and len(ids) > 0 and ids[0] == bos
    ctx = req["ctx"]
    if len(ids) < 2 * ctx:
        fail("text_too_short",
             f"{req['text']}: {len(ids)} tokens; you need at least {2 * ctx} tokens for a context of {ctx}")
    n_chunks = len(ids) // ctx
    if req.get("chunks") is not None:
        n_chunks = min(n_chunks, req["chunks"])
    scratch = req["scratch"]
    np.save(os.path.join(scratch, "tokens.npy"), np.array(ids, dtype=np.int64))
    first = ctx // 2
    nll_sum = 0.0
    nll2_sum = 0.0
    count = 0
    vocab = None
    for i in range(n_chunks):
        chunk = chunk_tokens(ids, i, ctx, bos if add_bos else None)
        logits = model(mx.array([chunk]))[0].astype(mx.float32)
        vocab = logits.shape[-1]
        lp = logits[first:ctx - 1] - mx.logsumexp(logits[first:ctx - 1], axis=-1, keepdims=True)
        targets = mx.array(chunk[first + 1:ctx])
        nll = -mx.take_along_axis(lp, targets[:, None], axis=-1)[:, 0]
        lp_np = np.array(lp)
        nll_np = np.array(nll, dtype=np.float64)
        np.save(os.path.join(scratch, f"ref-{i}.npy"), lp_np)
        nll_sum += float(nll_np.sum())
        nll2_sum += float((nll_np ** 2).sum())
        count += nll_np.size
    mean = nll_sum / count
    ppl = float(np.exp(mean))
    var = max(0.0, nll2_sum / count - mean * mean)
    ppl_error = ppl * float(np.sqrt(var / max(count - 1, 1)))
    prompt = list(ids[: req["prompt_tokens"]])
    toks, _, _ = greedy(model, prompt, req["gen_tokens"])
    return {
        "mode": "reference",
        "model_type": config.get("model_type"),
        "vocab_size": vocab,
        "tokens": len(ids),
        "add_bos": add_bos,
        "chunks": n_chunks,
        "tokens_scored": count,
        "ppl": ppl,
        "ppl_error": ppl_error,
        "greedy_prompt_tokens": len(prompt),
        "greedy_tokens": toks,
        "greedy_text": decode_text(tokenizer, toks),
        "peak_rss_bytes": peak_rss_bytes(),
        "versions": versions(),
    }


def run_candidate(req):
    model, tokenizer, config = load(req["model"])
    scratch = req["scratch"]
    ids = np.load(os.path.join(scratch, "tokens.npy")).tolist()
    ref = req["reference_result"]
    ctx = req["ctx"]
    n_chunks = ref["chunks"]
    bos = tokenizer.bos_token_id if ref["add_bos"] else None
    first = ctx // 2
    nll_sum = 0.0
    nll2_sum = 0.0
    count = 0
    klds = []
    same_top = 0
    t_eval = time.perf_counter()
    for i in range(n_chunks):
        chunk = chunk_tokens(ids, i, ctx, bos)
        logits = model(mx.array([chunk]))[0].astype(mx.float32)
        if logits.shape[-1] != ref["vocab_size"]:
            fail("vocab_mismatch",
                 f"{req['model']} predicts over {logits.shape[-1]} tokens but the reference over {ref['vocab_size']}")
        lp = logits[first:ctx - 1] - mx.logsumexp(logits[first:ctx - 1], axis=-1, keepdims=True)
        lp_ref = mx.array(np.load(os.path.join(scratch, f"ref-{i}.npy")))
        targets = mx.array(chunk[first + 1:ctx])
        nll = -mx.take_along_axis(lp, targets[:, None], axis=-1)[:, 0]
        kld = mx.sum(mx.exp(lp_ref) * (lp_ref - lp), axis=-1)
        top = mx.argmax(lp, axis=-1) == mx.argmax(lp_ref, axis=-1)
        mx.eval(nll, kld, top)
        nll_np = np.array(nll, dtype=np.float64)
        nll_sum += float(nll_np.sum())
        nll2_sum += float((nll_np ** 2).sum())
        count += nll_np.size
        # Rounding can make a term a hair below zero; KL divergence is not negative.
        klds.append(np.maximum(np.array(kld, dtype=np.float64), 0.0))
        same_top += int(np.array(top).sum())
    eval_s = time.perf_counter() - t_eval
    kld = np.concatenate(klds)
    n = kld.size
    mean = nll_sum / count
    ppl = float(np.exp(mean))
    var = max(0.0, nll2_sum / count - mean * mean)
    ppl_error = ppl * float(np.sqrt(var / max(count - 1, 1)))
    top1 = same_top / n
    prompt = list(ids[: req["prompt_tokens"]])
    pp_rate = prompt_rate(model, prompt) if req.get("bench", True) else None
    mx.reset_peak_memory()
    toks, ttft, decode = greedy(model, prompt, req["gen_tokens"])
    ref_toks = ref["greedy_tokens"]
    prefix = 0
    for a, b in zip(toks, ref_toks):
        if a != b:
            break
        prefix += 1
    return {
        "mode": "candidate",
        "model_type": config.get("model_type"),
        "quantization": config.get("quantization"),
        "vocab_size": ref["vocab_size"],
        "chunks": n_chunks,
        "tokens_scored": count,
        "ppl": ppl,
        "ppl_error": ppl_error,
        "kld_mean": float(kld.mean()),
        "kld_mean_error": float(kld.std() / np.sqrt(max(n - 1, 1))),
        "kld_median": float(np.median(kld)),
        "kld_p99": float(np.percentile(kld, 99.0)),
        "kld_max": float(kld.max()),
        "top1": top1,
        "top1_error": float(np.sqrt(top1 * (1.0 - top1) / max(n - 1, 1))),
        "eval_seconds": eval_s,
        "prompt_tokens_per_s": pp_rate,
        "decode_tokens_per_s": decode,
        "time_to_first_token_ms": ttft * 1000.0 if ttft is not None else None,
        "greedy_prompt_tokens": len(prompt),
        "greedy_tokens": toks,
        "greedy_text": decode_text(tokenizer, toks),
        "greedy_agree_prefix": prefix,
        "mlx_peak_memory_bytes": int(mx.get_peak_memory()),
        "peak_rss_bytes": peak_rss_bytes(),
        "versions": versions(),
    }


def versions():
    from importlib.metadata import version, PackageNotFoundError
    out = {}
    for p in ("mlx", "mlx-lm", "transformers"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


def main():
    if len(sys.argv) != 2:
        fail("usage", "expected one argument: the request JSON file")
    with open(sys.argv[1], encoding="utf-8") as f:
        req = json.load(f)
    mx.random.seed(0)
    if req["mode"] == "reference":
        result = run_reference(req)
    elif req["mode"] == "candidate":
        result = run_candidate(req)
    elif req["mode"] == "versions":
        result = {"mode": "versions", "versions": versions()}
    else:
        fail("usage", f"unknown mode {req['mode']!r}")
    _REAL_STDOUT.write(json.dumps(result) + "\n")
    _REAL_STDOUT.flush()


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except MemoryError as e:
        fail("memory", f"out of memory: {e}")
    except Exception as e:  # noqa: BLE001 - reported as one line for the Rust side
        traceback.print_exc(file=sys.stderr)
        fail("internal", f"{type(e).__name__}: {e}")
