//! `stats/{i}.json`: clip-retrieval's per-partition counters (the keys its
//! `LoggerReader` sums), plus what longclip adds: the model, the skipped
//! samples with reasons, and throughput.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

/// At most this many skipped samples are listed by name; all are counted.
pub const LISTED_SKIPS: usize = 1000;

/// One skipped sample.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Skip {
    /// The sample key (webdataset) or image path (files).
    pub key: String,
    /// The shard it came from (webdataset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// One of the [`reasons`] kinds.
    pub reason: String,
    /// The error in full.
    pub detail: String,
}

/// The kinds of skip counted in `skipped`.
pub mod reasons {
    pub const NO_IMAGE: &str = "no image";
    pub const BAD_IMAGE: &str = "image cannot be decoded";
    pub const UNREADABLE: &str = "file cannot be read";
    pub const NO_CAPTION: &str = "no caption (.txt)";
    pub const CAPTION_NOT_UTF8: &str = "caption is not UTF-8";
    pub const NO_METADATA: &str = "no metadata (.json)";
    pub const BAD_METADATA: &str = ".json is not a JSON object";
    pub const INVALID_JSON: &str = ".json is not valid JSON";
    pub const DUPLICATE_KEY: &str = "duplicate key";
    pub const TRUNCATED_TAR: &str = "sample cut off by a broken tar";
}

/// A partition's stats, as written to `stats/{i}.json`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Stats {
    // clip-retrieval's keys (summed over batches; seconds).
    pub sample_count: usize,
    pub start_time: f64,
    pub end_time: f64,
    pub read_duration: f64,
    pub inference_duration: f64,
    pub write_duration: f64,
    pub total_duration: f64,
    // longclip's.
    pub partition: usize,
    pub partition_count: usize,
    pub text_count: usize,
    pub truncated_captions: usize,
    pub shards: usize,
    pub shard_errors: Vec<String>,
    pub skipped_count: usize,
    pub skipped: BTreeMap<String, usize>,
    pub skipped_samples: Vec<Skip>,
    pub model: Option<String>,
    pub model_fingerprint: Option<String>,
    pub device: String,
    /// What the encoders computed in (`f32`, `bf16`, `int8`); empty in
    /// stats written before it was recorded.
    #[serde(default)]
    pub compute_dtype: String,
    pub images_per_second: f64,
    /// False in `wip_{i}.json`.
    pub finished: bool,
}

impl Stats {
    /// Counts a skip (and lists it while under [`LISTED_SKIPS`]).
    pub fn skip(&mut self, skip: Skip) {
        self.skipped_count += 1;
        *self.skipped.entry(skip.reason.clone()).or_default() += 1;
        if self.skipped_samples.len() < LISTED_SKIPS {
            self.skipped_samples.push(skip);
        }
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        crate::export::write_atomic(path, &serde_json::to_vec_pretty(self)?)
    }

    /// A finished partition's stats, or None when absent or unreadable.
    pub fn read_finished(path: &Path) -> Option<Stats> {
        let stats: Stats = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        stats.finished.then_some(stats)
    }
}

/// Seconds since the Unix epoch (clip-retrieval's `time.time()`).
pub fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
