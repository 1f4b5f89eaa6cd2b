//! Training data: (image, long caption, short caption) records, their order
//! in each epoch, and a loader thread that decodes the next batch while the
//! encoders run on the current one.
//!
//! Layouts read by `--data`:
//! - ShareGPT4V json: an array of `{"image": PATH, "conversations": [..,
//!   {"value": CAPTION}]}`, the caption being `conversations[1].value` as in
//!   the official `sharegpt4v.py`. `sharegpt4v:FILE` skips the first 1,000
//!   records (ShareGPT4V-1k, the authors' evaluation set) as they do.
//! - CSV (header row) or JSONL (one object a line) with an image column
//!   (`image`, `image_path`, `file` or `filename`) and a caption column
//!   (`caption`, `long_caption` or `text`).
//! - `urban1k:ROOT`: Urban1k's `image/N.jpg` with the first line of
//!   `caption/N.txt`.
//!
//! Image paths are relative to `--image-root`, else to the data file's
//! directory. This reader is small on purpose; the evaluator's dataset
//! loaders (issue 4) can absorb it later.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::preprocess::Transform;
use crate::rng::SplitMix;
use crate::tokenizer::Tokenizer;

/// Records the authors hold out of ShareGPT4V for evaluation.
pub const SHAREGPT4V_EVAL_RECORDS: usize = 1000;
const IMAGE_COLUMNS: [&str; 4] = ["image", "image_path", "file", "filename"];
const CAPTION_COLUMNS: [&str; 3] = ["caption", "long_caption", "text"];

#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub image: PathBuf,
    pub long: String,
    pub short: String,
}

/// Where the short caption of a record comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum ShortCaption {
    /// `caption.split(". ")[0]`, as the authors do.
    FirstSentence,
    /// A column (CSV), key (JSONL) or record key (ShareGPT4V json).
    Column(String),
}

impl FromStr for ShortCaption {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "first-sentence" => Ok(ShortCaption::FirstSentence),
            _ => match s.strip_prefix("column:") {
                Some(name) if !name.is_empty() => Ok(ShortCaption::Column(name.to_string())),
                _ => bail!("--short-caption: expected first-sentence or column:NAME, got '{s}'"),
            },
        }
    }
}

/// The official caption clean-up: newlines become spaces.
pub fn clean_caption(caption: &str) -> String {
    caption.replace('\n', " ")
}

/// The official short caption: everything before the first ". ".
pub fn first_sentence(caption: &str) -> String {
    clean_caption(caption).split(". ").next().unwrap_or_default().to_string()
}

/// Records read from one data file.
pub struct Dataset {
    pub records: Vec<Record>,
    /// sha256 over the data file and the options that shape the records, so
    /// a resumed run can tell it is reading the same data.
    pub fingerprint: String,
}

/// Reads `--data SPEC`: `sharegpt4v:FILE.json`, `urban1k:ROOT`, or a
/// `.json`, `.csv` or `.jsonl` file.
pub fn read_dataset(spec: &str, image_root: Option<&Path>, short: &ShortCaption) -> Result<Dataset> {
    if let Some(root) = spec.strip_prefix("urban1k:") {
        if *short != ShortCaption::FirstSentence {
            bail!("urban1k: has no short-caption column; use --short-caption first-sentence");
        }
        let records = urban1k(Path::new(root))?;
        let mut hash = Sha256::new();
        for r in &records {
            hash.update(format!("{}|{}|{}\n", r.image.display(), r.long, r.short).as_bytes());
        }
        let fingerprint = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        return Ok(Dataset { records, fingerprint });
    }
    let (path, skip) = match spec.strip_prefix("sharegpt4v:") {
        Some(p) => (PathBuf::from(p), SHAREGPT4V_EVAL_RECORDS),
        None => (PathBuf::from(spec), 0),
    };
    let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let text = String::from_utf8(bytes.clone()).with_context(|| format!("{}: not UTF-8", path.display()))?;
    let root = image_root.map(Path::to_path_buf).unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).to_path_buf());
    let rows = parse_rows(&text, &path)?;
    if rows.len() <= skip {
        bail!("{}: {} records, but sharegpt4v: skips the first {skip} (the evaluation set)", path.display(), rows.len());
    }
    let records = rows[skip..]
        .iter()
        .enumerate()
        .map(|(i, row)| row.record(&root, short).with_context(|| format!("{}: record {}", path.display(), i + skip + 1)))
        .collect::<Result<Vec<_>>>()?;
    if records.is_empty() {
        bail!("{}: no records", path.display());
    }
    let mut hash = Sha256::new();
    hash.update(&bytes);
    hash.update(format!("|skip={skip}|root={}|short={short:?}", root.display()).as_bytes());
    let fingerprint = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Dataset { records, fingerprint })
}

