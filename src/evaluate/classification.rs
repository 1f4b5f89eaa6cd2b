//! Zero-shot classification: class embeddings from prompt templates, and
//! top-1 / top-5 accuracy.

use std::time::Instant;

use anyhow::{bail, ensure, Result};
use candle_core::Tensor;
use serde::Serialize;

use super::Encoder;
use crate::datasets::classes::ClassificationSet;
use crate::datasets::OnMissing;
use crate::metrics::{self, Accuracy};
use crate::model::l2_normalize;

/// Zero-shot class embeddings: each class's prompts embedded, normalized,
/// averaged and normalized again (the official `zeroshot_classifier`).
pub fn class_embeddings(enc: &mut Encoder, classes: &[String], templates: &[String], context_length: usize) -> Result<Tensor> {
    ensure!(!classes.is_empty(), "no class names");
    ensure!(!templates.is_empty(), "no prompt templates");
    for t in templates {
        ensure!(t.contains("{}"), "template '{t}' has no {{}} for the class name");
    }
    let prompts: Vec<String> = classes.iter().flat_map(|c| templates.iter().map(move |t| t.replacen("{}", c, 1))).collect();
    let (ids, _) = enc.tokenize(&prompts, context_length)?;
    let features = enc.embed_ids(&ids)?;
    let dim = features.dim(1)?;
    let mean = features.reshape((classes.len(), templates.len(), dim))?.mean(1)?;
    l2_normalize(&mean)
}

/// What `eval` reports for a classification set.
#[derive(Clone, Debug, Serialize)]
pub struct ClassificationReport {
    pub n_images: usize,
    pub n_classes: usize,
    pub accuracy: Accuracy,
    pub skipped: Vec<(String, String)>,
}

pub fn evaluate_classification(
    enc: &mut Encoder,
    set: &ClassificationSet,
    templates: &[String],
    on_missing: OnMissing,
    context_length: usize,
) -> Result<ClassificationReport> {
    let classes = class_embeddings(enc, &set.classes, templates, context_length)?;
    let out = enc.embed_images(&set.images)?;
    let skipped: Vec<(String, String)> = out.failed.iter().map(|(i, why)| (set.images[*i].name(), why.clone())).collect();
    if on_missing == OnMissing::Fail && !skipped.is_empty() {
        let list: Vec<String> = skipped.iter().take(10).map(|(n, w)| format!("  {}: {}", crate::term::escape_for_terminal(n), crate::term::escape_for_terminal(w))).collect();
        bail!("{} images are unreadable:\n{}\n(use --on-missing skip to evaluate without them)", skipped.len(), list.join("\n"));
    }
    let labels: Vec<usize> = out.kept.iter().map(|&i| set.labels[i]).collect();
    let t = Instant::now();
    let ranks = metrics::classification_ranks(&out.features, &classes, &labels)?;
    enc.timings.search += t.elapsed().as_secs_f64();
    Ok(ClassificationReport { n_images: labels.len(), n_classes: set.classes.len(), accuracy: metrics::accuracy(&ranks), skipped })
}

/// Indices of images that could not be read, with the reason.
pub type Failed = Vec<(usize, String)>;

/// One image's best labels, most probable first.
#[derive(Clone, Debug, Serialize)]
pub struct ImageLabels {
    /// The image path as given.
    pub image: String,
    pub labels: Vec<LabelProbability>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LabelProbability {
    pub label: String,
    /// Softmax over every label of the logits (cosine x the model's logit scale).
    pub probability: f32,
}

/// `classify`: the `top` most probable of `labels` for each image (an
/// ensemble of `templates`), and the images that could not be read.
/// Ties go to the earlier label, as in the metrics.
pub fn classify_images(
    enc: &mut Encoder,
    images: &[std::path::PathBuf],
    labels: &[String],
    templates: &[String],
    top: usize,
) -> Result<(Vec<ImageLabels>, Failed)> {
    let classes = class_embeddings(enc, labels, templates, enc.context_length())?;
    let refs: Vec<crate::datasets::ImageRef> = images.iter().cloned().map(crate::datasets::ImageRef::File).collect();
    let out = enc.embed_images(&refs)?;
    let logits = (out.features.matmul(&classes.t()?)? * (enc.model.logit_scale as f64).exp())?;
    let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_device(&candle_core::Device::Cpu)?.to_vec2::<f32>()?;
    let top = top.clamp(1, labels.len());
    let mut results = Vec::with_capacity(probs.len());
    for (&i, p) in out.kept.iter().zip(&probs) {
        let mut order: Vec<usize> = (0..labels.len()).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
        let best = order[..top].iter().map(|&c| LabelProbability { label: labels[c].clone(), probability: p[c] }).collect();
        results.push(ImageLabels { image: images[i].display().to_string(), labels: best });
    }
    Ok((results, out.failed))
}
