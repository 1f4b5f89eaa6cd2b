//! What runs write: the JSON report, the CSV, and the record appended to
//! `eval/results/runs.jsonl`.
//!
//! One model gives the flat object `eval --json` has always written
//! (`dataset`, `split`, counts, `model`, `fingerprint`, `context_length`,
//! `t2i_r1` … `i2t_r10`, `paper`, …). Several models give
//! `{"dataset", "split", "seconds", "models": [one such object per model,
//! each with its "label"]}`; the CSV has a row per model and the record
//! file a line per model, each line what a one-model run would record.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::run::{ClassificationRun, ModelClassification, ModelInfo, ModelProbe, ModelRetrieval, ProbeRun, RetrievalRun};
use crate::family::Family;
use crate::metrics::RetrievalScores;
use crate::reference::Published;

/// The `eval` JSON of a retrieval run (see the module docs for the shapes).
pub fn retrieval_json(run: &RetrievalRun) -> Value {
    match run.models.as_slice() {
        [one] => retrieval_entry(run, one, run.seconds),
        many => json!({
            "dataset": run.dataset,
            "split": run.split,
            "seconds": run.seconds,
            "models": many.iter().map(|m| labelled(retrieval_entry(run, m, m.seconds), &m.model)).collect::<Vec<_>>(),
        }),
    }
}

/// One model's object, as a one-model run writes it.
pub fn retrieval_entry(run: &RetrievalRun, m: &ModelRetrieval, seconds: f64) -> Value {
    let r = &m.report;
    let mut out = json!({
        "dataset": run.dataset,
        "split": run.split,
        "n_images": r.n_images,
        "n_texts": r.n_texts,
        "seconds": seconds,
        "model": m.model.path.display().to_string(),
        "fingerprint": m.model.fingerprint,
        "dtype": m.model.dtype,
        "context_length": m.context_length,
        "truncated_texts": r.truncated,
        "skipped_images": r.skipped.len(),
        "skipped": r.skipped.iter().map(|(p, why)| json!({"image": p.display().to_string(), "reason": why})).collect::<Vec<_>>(),
        "timings": m.timings,
        "paper": paper_json(&m.paper),
    });
    add_family(&mut out, &m.model);
    add_scores(&mut out, &r.scores);
    if let Some(range) = &r.tie_range {
        out["ties"] = ties_json(range);
    }
    out
}

/// The entries of a run: one object per model, as [`retrieval_json`]
/// writes a one-model run (for the CSV rows and the records).
pub fn retrieval_entries(run: &RetrievalRun) -> Vec<Value> {
    let single = run.models.len() == 1;
    run.models
        .iter()
        .map(|m| {
            let entry = retrieval_entry(run, m, if single { run.seconds } else { m.seconds });
            if single {
                entry
            } else {
                labelled(entry, &m.model)
            }
        })
        .collect()
}

/// Published rows as JSON: model, source, protocol, text path and the
/// numbers given.
pub fn paper_json(paper: &[Published]) -> Vec<Value> {
    paper
        .iter()
        .map(|p| {
            let values: serde_json::Map<String, Value> = p.values.iter().filter_map(|(k, v)| v.map(|v| (k.clone(), json!(v)))).collect();
            let mut v = json!({"model": p.model, "source": p.source, "values": values});
            if !p.protocol.is_empty() {
                v["protocol"] = json!(p.protocol);
            }
            if let Some(t) = p.text_path {
                v["text_path"] = json!(t.to_string());
            }
            v
        })
        .collect()
}

/// `label` first, then the entry's fields.
fn labelled(entry: Value, m: &ModelInfo) -> Value {
    let mut out = json!({"label": m.label});
    if let (Some(o), Value::Object(fields)) = (out.as_object_mut(), entry) {
        o.extend(fields);
    }
    out
}

/// The family and text path of a model that is not Long-CLIP (Long-CLIP
/// outputs keep the fields they always had).
fn add_family(out: &mut Value, m: &ModelInfo) {
    if m.family != Family::LongClip {
        out["family"] = json!(m.family.name());
        out["text_path"] = json!(m.text_path.to_string());
    }
}