/// Reads the records of an evaluation set: like `read_dataset`, but
/// `sharegpt4v:FILE` keeps only the first 1,000 (ShareGPT4V-1k).
pub fn read_eval_records(spec: &str, image_root: Option<&Path>, short: &ShortCaption) -> Result<Vec<Record>> {
    if let Some(path) = spec.strip_prefix("sharegpt4v:") {
        let mut records = read_dataset(path, image_root, short)?.records;
        records.truncate(SHAREGPT4V_EVAL_RECORDS);
        return Ok(records);
    }
    Ok(read_dataset(spec, image_root, short)?.records)
}

/// Urban1k: `image/N.jpg` (or `.png`) and the first line of `caption/N.txt`, in the
/// order of N.
fn urban1k(root: &Path) -> Result<Vec<Record>> {
    let caption_dir = root.join("caption");
    let mut ids: Vec<(u64, String)> = std::fs::read_dir(&caption_dir)
        .with_context(|| format!("{}: cannot list (expected Urban1k's caption/ and image/)", caption_dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".txt")?.to_string();
            Some((stem.parse().ok()?, stem))
        })
        .collect();
    ids.sort();
    if ids.is_empty() {
        bail!("{}: no N.txt captions", caption_dir.display());
    }
    ids.iter()
        .map(|(_, stem)| {
            let path = caption_dir.join(format!("{stem}.txt"));
            let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
            let caption = text.lines().next().unwrap_or_default().to_string();
            Ok(Record { image: urban_image(root, stem), short: first_sentence(&caption), long: caption })
        })
        .collect()
}

/// `image/N.jpg`, or `image/N.png` when only that exists (`longclip synth`
/// writes PNG); a missing image is reported by the loader.
fn urban_image(root: &Path, stem: &str) -> PathBuf {
    let jpg = root.join("image").join(format!("{stem}.jpg"));
    let png = jpg.with_extension("png");
    if !jpg.exists() && png.exists() {
        png
    } else {
        jpg
    }
}

/// One row of any layout: named string fields.
struct Row(Vec<(String, String)>);

impl Row {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn first_of(&self, keys: &[&str]) -> Option<&str> {
        keys.iter().find_map(|k| self.get(k))
    }

    fn record(&self, root: &Path, short: &ShortCaption) -> Result<Record> {
        let image = self.first_of(&IMAGE_COLUMNS).with_context(|| format!("no image field (one of {IMAGE_COLUMNS:?})"))?;
        let caption = self.first_of(&CAPTION_COLUMNS).with_context(|| format!("no caption field (one of {CAPTION_COLUMNS:?})"))?;
        let short = match short {
            ShortCaption::FirstSentence => first_sentence(caption),
            ShortCaption::Column(name) => clean_caption(self.get(name).with_context(|| format!("no '{name}' field"))?),
        };
        Ok(Record { image: root.join(image), long: clean_caption(caption), short })
    }
}

fn parse_rows(text: &str, path: &Path) -> Result<Vec<Row>> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "json" => json_rows(text, path),
        "jsonl" => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                let value: serde_json::Value =
                    serde_json::from_str(l).with_context(|| format!("{}:{}: invalid JSON", path.display(), i + 1))?;
                object_row(&value).with_context(|| format!("{}:{}", path.display(), i + 1))
            })
            .collect(),
        "csv" => csv_rows(text).with_context(|| format!("{}: bad CSV", path.display())),
        _ => bail!("{}: unknown data layout (expected .json, .jsonl or .csv)", path.display()),
    }
}

