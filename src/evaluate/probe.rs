//! The effective-length probe: R@K with captions cut to N tokens or words,
//! and what a perfect reader of the cut captions could reach.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{ensure, Result};
use candle_core::Tensor;
use serde::Serialize;

use super::{embed_dataset_images, tokenize, EmbeddedImages, Encoder};
use crate::datasets::{Dataset, OnMissing};
use crate::metrics::{self, RetrievalScores};
use crate::tokenizer::truncate_words;

/// How the probe cuts captions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// `tokenize(caption, context_length=N, truncate=True)`: N tokens with SOT and EOT.
    Tokens,
    /// `" ".join(caption.split(" ")[:N])`, then the model's full context.
    Words,
}

/// Turns texts into token ids at a context length (a family's tokenizer).
pub type TokenizeFn<'f> = &'f dyn Fn(&[String], usize) -> Result<Vec<Vec<u32>>>;

/// Long-CLIP's token ids of every text cut to `length` units.
pub fn truncated_ids(texts: &[String], length: usize, unit: Unit, context_length: usize) -> Result<Vec<Vec<u32>>> {
    truncated_ids_with(texts, length, unit, context_length, &|t, c| Ok(tokenize(t, c)?.0))
}

/// Token ids of every text cut to `length` units by `tokenize` (which must
/// truncate as `tokenize(..., truncate=True)`: the first ids, EOT last).
pub fn truncated_ids_with(texts: &[String], length: usize, unit: Unit, context_length: usize, tokenize: TokenizeFn) -> Result<Vec<Vec<u32>>> {
    match unit {
        Unit::Tokens => {
            ensure!(length >= 2, "a token length must be at least 2 (SOT and EOT), got {length}");
            tokenize(texts, length.min(context_length))
        }
        Unit::Words => {
            let cut: Vec<String> = texts.iter().map(|t| truncate_words(t, length)).collect();
            tokenize(&cut, context_length)
        }
    }
}

/// One probe length.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProbeRow {
    pub length: usize,
    #[serde(flatten)]
    pub scores: RetrievalScores,
    /// The lowest and highest numbers another order of exact ties would give.
    #[serde(skip)]
    pub tie_range: Option<(RetrievalScores, RetrievalScores)>,
    /// What a perfect reader of the cut captions could reach.
    #[serde(flatten)]
    pub ceiling: ReaderCeiling,
}

/// The T2I R@1/5/10 (percent) that a perfect reader of the cut captions
/// could reach: a cut caption whose ids equal the cut ids of captions of m
/// different images cannot tell those m images apart, so the best any model
/// can expect is min(K, m) / m for it (the true image placed uniformly
/// among the m). With whole, distinct captions it is 100. T2I only: for
/// I2T with several captions an image, "perfect" is not one number.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ReaderCeiling {
    #[serde(rename = "ceiling_t2i_r1")]
    pub t2i_r1: f64,
    #[serde(rename = "ceiling_t2i_r5")]
    pub t2i_r5: f64,
    #[serde(rename = "ceiling_t2i_r10")]
    pub t2i_r10: f64,
}

/// [`ReaderCeiling`] of the cut captions `ids` (one row a text, SOT..EOT)
/// whose images are `text_image`.
pub fn reader_ceiling(ids: &[Vec<u32>], text_image: &[usize]) -> ReaderCeiling {
    let mut images_of: HashMap<&[u32], std::collections::BTreeSet<usize>> = HashMap::new();
    for (t, &image) in ids.iter().zip(text_image) {
        images_of.entry(t.as_slice()).or_default().insert(image);
    }
    let mut sums = [0.0f64; 3];
    for t in ids {
        let m = images_of[t.as_slice()].len() as f64;
        for (sum, k) in sums.iter_mut().zip([1.0f64, 5.0, 10.0]) {
            *sum += k.min(m) / m;
        }
    }
    // Rounded to 1e-9: a sum of many 1/m carries float noise (85.99999999999999).
    let percent = |sum: f64| (1e11 * sum / ids.len().max(1) as f64).round() / 1e9;
    ReaderCeiling { t2i_r1: percent(sums[0]), t2i_r5: percent(sums[1]), t2i_r10: percent(sums[2]) }
}

/// R@K at each length: `encode` turns token ids into normalized features.
pub fn probe_rows(
    texts: &[String],
    text_image: &[usize],
    image_features: &Tensor,
    lengths: &[usize],
    unit: Unit,
    context_length: usize,
    encode: &mut dyn FnMut(&[Vec<u32>]) -> Result<Tensor>,
) -> Result<Vec<ProbeRow>> {
    let long_clip = |t: &[String], c: usize| Ok(tokenize(t, c)?.0);
    Ok(probe_rows_timed(texts, text_image, image_features, lengths, unit, context_length, &long_clip, encode)?.0)
}

/// `probe_rows`, and the seconds spent ranking.
fn probe_rows_timed(
    texts: &[String],
    text_image: &[usize],
    image_features: &Tensor,
    lengths: &[usize],
    unit: Unit,
    context_length: usize,
    tokenize: TokenizeFn,
    encode: &mut dyn FnMut(&[Vec<u32>]) -> Result<Tensor>,
) -> Result<(Vec<ProbeRow>, f64)> {
    let mut rows = Vec::with_capacity(lengths.len());
    let mut search = 0.0;
    for &length in lengths {
        let ids = truncated_ids_with(texts, length, unit, context_length, tokenize)?;
        let features = encode(&ids)?;
        let t = Instant::now();
        let ranks = metrics::retrieval_ranks(image_features, &features, text_image)?;
        search += t.elapsed().as_secs_f64();
        let ceiling = reader_ceiling(&ids, text_image);
        rows.push(ProbeRow { length, scores: ranks.scores(), tie_range: ranks.tie_range(), ceiling });
    }
    Ok((rows, search))
}

/// The probe for one model on a dataset; also returns the images used.
pub fn probe(
    enc: &mut Encoder,
    data: &Dataset,
    lengths: &[usize],
    unit: Unit,
    on_missing: OnMissing,
) -> Result<(Vec<ProbeRow>, EmbeddedImages)> {
    let images = embed_dataset_images(enc, data, on_missing)?;
    let texts = images.data.texts();
    let text_image = images.data.text_image();
    let context = enc.context_length();
    // The model's family cuts its captions (FG-CLIP and GOAL: HF's tokenizer).
    let model = enc.model;
    let family_tokenize = |t: &[String], c: usize| -> Result<Vec<Vec<u32>>> {
        Ok(model.tokenize(t, c)?.into_iter().map(|e| e.ids).collect())
    };
    let (rows, search) = probe_rows_timed(
        &texts,
        &text_image,
        &images.features,
        lengths,
        unit,
        context,
        &family_tokenize,
        &mut |ids| enc.embed_ids(ids),
    )?;
    enc.timings.search += search;
    Ok((rows, images))
}

