#!/usr/bin/env python3
"""The summary table of a benches/gpu.sh run: reads $OUT/results.jsonl,
writes $OUT/summary.md (markdown). Standard library only; every section is
written even when stages failed or were skipped (they show as such).

usage: python3 benches/gpu_summary.py RESULTS.jsonl SUMMARY.md
"""
import json
import sys


def load(path):
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                rows.append({"stage": "?", "unparsed": f"line {n}: {e}"})
    return rows


def fmt(x, digits=1):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return out


def kind(what):
    """Which measurement a bench line is: vision, text, text-padded or e2e."""
    if what.startswith("vision tower"):
        return "vision"
    if what.startswith("end to end"):
        return "e2e"
    if what.startswith("text"):
        return "text-padded" if "padded" in what else "text"
    return None


def speed(rows):
    """{model: {"longclip": {dtype: {kind: line}}, "torch": {kind: line}}}."""
    out = {}
    for r in rows:
        stage, what = r.get("stage", ""), r.get("what")
        if not what or r.get("per_second") is None:
            continue
        if stage.startswith("speed-"):
            model, dtype = stage[len("speed-"):].rsplit("-", 1)
            out.setdefault(model, {"longclip": {}, "torch": {}})["longclip"].setdefault(dtype, {})[kind(what)] = r
        elif stage.startswith("torch-"):
            model = stage[len("torch-"):]
            out.setdefault(model, {"longclip": {}, "torch": {}})["torch"][kind(what)] = r
    return out


def speed_lines(rows, torch_label):
    data = speed(rows)
    peak = next((r["peak_tflops"] for r in rows if "peak_tflops" in r), None)
    lines = [f"Ratio: the better longclip dtype over {torch_label} (goal >= 1.0 end to end). "
             f"TFLOP/s and share of the bf16 peak ({fmt(peak, 0)} TFLOP/s) are the vision tower's (goal >= 50%).", ""]
    body = []
    labels = [("vision", "vision", "vision tower (images/s)"), ("text", "text", "texts/s, 120 tokens (PyTorch trimmed)"),
              ("text", "text-padded", "texts/s, 120 tokens (PyTorch padded to 248, official)"),
              ("e2e", "e2e", "end to end from JPEG (images/s)")]
    for model in sorted(data):
        lc, torch = data[model]["longclip"], data[model]["torch"]
        for ours, theirs, label in labels:
            bf, f16 = lc.get("bf16", {}).get(ours), lc.get("f16", {}).get(ours)
            t = torch.get(theirs)
            if not (bf or f16 or t) or (theirs == "text-padded" and not t):
                continue
            best = max((x["per_second"] for x in (bf, f16) if x), default=None)
            ratio = best / t["per_second"] if best and t else None
            tf = share = "-"
            if ours == "vision":
                flops = next((x["tflops"] * 1e12 / x["per_second"] for x in (bf, f16) if x and x.get("tflops")), None)
                vals = [(d, x["per_second"] * flops / 1e12) for d, x in (("bf16", bf), ("f16", f16), ("torch", t)) if x and flops]
                tf = ", ".join(f"{d} {v:.3g}" for d, v in vals) or "-"
                if peak:
                    share = ", ".join(f"{d} {100 * v / peak:.1f}%" for d, v in vals) or "-"
            body.append([model, label, fmt(bf and bf["per_second"]), fmt(f16 and f16["per_second"]),
                         fmt(t and t["per_second"]), fmt(ratio, 2), tf, share])
    if not body:
        return lines + ["No speed figures (see the stage table)."]
    return lines + table(["model", "measurement", "longclip bf16", "longclip f16", torch_label, "ratio",
                          "TFLOP/s", "share of peak"], body)


def main():
    results, summary = sys.argv[1], sys.argv[2]
    rows = load(results)
    setup = next((r for r in rows if r.get("stage") == "setup"), {})
    gpu = next((r for r in rows if "gpu" in r), {})
    out = ["# GPU run (benches/gpu.sh)", ""]
    out.append(f"GPU: {gpu.get('gpu', '-')}, driver {gpu.get('driver', '-')}, {gpu.get('memory', '-')}; "
               f"device {setup.get('device', '-')}, quick {setup.get('quick', '-')}, commit {setup.get('commit', '-')}, "
               f"{setup.get('nproc', '-')} CPUs, binary {setup.get('longclip', '-')}.")
    out += ["", "## Stages", ""]
    stages = [[r["stage"], r["status"], fmt(r.get("seconds"), 1), fmt(r.get("budget_s")), r.get("reason", "")]
              for r in rows if "status" in r and "what" not in r]
    out += table(["stage", "status", "seconds", "budget s", "note"], stages)

    out += ["", "## Parity (min cos over the rows; f32 vs CPU f32 >= 0.9999, f16/bf16 vs f32 >= 0.999)", ""]
    parity = [[r.get("model", r["stage"]), r["parity"], r["run"], r["vs"], "NaN" if r['min_cos'] is None else f"{r['min_cos']:.7f}", f"{r['bound']}",
               "ok" if r["ok"] else "**FAIL**"] for r in rows if "parity" in r and "min_cos" in r]
    out += table(["model", "tower", "run", "vs", "min cos", "bound", "ok"], parity) if parity else ["No parity rows."]

    torch_label = "PyTorch fp32" if setup.get("device") == "cpu" else "PyTorch fp16"
    out += ["", "## Speed", ""] + speed_lines(rows, torch_label)

    out += ["", "## COCO-5k eval (goal < 30 s wall, decode included)", ""]
    coco = next((r for r in rows if r.get("stage") == "coco-eval" and "goal_s" in r), None)
    if coco:
        out.append(f"{coco['what']}: {fmt(coco.get('seconds'), 1)} s, status {coco.get('status')}, "
                   f"goal {coco['goal_s']} s: {'ok' if coco.get('ok') else 'not met'}.")
    else:
        out.append("Not run (see the stage table).")
    bad = [r for r in rows if "unparsed" in r]
    if bad:
        out += ["", "Unparsed lines: " + "; ".join(r["unparsed"] for r in bad)]
    with open(summary, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