fn json_rows(text: &str, path: &Path) -> Result<Vec<Row>> {
    let value: serde_json::Value = serde_json::from_str(text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    let items = value.as_array().with_context(|| format!("{}: expected a JSON array of records", path.display()))?;
    items.iter().enumerate().map(|(i, v)| object_row(v).with_context(|| format!("{}: record {}", path.display(), i + 1))).collect()
}

/// Strings of a JSON object; a ShareGPT4V record's caption is
/// `conversations[1].value`.
fn object_row(value: &serde_json::Value) -> Result<Row> {
    let object = value.as_object().context("expected a JSON object")?;
    let mut fields: Vec<(String, String)> =
        object.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect();
    if let Some(conversations) = object.get("conversations").and_then(|c| c.as_array()) {
        let caption = conversations
            .get(1)
            .and_then(|c| c.get("value"))
            .and_then(|v| v.as_str())
            .context("'conversations' has no second turn with a 'value'")?;
        fields.retain(|(k, _)| k != "caption");
        fields.push(("caption".to_string(), caption.to_string()));
    }
    Ok(Row(fields))
}

/// RFC 4180 CSV: a header row, quoted fields may hold commas, newlines and
/// doubled quotes.
fn csv_rows(text: &str) -> Result<Vec<Row>> {
    let mut table = parse_csv(text)?;
    if table.is_empty() {
        bail!("empty file");
    }
    let header = table.remove(0);
    table
        .into_iter()
        .enumerate()
        .filter(|(_, r)| !(r.len() == 1 && r[0].is_empty()))
        .map(|(i, r)| {
            if r.len() != header.len() {
                bail!("row {} has {} fields, the header {}", i + 2, r.len(), header.len());
            }
            Ok(Row(header.iter().cloned().zip(r).collect()))
        })
        .collect()
}

pub fn parse_csv(text: &str) -> Result<Vec<Vec<String>>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        bail!("unterminated quoted field");
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------
// Order

/// Batches per epoch: the last one may be short, as with the official
/// DataLoader (drop_last=False).
pub fn steps_per_epoch(records: usize, batch_size: usize) -> usize {
    records.div_ceil(batch_size.max(1))
}

/// The records of `step` (counted from the first step of the run): a
/// slice of that epoch's shuffle. A function of (seed, step) only, so a
/// resumed run reads exactly the batches the uninterrupted one would.
pub fn batch_indices(records: usize, batch_size: usize, seed: u64, step: usize) -> Vec<usize> {
    let per_epoch = steps_per_epoch(records, batch_size);
    let (epoch, i) = (step / per_epoch, step % per_epoch);
    let order = epoch_order(records, seed, epoch as u64);
    let end = ((i + 1) * batch_size).min(records);
    order[i * batch_size..end].to_vec()
}

/// Fisher-Yates with a SplitMix64 stream seeded by (seed, epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut state = seed ^ epoch.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

// ---------------------------------------------------------------------------
// Loading

/// One batch ready for the encoders (pixels still on the host).
pub struct LoadedBatch {
    pub step: usize,
    /// [kept, 3, size, size] row-major.
    pub pixels: Vec<f32>,
    pub long: Vec<Vec<u32>>,
    pub short: Vec<Vec<u32>>,
    /// Long captions cut by `--cut-share`.
    pub cut: usize,
    /// Images that could not be read, with the reason; their records are
    /// left out of the batch.
    pub skipped: Vec<(PathBuf, String)>,
}

impl LoadedBatch {
    pub fn len(&self) -> usize {
        self.long.len()
    }

    pub fn is_empty(&self) -> bool {
        self.long.is_empty()
    }
}

/// Decodes, preprocesses and tokenizes one batch (images on all cores),
/// then cuts a share of its long captions (`cuts`, drawn from (seed, step)).
pub fn load_batch(
    records: &[Record],
    indices: &[usize],
    transform: &Transform,
    context_length: usize,
    cuts: &CaptionCuts,
    seed: u64,
    step: usize,
) -> Result<LoadedBatch> {
    let paths: Vec<PathBuf> = indices.iter().map(|&i| records[i].image.clone()).collect();
    let images = transform.batch_from_paths(&paths);
    let mut batch = LoadedBatch { step, pixels: Vec::new(), long: Vec::new(), short: Vec::new(), cut: 0, skipped: Vec::new() };
    let mut kept = Vec::new();
    for (&i, image) in indices.iter().zip(images) {
        match image {
            Ok(p) => {
                batch.pixels.extend_from_slice(&p);
                kept.push(i);
            }
            Err(e) => batch.skipped.push((records[i].image.clone(), crate::embed::skip_reason(&records[i].image.display().to_string(), format!("{e:#}")))),
        }
    }
    let tok = Tokenizer::global();
    let long: Vec<String> = kept.iter().map(|&i| records[i].long.clone()).collect();
    let short: Vec<String> = kept.iter().map(|&i| records[i].short.clone()).collect();
    batch.long = tok.encode_batch(&long, context_length)?.into_iter().map(|e| e.ids).collect();
    batch.short = tok.encode_batch(&short, context_length)?.into_iter().map(|e| e.ids).collect();
    batch.cut = cuts.apply(&mut batch.long, seed, step);
    Ok(batch)
}

// ---------------------------------------------------------------------------
// Cut captions

/// Cutting long captions at random token lengths while training
/// (`finetune --cut-share S --cut-min M`), so the model also learns to
/// match a caption's beginning to its image, the way the probe and a
/// 77-token reader see it. Each long caption of a step is cut with
/// probability `share` to a length drawn uniformly from `min_tokens ..
/// n - 1` (n: its SOT..EOT ids); captions of at most `min_tokens` ids stay
/// whole. Short captions are never cut. The draws are a function of
/// (seed, step, row) only, so a resumed run cuts as the uninterrupted one.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaptionCuts {
    /// In [0, 1]; 0 (the default) leaves every caption whole, as the official recipe.
    pub share: f64,
    /// The shortest cut, in ids with SOT and EOT (at least 2).
    pub min_tokens: usize,
}

