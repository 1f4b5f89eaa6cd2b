//! What runs print: recall tables (a row per model, published rows marked
//! "paper" with their source), the probe's tables, timing lines, and the
//! probe chart. Everything returns text; the CLI prints it.

use super::run::{ClassificationRun, ModelClassification, ModelInfo, ModelProbe, ModelRetrieval, ProbeRun, RetrievalRun};
use super::{ProbeRow, Timings, Unit};
use crate::metrics::RetrievalScores;
use crate::plot::{Chart, Series};
use crate::reference::Published;
use crate::term;

/// A right-aligned number with 2 decimals, or "-".
pub fn cell(v: Option<f64>, width: usize) -> String {
    match v {
        Some(v) => format!("{v:>width$.2}"),
        None => format!("{:>width$}", "-"),
    }
}

/// Names of the metrics in table order.
const METRICS: [&str; 6] = ["t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10"];

fn score(s: &RetrievalScores, k: &str) -> Option<f64> {
    s.named().iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
}

/// A metric's value by name ("t2i_r1"), None where not given.
type Getter<'a> = Box<dyn Fn(&str) -> Option<f64> + 'a>;

/// Rows of (name, metric getter) as the T2I-then-I2T recall table.
fn recall_rows(rows: &[(String, Getter)]) -> String {
    let w = rows.iter().map(|(n, _)| n.chars().count()).max().unwrap_or(4).max(4);
    let mut s = format!("{:w$}  {:>7} {:>7} {:>7}   {:>7} {:>7} {:>7}\n", "", "T2I R@1", "R@5", "R@10", "I2T R@1", "R@5", "R@10");
    for (name, get) in rows {
        let v: Vec<String> = METRICS.iter().map(|k| cell(get(k), 7)).collect();
        let pad = w - name.chars().count();
        s += &format!("{name}{:pad$}  {} {} {}   {} {} {}\n", "", v[0], v[1], v[2], v[3], v[4], v[5]);
    }
    s
}

/// A published row's name: "LongCLIP-B (Long-CLIP paper (arXiv 2403.15378))".
fn paper_name(p: &Published) -> String {
    format!("{} ({})", p.model, p.source)
}

/// Ours and the published rows, T2I then I2T (one model).
pub fn recall_table(ours: &RetrievalScores, paper: &[Published]) -> String {
    let mut rows: Vec<(String, Getter)> = vec![("ours".into(), Box::new(move |k| score(ours, k)))];
    for p in paper {
        rows.push((paper_name(p), Box::new(move |k| p.get(k))));
    }
    recall_rows(&rows)
}

/// The published rows of several models, each once, in model order.
fn distinct_paper<'a>(papers: impl Iterator<Item = &'a [Published]>) -> Vec<&'a Published> {
    let mut out: Vec<&Published> = Vec::new();
    for p in papers.flatten() {
        if !out.iter().any(|q| q.model == p.model && q.source == p.source) {
            out.push(p);
        }
    }
    out
}

/// A row per model, then the published rows ("paper: …").
pub fn multi_recall_table(models: &[ModelRetrieval]) -> String {
    let mut rows: Vec<(String, Getter)> = Vec::new();
    for m in models {
        rows.push((term::escape_for_terminal(&m.model.label).into_owned(), Box::new(move |k| score(&m.report.scores, k))));
    }
    for p in distinct_paper(models.iter().map(|m| m.paper.as_slice())) {
        rows.push((format!("paper: {}", paper_name(p)), Box::new(move |k| p.get(k))));
    }
    recall_rows(&rows)
}

/// "model PATH (sha256:…, FG-CLIP long text path, f32)".
fn model_line(m: &ModelInfo) -> String {
    format!("{} ({}{}, {})", term::path(&m.path), m.short_fingerprint(), m.family_note(), m.dtype)
}

/// Everything `eval` prints for a retrieval run.
pub fn retrieval_text(run: &RetrievalRun) -> String {
    match run.models.as_slice() {
        [m] => {
            let r = &m.report;
            let mut s = format!(
                "{} ({}): {} images, {} texts; model {}, context {}\n",
                run.dataset, run.split, r.n_images, r.n_texts, model_line(&m.model), m.context_length
            );
            s += &recall_table(&r.scores, &m.paper);
            if let Some(range) = &r.tie_range {
                s += &(tie_note(range) + "\n");
            }
            s + &timing_line(run.seconds, &m.timings, r.n_images, r.n_texts) + "\n"
        }
        models => multi_retrieval_text(run, models),
    }
}

