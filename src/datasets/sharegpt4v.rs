//! ShareGPT4V-1k: the first 1,000 records of
//! `share-captioner_coco_lcs_sam_1246k_1107.json` (the rest is Long-CLIP's
//! training data). Caption = `conversations[1].value` with newlines replaced
//! by spaces; image = `image`, relative to the image root.
//!
//! ShareGPT4V-10k (`--split 10k`, or `--limit 10000`): the first 10,000 records,
//! as LoTLIP (`share4v_sam_10k.json`, "the top 10k samples" of the same
//! file) and later papers report it. Records 1,000 to 9,999 are in
//! Long-CLIP's training data, so the loader warns (see [`TRAINING_OVERLAP`]).
//! Captions keep Long-CLIP's rule here; LoTLIP also re-punctuates them
//! ([`super::lotlip_caption`]), a difference noted in docs/benchmarks.md.
//!
//! The file is over a gigabyte: it is read as a stream and parsing stops after
//! the records needed.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use super::{file_or_in, json_error, Dataset, LoadOptions};

pub const FILE_NAME: &str = "share-captioner_coco_lcs_sam_1246k_1107.json";

/// Records from this index on are Long-CLIP's training data (it was trained
/// on ShareGPT4V without its first 1,000 records).
pub const TRAINING_OVERLAP: usize = 1000;

/// The split name of the first `limit` records: `1k`, `10k`, else `first N`.
pub fn split_name(limit: usize) -> String {
    match limit {
        1000 => "1k".into(),
        10000 => "10k".into(),
        n => format!("first {n}"),
    }
}

/// How many records `--split` and `--limit` ask for: `1k` is 1,000 and
/// `10k` is 10,000 (a different `limit` beside them is an error); with no
/// split, `limit` records (default 1,000). Errors on an unknown split and a
/// zero limit.
pub fn records_wanted(split: Option<&str>, limit: Option<usize>) -> Result<usize> {
    let from_split = match split {
        None => None,
        Some("1k") => Some(1000),
        Some("10k") => Some(10000),
        Some(other) => bail!("unknown ShareGPT4V split '{other}': expected 1k or 10k (or --limit N for the first N records)"),
    };
    let n = match (from_split, limit) {
        (Some(s), Some(l)) if s != l => bail!(
            "--split {} is the first {s} records, but --limit asks for {l}: give one of them",
            split.unwrap_or_default()
        ),
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => 1000,
    };
    if n == 0 {
        bail!("--limit 0: the ShareGPT4V test set needs at least one record");
    }
    Ok(n)
}

#[derive(Deserialize)]
struct Record {
    image: String,
    conversations: Vec<Turn>,
}

#[derive(Deserialize)]
struct Turn {
    value: String,
}

pub fn load(root: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let (path, dir) = file_or_in(root, FILE_NAME);
    if !path.is_file() {
        bail!("{}: not a ShareGPT4V layout: expected {FILE_NAME} there (the image root holds the paths it lists)", root.display());
    }
    let image_root = opts.image_root.clone().unwrap_or(dir);
    let wanted = records_wanted(opts.split.as_deref(), opts.limit)?;
    let records: Vec<Record> = first_records(&path, wanted)?;
    let mut data = Dataset { split: split_name(records.len()), ..Default::default() };
    for (n, r) in records.into_iter().enumerate() {
        let Some(turn) = r.conversations.get(1) else {
            bail!("{}: record {n} has {} conversation turns; the caption is the second", path.display(), r.conversations.len());
        };
        let caption = turn.value.replace('\n', " ");
        if caption.trim().is_empty() {
            bail!("{}: record {n} has an empty caption", path.display());
        }
        data.images.push(image_root.join(&r.image));
        data.captions.push(vec![caption]);
    }
    if data.images.len() < wanted {
        // Never labelled with a protocol it did not run.
        data.warnings.push(format!(
            "{} has only {} records, fewer than the {wanted} asked for ({}): all are used and the split is labelled '{}'",
            path.display(),
            data.images.len(),
            split_name(wanted),
            data.split
        ));
    }
    let n = data.images.len();
    if n > TRAINING_OVERLAP {
        data.warnings.push(format!(
            "ShareGPT4V records {TRAINING_OVERLAP} to {} (the 1k-10k range of ShareGPT4V-10k) are in Long-CLIP's training data \
             (Long-CLIP was trained on ShareGPT4V without its first {TRAINING_OVERLAP} records): for Long-CLIP checkpoints \
             only the first {TRAINING_OVERLAP} are held out",
            n - 1
        ));
    }
    Ok(data)
}

/// The first `n` elements of the top-level JSON array in `path`.
fn first_records<T: for<'de> Deserialize<'de>>(path: &Path, n: usize) -> Result<Vec<T>> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut de = serde_json::Deserializer::from_reader(reader);
    let out = RefCell::new(Vec::new());
    let stopped = Cell::new(false);
    match de.deserialize_seq(FirstN { n, out: &out, stopped: &stopped }) {
        Ok(()) => Ok(out.into_inner()),
        // We stop the parser ourselves once we have n records.
        Err(_) if stopped.get() => Ok(out.into_inner()),
        Err(e) => Err(json_error(path, &e)),
    }
}

struct FirstN<'a, T> {
    n: usize,
    out: &'a RefCell<Vec<T>>,
    stopped: &'a Cell<bool>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for FirstN<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while self.out.borrow().len() < self.n {
            match seq.next_element()? {
                Some(record) => self.out.borrow_mut().push(record),
                None => return Ok(()),
            }
        }
        self.stopped.set(true);
        Err(de::Error::custom("stopped after the records needed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_the_first_records_and_ignores_what_follows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        // Records after the second are broken: never parsed.
        std::fs::write(&path, r#"[{"a": 1}, {"a": 2}, {"a": "#).unwrap();
        #[derive(Deserialize, Debug)]
        struct A {
            a: u32,
        }
        let got: Vec<A> = first_records(&path, 2).unwrap();
        assert_eq!(got.iter().map(|r| r.a).collect::<Vec<_>>(), [1, 2]);
        let err = first_records::<A>(&path, 3).unwrap_err().to_string();
        assert!(err.contains("x.json:1:"), "{err}");
        std::fs::write(&path, "[{\"a\": 1}]").unwrap();
        assert_eq!(first_records::<A>(&path, 5).unwrap().len(), 1);
    }
}