impl Default for CaptionCuts {
    fn default() -> Self {
        CaptionCuts { share: 0.0, min_tokens: 2 }
    }
}

impl CaptionCuts {
    /// Checks the share and the minimum (`--cut-share`, `--cut-min`).
    pub fn validate(&self) -> Result<()> {
        ensure!((0.0..=1.0).contains(&self.share), "--cut-share must be in [0, 1], got {}", self.share);
        ensure!(self.min_tokens >= 2, "--cut-min must be at least 2 (SOT and EOT), got {}", self.min_tokens);
        Ok(())
    }

    /// Cuts the rows of `long` (SOT..EOT ids) chosen for `step`; returns
    /// how many it cut.
    pub fn apply(&self, long: &mut [Vec<u32>], seed: u64, step: usize) -> usize {
        if self.share <= 0.0 {
            return 0;
        }
        let mut cut = 0;
        let mut rng = SplitMix(seed ^ (step as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F) ^ 0xC0_7CA9);
        for ids in long.iter_mut() {
            // Two draws per row whether or not it is cut: row k's draws
            // do not depend on the rows before it.
            let (pick, at) = (rng.unit(), rng.next_u64());
            if pick < self.share && ids.len() > self.min_tokens {
                let span = (ids.len() - self.min_tokens) as u64;
                *ids = cut_ids(ids, self.min_tokens + (at % span) as usize);
                cut += 1;
            }
        }
        cut
    }
}

/// `ids` (SOT..EOT) cut to `length` ids as the official
/// `tokenize(text, context_length=length, truncate=True)` cuts: the first
/// `length` ids with the last one replaced by EOT. Shorter ids are returned whole.
pub fn cut_ids(ids: &[u32], length: usize) -> Vec<u32> {
    let mut cut = ids.to_vec();
    crate::tokenizer::truncate_ids(&mut cut, length);
    cut
}