fn multi_retrieval_text(run: &RetrievalRun, models: &[ModelRetrieval]) -> String {
    let (n_images, n_texts) = (models[0].report.n_images, models[0].report.n_texts);
    let mut s = format!("{} ({}): {n_images} images, {n_texts} texts; {} models\n", run.dataset, run.split, models.len());
    let w = models.iter().map(|m| m.model.label.chars().count()).max().unwrap_or(0);
    for m in models {
        let counts = match (m.report.n_images, m.report.n_texts) {
            (i, t) if (i, t) != (n_images, n_texts) => format!(" ({i} images, {t} texts)"),
            _ => String::new(),
        };
        let pad = w - m.model.label.chars().count();
        s += &format!("  {}{:pad$}  {}, context {}{counts}\n", term::escape_for_terminal(&m.model.label), "", model_line(&m.model), m.context_length);
    }
    s += &multi_recall_table(models);
    for m in models {
        if let Some(range) = &m.report.tie_range {
            s += &format!("{}: {}\n", term::escape_for_terminal(&m.model.label), tie_note(range));
        }
    }
    for m in models {
        s += &format!("{}: {}\n", term::escape_for_terminal(&m.model.label), timing_line(m.seconds, &m.timings, m.report.n_images, m.report.n_texts));
    }
    s
}

/// Exact ties (identical captions or images) make some numbers depend on the
/// order ties are broken in: say by how much.
pub fn tie_note(range: &(RetrievalScores, RetrievalScores)) -> String {
    let (lo, hi) = (range.0.named(), range.1.named());
    let spans: Vec<String> = lo
        .iter()
        .zip(&hi)
        .filter(|(l, h)| l.1 != h.1)
        .map(|(l, h)| format!("{} {:.2}..{:.2}", l.0, l.1, h.1))
        .collect();
    format!("ties: some correct items tie exactly with others (identical captions or images); ours ranks ties by index, other orders would give {}", spans.join(", "))
}

/// Where the time went.
pub fn timing_line(seconds: f64, t: &Timings, n_images: usize, n_texts: usize) -> String {
    format!(
        "{seconds:.1} s in all: decode {:.1} s, image encode {:.1} s, text encode {:.1} s, search {:.2} s, hashing and cache {:.2} s; \
         reused {}/{n_images} images and {}/{n_texts} texts (from the cache, or equal ids met earlier in the run)",
        t.decode, t.image_encode, t.text_encode, t.search, t.cache, t.images_cached, t.texts_cached,
    )
}

pub fn unit_name(unit: Unit) -> &'static str {
    match unit {
        Unit::Tokens => "tokens",
        Unit::Words => "words",
    }
}

/// What `probe` prints for one model: a header, the table by length, tie
/// notes and the timing line.
pub fn probe_model_text(run_unit: Unit, dataset: &str, split: &str, lengths: usize, m: &ModelProbe) -> String {
    let mut s = format!(
        "probe by {} on {dataset} ({split}): {} images, {} texts; model {}\n",
        unit_name(run_unit),
        m.n_images,
        m.n_texts,
        model_line(&m.model)
    );
    s += &probe_table(&m.rows);
    for r in m.rows.iter().filter(|r| r.tie_range.is_some()) {
        s += &format!("length {}: {}\n", r.length, tie_note(r.tie_range.as_ref().expect("filtered")));
    }
    s + &timing_line(m.seconds, &m.timings, m.n_images, m.n_texts * lengths) + "\n"
}

/// One model's probe: R@K and the perfect reader's ceiling by length.
pub fn probe_table(rows: &[ProbeRow]) -> String {
    let mut s = format!(
        "{:>6}  {:>7} {:>7} {:>7}   {:>7} {:>7} {:>7}   {:>8}\n",
        "length", "T2I R@1", "R@5", "R@10", "I2T R@1", "R@5", "R@10", "ceiling"
    );
    for r in rows {
        let v: Vec<String> = r.scores.named().iter().map(|(_, v)| cell(Some(*v), 7)).collect();
        let mark = if r.tie_range.is_some() { "  (ties)" } else { "" };
        let ceiling = cell(Some(r.ceiling.t2i_r1), 8);
        s += &format!("{:>6}  {} {} {}   {} {} {}   {ceiling}{mark}\n", r.length, v[0], v[1], v[2], v[3], v[4], v[5]);
    }
    s += "ceiling: the T2I R@1 a perfect reader of the cut captions could reach (captions cut to equal ids cannot tell their images apart)\n";
    s
}

