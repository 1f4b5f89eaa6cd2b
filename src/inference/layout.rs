//! clip-retrieval's output layout, and the record that ties an output
//! folder to one model and one input.
//!
//! The names follow `clip_retrieval/clip_inference/writer.py` and
//! `logger.py` (release 2.45.0):
//! - `img_emb/img_emb_{p}.npy`, `text_emb/text_emb_{p}.npy`,
//!   `metadata/metadata_{p}.parquet`, where `p` is the partition number
//!   zero-padded to `int(log10(count)) + 1` digits (`OutputSink.oom_partition_count`);
//! - `stats/{i}.json` when partition `i` is done, `stats/wip_{i}.json`
//!   while it runs (`LoggerWriter`), `i` not padded.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The file in the output folder that records how its partitions were made.
pub const RECORD: &str = "longclip-inference.json";

/// Partition numbers' width in file names: `int(math.log10(count)) + 1`.
pub fn pad_width(count: usize) -> usize {
    count.max(1).ilog10() as usize + 1
}

/// The files of partition `index` of `count` under `dir`.
#[derive(Clone, Debug)]
pub struct PartitionFiles {
    pub img_emb: PathBuf,
    pub text_emb: PathBuf,
    pub metadata: PathBuf,
    pub stats: PathBuf,
    pub wip: PathBuf,
}

impl PartitionFiles {
    pub fn new(dir: &Path, index: usize, count: usize) -> PartitionFiles {
        let p = format!("{index:0w$}", w = pad_width(count));
        PartitionFiles {
            img_emb: dir.join("img_emb").join(format!("img_emb_{p}.npy")),
            text_emb: dir.join("text_emb").join(format!("text_emb_{p}.npy")),
            metadata: dir.join("metadata").join(format!("metadata_{p}.parquet")),
            stats: dir.join("stats").join(format!("{index}.json")),
            wip: dir.join("stats").join(format!("wip_{index}.json")),
        }
    }

    /// Temporary files of an earlier run of this partition that died
    /// (kill -9): `.NAME.tmp-PID` beside each output, PID no longer running.
    pub fn remove_stale_temps(&self) {
        for path in [&self.img_emb, &self.text_emb, &self.metadata, &self.stats, &self.wip] {
            let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { continue };
            let prefix = format!(".{}.tmp-", name.to_string_lossy());
            let Ok(listing) = std::fs::read_dir(dir) else { continue };
            for entry in listing.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                let Some(pid) = file.strip_prefix(&prefix) else { continue };
                if !process_alive(pid) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

fn process_alive(pid: &str) -> bool {
    match pid.parse::<u32>() {
        Ok(p) if p == std::process::id() => true,
        Ok(p) => cfg!(target_os = "linux") && Path::new(&format!("/proc/{p}")).exists(),
        Err(_) => false,
    }
}

/// How an output folder's partitions are made. Every partition of a folder
/// must agree, or the folder would mix embeddings that do not compare.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Record {
    pub model: Option<String>,
    pub model_fingerprint: Option<String>,
    pub embed_dim: usize,
    #[serde(default)]
    pub image_size: Option<usize>,
    #[serde(default)]
    pub context_length: Option<usize>,
    pub input: String,
    pub input_format: String,
    pub partition_count: usize,
    pub enable_text: bool,
    pub enable_metadata: bool,
    /// The encoders' compute dtype; folders from before it was recorded
    /// were all f32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_dtype: Option<String>,
}

impl Record {
    /// The record of the output folder `dir`, if it has one.
    pub fn read(dir: &Path) -> Result<Option<Record>> {
        let path = dir.join(RECORD);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("{}: damaged", path.display()))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("{}: cannot read", path.display())),
        }
    }

    /// The model as an index manifest records it.
    pub fn model_info(&self) -> crate::index::ModelInfo {
        crate::index::ModelInfo {
            path: self.model.clone(),
            fingerprint: self.model_fingerprint.clone(),
            embed_dim: self.embed_dim,
            image_size: self.image_size,
            context_length: self.context_length,
            // The record predates families; its fingerprint tells them apart.
            family: Default::default(),
        }
    }
}