/// `t2i_r1` … `i2t_r10` as fields of `out`.
pub fn add_scores(out: &mut Value, s: &RetrievalScores) {
    for (k, v) in s.named() {
        out[k] = json!(v);
    }
}

/// The lowest and highest numbers another order of exact ties would give.
pub fn ties_json(range: &(RetrievalScores, RetrievalScores)) -> Value {
    let mut low = json!({});
    let mut high = json!({});
    add_scores(&mut low, &range.0);
    add_scores(&mut high, &range.1);
    json!({"low": low, "high": high})
}

/// The `probe` JSON: `{"unit", "dataset", "split", "seconds", "models":
/// [{"model", "label", "fingerprint", …, "paper"}], "rows": [{"length",
/// "model", "t2i_r1", …, "ceiling_t2i_r1", …}]}`, rows model by model.
pub fn probe_json(run: &ProbeRun) -> Value {
    json!({
        "unit": run.unit,
        "dataset": run.dataset,
        "split": run.split,
        "seconds": run.seconds,
        "models": run.models.iter().map(probe_model_json).collect::<Vec<_>>(),
        "rows": probe_rows_json(run),
    })
}

fn probe_model_json(m: &ModelProbe) -> Value {
    let mut v = json!({
        "model": m.model.path.display().to_string(),
        "label": m.model.label,
        "fingerprint": m.model.fingerprint,
        "dtype": m.model.dtype,
        "context_length": m.model.positions,
        "n_images": m.n_images,
        "n_texts": m.n_texts,
        "seconds": m.seconds,
        "timings": m.timings,
        "paper": paper_json(&m.paper),
    });
    add_family(&mut v, &m.model);
    v
}

/// Every (model, length) row of a probe.
pub fn probe_rows_json(run: &ProbeRun) -> Vec<Value> {
    run.models
        .iter()
        .flat_map(|m| {
            m.rows.iter().map(move |r| {
                let mut v = json!({"length": r.length, "model": m.model.path.display().to_string()});
                add_family(&mut v, &m.model);
                add_scores(&mut v, &r.scores);
                v["ceiling_t2i_r1"] = json!(r.ceiling.t2i_r1);
                v["ceiling_t2i_r5"] = json!(r.ceiling.t2i_r5);
                v["ceiling_t2i_r10"] = json!(r.ceiling.t2i_r10);
                if let Some(range) = &r.tie_range {
                    v["ties"] = ties_json(range);
                }
                v
            })
        })
        .collect()
}