/// The models side by side: T2I and I2T R@1 at each length, a row per
/// model, then the published whole-caption numbers ("paper: …") in the
/// columns whose length reaches that model's positions (there the probe
/// reads whole captions, as the papers did; by tokens only).
pub fn probe_summary(run: &ProbeRun) -> String {
    let mut s = String::new();
    for (title, pick) in [("T2I R@1", "t2i_r1"), ("I2T R@1", "i2t_r1")] {
        let mut rows: Vec<(String, Vec<Option<f64>>)> = Vec::new();
        for m in &run.models {
            let values = run.lengths.iter().map(|l| m.rows.iter().find(|r| r.length == *l).and_then(|r| score(&r.scores, pick))).collect();
            rows.push((term::escape_for_terminal(&m.model.label).into_owned(), values));
        }
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for m in &run.models {
            for p in &m.paper {
                if seen.contains(&(p.model.as_str(), p.source.as_str())) {
                    continue;
                }
                seen.push((&p.model, &p.source));
                let values = run.lengths.iter().map(|&l| if l >= m.model.positions { p.get(pick) } else { None }).collect();
                rows.push((format!("paper: {}", paper_name(p)), values));
            }
        }
        let w = rows.iter().map(|(n, _)| n.chars().count()).max().unwrap_or(0).max(title.len());
        s += &format!("{title:w$}");
        for l in &run.lengths {
            s += &format!(" {l:>7}");
        }
        s += "\n";
        for (name, values) in &rows {
            let pad = w - name.chars().count();
            s += &format!("{name}{:pad$}", "");
            for v in values {
                s += &format!(" {}", cell(*v, 7));
            }
            s += "\n";
        }
    }
    s
}

/// R@1 against length: solid T2I and dashed I2T, one color per model, the
/// perfect reader's ceiling, and the 77-token mark.
pub fn probe_chart(run: &ProbeRun) -> Chart {
    let mut series = Vec::new();
    for (i, m) in run.models.iter().enumerate() {
        let points = |f: fn(&RetrievalScores) -> f64| m.rows.iter().map(|r| (r.length as f64, f(&r.scores))).collect();
        series.push(Series { label: format!("{} T2I", m.model.label), color: i, dashed: false, points: points(|s| s.t2i_r1) });
        series.push(Series { label: format!("{} I2T", m.model.label), color: i, dashed: true, points: points(|s| s.i2t_r1) });
    }
    // The ceiling depends on the captions only: one line for every model.
    if let Some(m) = run.models.first() {
        let points = m.rows.iter().map(|r| (r.length as f64, r.ceiling.t2i_r1)).collect();
        series.push(Series { label: "perfect reader T2I".into(), color: run.models.len(), dashed: true, points });
    }
    // 77 words is no limit of anything: the mark is for tokens only.
    let marker = match run.unit {
        Unit::Tokens => Some((77.0, "77 tokens (CLIP's limit)".to_string())),
        Unit::Words => None,
    };
    Chart {
        title: format!("R@1 by caption length, {} ({}, {} pairs)", run.dataset, run.split, run.n_texts_listed),
        x_label: format!("caption cut to N {}", unit_name(run.unit)),
        y_label: "R@1 (%)".into(),
        series,
        marker,
    }
}

/// Everything zero-shot `eval` prints.
pub fn classification_text(run: &ClassificationRun) -> String {
    let mut s = String::new();
    let mut rows: Vec<(String, Option<f64>, Option<f64>)> = Vec::new();
    match run.models.as_slice() {
        [m] => {
            let r = &m.report;
            s += &format!(
                "{}: {} images, {} classes, {} prompts each; model {}\n",
                run.dataset,
                r.n_images,
                r.n_classes,
                run.n_prompts,
                model_line(&m.model)
            );
            rows.push(("ours".into(), Some(r.accuracy.top1), Some(r.accuracy.top5)));
            rows.extend(m.paper.iter().map(|p| (paper_name(p), p.get("top1"), p.get("top5"))));
        }
        models => {
            let r = &models[0].report;
            s += &format!("{}: {} images, {} classes, {} prompts each; {} models\n", run.dataset, r.n_images, r.n_classes, run.n_prompts, models.len());
            for m in models {
                s += &format!("  {}: {}\n", term::escape_for_terminal(&m.model.label), model_line(&m.model));
                rows.push((term::escape_for_terminal(&m.model.label).into_owned(), Some(m.report.accuracy.top1), Some(m.report.accuracy.top5)));
            }
            let paper = distinct_paper(models.iter().map(|m| m.paper.as_slice()));
            rows.extend(paper.iter().map(|p| (format!("paper: {}", paper_name(p)), p.get("top1"), p.get("top5"))));
        }
    }
    let w = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(4).max(4);
    s += &format!("{:w$}  {:>7} {:>7}\n", "", "top-1", "top-5");
    for (name, top1, top5) in &rows {
        let pad = w - name.chars().count();
        s += &format!("{name}{:pad$}  {} {}\n", "", cell(*top1, 7), cell(*top5, 7));
    }
    for m in &run.models {
        let seconds = if run.models.len() == 1 { run.seconds } else { m.seconds };
        let prefix = if run.models.len() == 1 { String::new() } else { format!("{}: ", term::escape_for_terminal(&m.model.label)) };
        s += &format!("{prefix}{}\n", classification_timing(seconds, m, run.n_prompts));
    }
    s
}

fn classification_timing(seconds: f64, m: &ModelClassification, n_prompts: usize) -> String {
    timing_line(seconds, &m.timings, m.report.n_images, m.report.n_classes * n_prompts)
}
