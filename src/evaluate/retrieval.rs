//! Retrieval R@K for one model on a dataset: what `eval` reports.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::{embed_dataset_images, Encoder};
use crate::datasets::{Dataset, OnMissing};
use crate::metrics::{self, RetrievalScores};

/// What `eval` reports for a retrieval set.
#[derive(Clone, Debug, Serialize)]
pub struct RetrievalReport {
    pub n_images: usize,
    pub n_texts: usize,
    pub scores: RetrievalScores,
    /// The lowest and highest numbers another order of exact ties would give.
    pub tie_range: Option<(RetrievalScores, RetrievalScores)>,
    /// Captions longer than the context, cut to it.
    pub truncated: usize,
    pub skipped: Vec<(PathBuf, String)>,
}

pub fn evaluate_retrieval(enc: &mut Encoder, data: &Dataset, on_missing: OnMissing, context_length: usize) -> Result<RetrievalReport> {
    let images = embed_dataset_images(enc, data, on_missing)?;
    let (ids, truncated) = enc.tokenize(&images.data.texts(), context_length)?;
    let texts = enc.embed_ids(&ids)?;
    let t = Instant::now();
    let ranks = metrics::retrieval_ranks(&images.features, &texts, &images.data.text_image())?;
    enc.timings.search += t.elapsed().as_secs_f64();
    Ok(RetrievalReport {
        n_images: images.data.images.len(),
        n_texts: ids.len(),
        scores: ranks.scores(),
        tie_range: ranks.tie_range(),
        truncated,
        skipped: images.skipped,
    })
}