/// The probe's CSV: a header and a row per model and length (with
/// `family,text_path` columns when a model is not Long-CLIP, as `eval`'s).
pub fn probe_csv(run: &ProbeRun) -> String {
    let mut keys = vec!["model", "length", "t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "ceiling_t2i_r1", "ceiling_t2i_r5", "ceiling_t2i_r10"];
    if run.models.iter().any(|m| m.model.family != Family::LongClip) {
        keys.extend(["family", "text_path"]);
    }
    let mut s = keys.join(",") + "\n";
    for r in probe_rows_json(run) {
        let v: Vec<String> = keys
            .iter()
            .map(|k| match &r[*k] {
                Value::String(s) => quote(s),
                Value::Null => String::new(),
                other => other.to_string(),
            })
            .collect();
        s += &(v.join(",") + "\n");
    }
    s
}

/// The zero-shot `eval` JSON: one model's flat object, or `{"dataset",
/// "split", "seconds", "models": [...]}`.
pub fn classification_json(run: &ClassificationRun) -> Value {
    match run.models.as_slice() {
        [one] => classification_entry(run, one, run.seconds),
        many => json!({
            "dataset": run.dataset,
            "split": "test",
            "seconds": run.seconds,
            "models": many.iter().map(|m| labelled(classification_entry(run, m, m.seconds), &m.model)).collect::<Vec<_>>(),
        }),
    }
}

/// One model's object, as a one-model run writes it.
pub fn classification_entry(run: &ClassificationRun, m: &ModelClassification, seconds: f64) -> Value {
    let r = &m.report;
    let mut out = json!({
        "dataset": run.dataset,
        "split": "test",
        "n_images": r.n_images,
        "n_classes": r.n_classes,
        "n_prompts": run.n_prompts,
        "top1": r.accuracy.top1,
        "top5": r.accuracy.top5,
        "seconds": seconds,
        "model": m.model.path.display().to_string(),
        "fingerprint": m.model.fingerprint,
        "dtype": m.model.dtype,
        "skipped_images": r.skipped.len(),
        "timings": m.timings,
        "paper": paper_json(&m.paper),
    });
    add_family(&mut out, &m.model);
    out
}

/// The entries of a classification run, one per model (CSV rows, records).
pub fn classification_entries(run: &ClassificationRun) -> Vec<Value> {
    match run.models.as_slice() {
        [one] => vec![classification_entry(run, one, run.seconds)],
        many => many.iter().map(|m| labelled(classification_entry(run, m, m.seconds), &m.model)).collect(),
    }
}

fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The scalar fields of each object as CSV: a header (every scalar key, in
/// order of first appearance) and a row per object, empty where an object
/// lacks a key.
pub fn flat_csv(entries: &[Value]) -> String {
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let mut keys: Vec<&String> = Vec::new();
    for map in entries.iter().filter_map(Value::as_object) {
        for (k, v) in map {
            if scalar(v).is_some() && !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    let mut s = keys.iter().map(|k| quote(k)).collect::<Vec<_>>().join(",") + "\n";
    for e in entries {
        let row: Vec<String> = keys.iter().map(|k| e.get(k.as_str()).and_then(scalar).map(|v| quote(&v)).unwrap_or_default()).collect();
        s += &(row.join(",") + "\n");
    }
    s
}

/// Appends one line per result to `dir/runs.jsonl`: `{"date", "command",
/// "machine", "result"}`. Returns the file's path.
pub fn append_records(dir: &Path, command: &str, results: &[(Value, &str)]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let path = dir.join("runs.jsonl");
    let mut lines = String::new();
    for (result, device) in results {
        let record = json!({
            "date": crate::index::now_rfc3339(),
            "command": command,
            "machine": machine(device),
            "result": result,
        });
        lines += &(serde_json::to_string(&record)? + "\n");
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("{}: cannot open", path.display()))?;
    // One write: the lines of a run land together.
    f.write_all(lines.as_bytes()).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(path)
}

/// Where a run ran: host, CPU, threads, device, OS, build and version.
pub fn machine(device: &str) -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into());
    json!({
        "host": host,
        "cpu": cpu,
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "device": device,
        "os": std::env::consts::OS,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "longclip": env!("CARGO_PKG_VERSION"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_of_flat_fields() {
        let v = json!({"dataset": "a,b", "n": 3, "nested": {"x": 1}});
        assert_eq!(flat_csv(&[v]), "dataset,n\n\"a,b\",3\n");
    }

    #[test]
    fn csv_rows_take_the_union_of_keys() {
        let a = json!({"label": "a", "t2i_r1": 1.5});
        let b = json!({"label": "b", "family": "GOAL", "t2i_r1": 2.0});
        assert_eq!(flat_csv(&[a, b]), "label,t2i_r1,family\na,1.5,\nb,2.0,GOAL\n");
    }

    use crate::checkpoint::Config;
    use crate::evaluate::run::ModelRetrieval;
    use crate::evaluate::{RetrievalReport, Timings};
    use crate::family::TextPath;
    use crate::reference;

    fn model(label: &str, family: Family, t2i_r1: f64) -> ModelRetrieval {
        let info = ModelInfo {
            path: format!("models/{label}.pt").into(),
            label: label.into(),
            fingerprint: format!("sha256:{label}"),
            family,
            text_path: TextPath::Long,
            positions: 248,
            device: "cpu".into(),
            dtype: "f32".into(),
            config: Config::preset("longclip-b").unwrap(),
        };
        let scores = RetrievalScores { t2i_r1, t2i_r5: 50.0, t2i_r10: 60.0, i2t_r1: 20.0, i2t_r5: 40.0, i2t_r10: 80.0 };
        let report = RetrievalReport { n_images: 10, n_texts: 10, scores, tie_range: None, truncated: 0, skipped: vec![] };
        let paper = if family == Family::LongClip { reference::retrieval("LongCLIP-B", "urban1k", "test") } else { vec![] };
        ModelRetrieval { model: info, context_length: 248, report, timings: Timings::default(), seconds: 1.5, paper_model: None, paper, notes: vec![] }
    }

    fn run(models: Vec<ModelRetrieval>) -> RetrievalRun {
        RetrievalRun { dataset: "urban1k".into(), split: "test".into(), models, seconds: 9.0 }
    }

    #[test]
    fn one_model_keeps_the_flat_object() {
        let r = run(vec![model("a", Family::LongClip, 10.0)]);
        let v = retrieval_json(&r);
        assert_eq!((v["t2i_r1"].as_f64(), v["seconds"].as_f64(), v["model"].as_str()), (Some(10.0), Some(9.0), Some("models/a.pt")));
        assert!(v.get("models").is_none() && v.get("label").is_none() && v.get("family").is_none(), "{v}");
        assert_eq!(v["paper"][0]["values"]["t2i_r1"], 79.5);
        assert_eq!(v["paper"][0]["source"], "LoTLIP README");
        assert_eq!(retrieval_entries(&r), vec![v]);
    }

    #[test]
    fn several_models_give_an_entry_each() {
        let r = run(vec![model("a", Family::LongClip, 10.0), model("b", Family::Goal, 30.0)]);
        let v = retrieval_json(&r);
        assert_eq!((v["dataset"].as_str(), v["seconds"].as_f64()), (Some("urban1k"), Some(9.0)));
        let models = v["models"].as_array().unwrap();
        assert_eq!(models.len(), 2);
        // Each entry is what a one-model run writes, with its label (first) and its own seconds.
        assert_eq!(models[0].as_object().unwrap().keys().next().map(String::as_str), Some("label"));
        assert_eq!((models[0]["label"].as_str(), models[0]["t2i_r1"].as_f64(), models[0]["seconds"].as_f64()), (Some("a"), Some(10.0), Some(1.5)));
        assert_eq!((models[1]["family"].as_str(), models[1]["text_path"].as_str()), (Some("GOAL"), Some("long")));
        assert!(models[1]["paper"].as_array().unwrap().is_empty());
        assert_eq!(&retrieval_entries(&r), models);
        let csv = flat_csv(&retrieval_entries(&r));
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 3, "{csv}");
        assert!(lines[0].starts_with("label,dataset,split,") && lines[0].ends_with(",family,text_path"), "{csv}");
        assert!(lines[1].starts_with("a,urban1k,test,") && lines[1].ends_with(",,"), "{csv}");
    }

    #[test]
    fn records_are_a_line_per_model() {
        let dir = tempfile::tempdir().unwrap();
        let r = run(vec![model("a", Family::LongClip, 10.0), model("b", Family::FgClip, 30.0)]);
        let entries = retrieval_entries(&r);
        let results: Vec<(Value, &str)> = entries.iter().cloned().map(|e| (e, "cpu")).collect();
        let path = append_records(dir.path(), "eval", &results).unwrap();
        append_records(dir.path(), "eval", &results[..1]).unwrap();
        let lines: Vec<Value> = std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1]["result"]["label"], "b");
        assert_eq!((lines[2]["command"].as_str(), lines[2]["machine"]["device"].as_str()), (Some("eval"), Some("cpu")));
    }

    #[test]
    fn the_table_has_a_row_per_model_and_the_paper_rows() {
        let r = run(vec![model("a", Family::LongClip, 10.0), model("bb", Family::Goal, 30.0), model("c", Family::LongClip, 5.0)]);
        let text = super::super::tables::retrieval_text(&r);
        let rows: Vec<&str> = text.lines().filter(|l| l.contains("50.00") || l.starts_with("paper")).collect();
        assert_eq!(rows.len(), 4, "{text}");
        assert!(rows[0].starts_with("a ") && rows[0].contains("10.00") && rows[1].starts_with("bb ") && rows[2].starts_with("c "), "{text}");
        // LongCLIP-B's Urban1k row, once for the two models that share it.
        assert!(rows[3].starts_with("paper: LongCLIP-B (LoTLIP README)") && rows[3].contains("79.50"), "{text}");
        assert!(text.starts_with("urban1k (test): 10 images, 10 texts; 3 models\n"), "{text}");
    }
}