/// Loads the batches of steps `first..last` on a background thread,
/// `prefetch` ahead of the consumer.
pub fn spawn_loader(
    records: std::sync::Arc<Vec<Record>>,
    batch_size: usize,
    seed: u64,
    steps: std::ops::Range<usize>,
    transform: Transform,
    context_length: usize,
    cuts: CaptionCuts,
    prefetch: usize,
) -> (mpsc::Receiver<Result<LoadedBatch>>, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::sync_channel(prefetch.max(1));
    let handle = std::thread::spawn(move || {
        for step in steps {
            let indices = batch_indices(records.len(), batch_size, seed, step);
            let batch = load_batch(&records, &indices, &transform, context_length, &cuts, seed, step);
            if tx.send(batch).is_err() {
                break;
            }
        }
    });
    (rx, handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_commas_and_newlines() {
        let rows = parse_csv("image,caption\r\na.png,\"one, two\"\nb.png,\"say \"\"hi\"\"\nthere\"\n").unwrap();
        assert_eq!(rows, vec![
            vec!["image".to_string(), "caption".to_string()],
            vec!["a.png".to_string(), "one, two".to_string()],
            vec!["b.png".to_string(), "say \"hi\"\nthere".to_string()],
        ]);
        assert!(parse_csv("a,\"open").is_err());
    }

    #[test]
    fn first_sentence_is_the_official_split() {
        assert_eq!(first_sentence("The image shows a cat. It is grey."), "The image shows a cat");
        assert_eq!(first_sentence("No period here"), "No period here");
        assert_eq!(first_sentence("Line one.\nLine two"), "Line one");
        assert_eq!(first_sentence("3.5 metres tall. Next"), "3.5 metres tall");
    }

    #[test]
    fn sharegpt4v_layout_and_its_evaluation_split() {
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<serde_json::Value> = (0..1003)
            .map(|i| {
                serde_json::json!({
                    "id": i.to_string(),
                    "image": format!("coco/{i}.jpg"),
                    "conversations": [
                        {"from": "human", "value": "<image>\nDescribe."},
                        {"from": "gpt", "value": format!("Picture {i}. Details\nfollow. More.")},
                    ],
                })
            })
            .collect();
        let path = dir.path().join("share.json");
        std::fs::write(&path, serde_json::to_string(&records).unwrap()).unwrap();
        let all = read_dataset(path.to_str().unwrap(), None, &ShortCaption::FirstSentence).unwrap();
        assert_eq!(all.records.len(), 1003);
        assert_eq!(all.records[0].long, "Picture 0. Details follow. More.");
        assert_eq!(all.records[0].short, "Picture 0");
        assert_eq!(all.records[0].image, dir.path().join("coco/0.jpg"));
        let spec = format!("sharegpt4v:{}", path.display());
        let train = read_dataset(&spec, Some(Path::new("/data")), &ShortCaption::FirstSentence).unwrap();
        assert_eq!(train.records.len(), 3);
        assert_eq!(train.records[0].image, Path::new("/data/coco/1000.jpg"));
        assert_ne!(train.fingerprint, all.fingerprint);
        let eval = read_eval_records(&spec, None, &ShortCaption::FirstSentence).unwrap();
        assert_eq!(eval.len(), 1000);
        assert_eq!(eval[999].short, "Picture 999");
    }

    #[test]
    fn jsonl_and_csv_with_a_short_caption_column() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("d.jsonl");
        std::fs::write(&jsonl, "{\"image\": \"a.png\", \"caption\": \"Long one. Two.\", \"summary\": \"short\"}\n\n").unwrap();
        let short = ShortCaption::Column("summary".into());
        let d = read_dataset(jsonl.to_str().unwrap(), None, &short).unwrap();
        assert_eq!(d.records, vec![Record { image: dir.path().join("a.png"), long: "Long one. Two.".into(), short: "short".into() }]);
        let csv = dir.path().join("d.csv");
        std::fs::write(&csv, "file,text\nb.png,\"x, y. z\"\n").unwrap();
        let d = read_dataset(csv.to_str().unwrap(), None, &ShortCaption::FirstSentence).unwrap();
        assert_eq!(d.records[0].short, "x, y");
        let err = read_dataset(csv.to_str().unwrap(), None, &short).err().unwrap();
        assert!(format!("{err:#}").contains("summary"), "{err:#}");
        assert_eq!("column:summary".parse::<ShortCaption>().unwrap(), short);
        assert!("column:".parse::<ShortCaption>().is_err());
    }

    #[test]
    fn epochs_are_permutations_and_batches_cover_them() {
        let order = epoch_order(10, 7, 0);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_ne!(order, epoch_order(10, 7, 1));
        assert_eq!(order, epoch_order(10, 7, 0));
        let batches: Vec<usize> = (0..3).flat_map(|s| batch_indices(10, 4, 7, s)).collect();
        assert_eq!(batches, order);
        assert_eq!(batch_indices(10, 4, 7, 2).len(), 2);
        assert_eq!(batch_indices(10, 4, 7, 3), epoch_order(10, 7, 1)[..4].to_vec());
    }

    /// A cut is what the probe and the official `tokenize(..., truncate=True)`
    /// give for that length, for every length of a real caption.
    #[test]
    fn a_cut_caption_is_the_official_truncation() {
        let text = "Nine shapes on a grey background. At the top left there is a large cyan striped triangle, and more.";
        let tok = Tokenizer::global();
        let whole = tok.encode(text, 248).unwrap().ids;
        for length in 2..=whole.len() + 3 {
            let official = crate::evaluate::truncated_ids(&[text.to_string()], length, crate::evaluate::Unit::Tokens, 248).unwrap();
            assert_eq!(cut_ids(&whole, length), official[0], "length {length}");
        }
    }

    #[test]
    fn cuts_follow_the_share_and_the_range_and_depend_on_seed_and_step_only() {
        let rows: Vec<Vec<u32>> = (0..2000).map(|i| (0..30 + (i % 5) as u32).collect()).collect();
        let cut = |share: f64, min_tokens: usize, seed: u64, step: usize| {
            let mut r = rows.clone();
            let n = CaptionCuts { share, min_tokens }.apply(&mut r, seed, step);
            assert_eq!(n, r.iter().zip(&rows).filter(|(c, w)| c.len() < w.len()).count(), "the count is the rows cut");
            r
        };
        assert_eq!(cut(0.0, 2, 1, 1), rows, "share 0 leaves every caption whole");
        let all = cut(1.0, 5, 1, 1);
        let mut seen = std::collections::BTreeSet::new();
        for (c, whole) in all.iter().zip(&rows) {
            assert!(c.len() >= 5 && c.len() < whole.len(), "cut to {} of {}", c.len(), whole.len());
            assert_eq!(&c[..c.len() - 1], &whole[..c.len() - 1]);
            assert_eq!(*c.last().unwrap(), crate::tokenizer::EOT);
            seen.insert(c.len());
        }
        assert_eq!(seen, (5..34).collect(), "every length from --cut-min to n - 1 occurs");
        let half = cut(0.5, 2, 1, 1);
        let n_cut = half.iter().zip(&rows).filter(|(c, w)| c.len() < w.len()).count();
        // Binomial(2000, 0.5): mean 1000, sd 22.
        assert!((900..1100).contains(&n_cut), "{n_cut} of 2000 cut at share 0.5");
        assert_eq!(half, cut(0.5, 2, 1, 1), "a function of (seed, step)");
        assert_ne!(half, cut(0.5, 2, 1, 2), "another step, other cuts");
        assert_ne!(half, cut(0.5, 2, 2, 1), "another seed, other cuts");
        // A caption no longer than --cut-min stays whole.
        let mut short = vec![vec![1u32, 2, 3]];
        assert_eq!(CaptionCuts { share: 1.0, min_tokens: 3 }.apply(&mut short, 0, 0), 0);
        assert_eq!(short, vec![vec![1u32, 2, 3]]);
        assert!(CaptionCuts { share: 1.5, min_tokens: 2 }.validate().is_err());
        assert!(CaptionCuts { share: 0.5, min_tokens: 1 }.validate().is_err());
        assert!(CaptionCuts { share: f64::NAN, min_tokens: 2 }.validate().is_err());
    }
}