/// Checks `dir` against `record`: a folder made with another model, input
/// or partitioning is refused, naming the difference; a folder holding
/// clip-retrieval output that longclip did not write is refused too. A new
/// folder gets the record.
pub fn claim(dir: &Path, record: &Record) -> Result<()> {
    let path = dir.join(RECORD);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let found: Record = serde_json::from_slice(&bytes).with_context(|| format!("{}: damaged; remove it only if the folder's partitions can be thrown away", path.display()))?;
            check_same(dir, &found, record)
        }
        Err(_) => {
            if let Some(other) = foreign_output(dir) {
                bail!(
                    "{}: holds {} but no {RECORD}: it was not written by `longclip inference`; use an empty --output-folder",
                    dir.display(),
                    other.display()
                );
            }
            std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the output folder", dir.display()))?;
            // Concurrent partitions (Spark tasks) write the same bytes: the
            // last rename wins and nothing differs.
            crate::export::write_atomic(&path, &serde_json::to_vec_pretty(record)?)
        }
    }
}

fn check_same(dir: &Path, found: &Record, wanted: &Record) -> Result<()> {
    let d = dir.display();
    if found.model_fingerprint != wanted.model_fingerprint || found.embed_dim != wanted.embed_dim {
        bail!(
            "{d}: holds partitions made with another model ({}, fingerprint {}); this run uses {} (fingerprint {}). Use another --output-folder",
            found.model.as_deref().unwrap_or("?"),
            short(&found.model_fingerprint),
            wanted.model.as_deref().unwrap_or("?"),
            short(&wanted.model_fingerprint)
        );
    }
    if found.partition_count != wanted.partition_count {
        bail!("{d}: holds partitions of --partition-count {}; this run asks for {}. Use another --output-folder", found.partition_count, wanted.partition_count);
    }
    if found.input != wanted.input || found.input_format != wanted.input_format {
        bail!("{d}: holds partitions of --input '{}' ({}); this run reads '{}' ({}). Use another --output-folder", found.input, found.input_format, wanted.input, wanted.input_format);
    }
    let dtype = |r: &Record| r.compute_dtype.clone().unwrap_or_else(|| "f32".into());
    if dtype(found) != dtype(wanted) {
        bail!("{d}: holds partitions computed in {}; this run computes in {}. Use the same --dtype or another --output-folder", dtype(found), dtype(wanted));
    }
    if (found.enable_text, found.enable_metadata) != (wanted.enable_text, wanted.enable_metadata) {
        let flags = |r: &Record| format!("--enable-text {}, --enable-metadata {}", onoff(r.enable_text), onoff(r.enable_metadata));
        bail!("{d}: holds partitions made with {}; this run has {}. Use the same flags or another --output-folder", flags(found), flags(wanted));
    }
    Ok(())
}

fn onoff(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn short(f: &Option<String>) -> String {
    f.as_deref().map_or("unknown".into(), |s| s.chars().take(12).collect())
}

/// A file in one of the layout's folders, when the folder has no record.
fn foreign_output(dir: &Path) -> Option<PathBuf> {
    for sub in ["img_emb", "text_emb", "metadata", "stats"] {
        let Ok(listing) = std::fs::read_dir(dir.join(sub)) else { continue };
        for entry in listing.flatten() {
            if !entry.file_name().to_string_lossy().starts_with('.') {
                return Some(entry.path());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_numbers_pad_like_clip_retrieval() {
        // str(i).zfill(int(math.log10(n)) + 1)
        assert_eq!(pad_width(1), 1);
        assert_eq!(pad_width(9), 1);
        assert_eq!(pad_width(10), 2);
        assert_eq!(pad_width(99), 2);
        assert_eq!(pad_width(100), 3);
        let f = PartitionFiles::new(Path::new("out"), 7, 12);
        assert_eq!(f.img_emb, Path::new("out/img_emb/img_emb_07.npy"));
        assert_eq!(f.metadata, Path::new("out/metadata/metadata_07.parquet"));
        assert_eq!(f.stats, Path::new("out/stats/7.json"));
        assert_eq!(f.wip, Path::new("out/stats/wip_7.json"));
    }
}
