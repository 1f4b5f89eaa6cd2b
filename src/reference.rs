//! Published numbers (`eval/reference/*.csv`, compiled in) and which of
//! them belong beside a run: the model family is read off the checkpoint's
//! shapes (LongCLIP-B/L have 248 positions, CLIP ViT-B/16 and ViT-L/14 77),
//! or named by the user.

use anyhow::{bail, Result};
use serde::Serialize;

use crate::checkpoint::Config;
use crate::datasets::table::parse_csv;

const RETRIEVAL_CSV: &str = include_str!("../eval/reference/retrieval.csv");
const CLASSIFICATION_CSV: &str = include_str!("../eval/reference/classification.csv");

pub const MODELS: [&str; 4] = ["CLIP ViT-B/16", "CLIP ViT-L/14", "LongCLIP-B", "LongCLIP-L"];

/// The published model a checkpoint's architecture corresponds to, if any.
pub fn model_family(c: &Config) -> Option<&'static str> {
    let vit = match (c.embed_dim, c.vision.width, c.vision.layers, c.vision.patch_size, c.vision.image_size) {
        (512, 768, 12, 16, 224) => "B",
        (768, 1024, 24, 14, 224) => "L",
        _ => return None,
    };
    match (c.text.context_length, vit) {
        (248, "B") => Some("LongCLIP-B"),
        (248, _) => Some("LongCLIP-L"),
        (77, "B") => Some("CLIP ViT-B/16"),
        (77, _) => Some("CLIP ViT-L/14"),
        _ => None,
    }
}

/// `--paper-model`: a name from `MODELS` (case and spaces ignored) or "none".
pub fn parse_model(name: &str) -> Result<Option<&'static str>> {
    let squash = |s: &str| s.to_lowercase().replace([' ', '-', '/'], "");
    if squash(name) == "none" {
        return Ok(None);
    }
    match MODELS.iter().find(|m| squash(m) == squash(name)) {
        Some(m) => Ok(Some(m)),
        None => bail!("unknown model '{name}' for --paper-model (expected one of {}, or none)", MODELS.join(", ")),
    }
}

/// One published row: the source and the numbers it gives (None = not given).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Published {
    pub model: String,
    pub source: String,
    /// (metric name, value in percent), e.g. ("t2i_r1", 79.5).
    pub values: Vec<(String, Option<f64>)>,
}

impl Published {
    pub fn get(&self, metric: &str) -> Option<f64> {
        self.values.iter().find(|(m, _)| m == metric).and_then(|(_, v)| *v)
    }
}

/// Rows of a compiled-in CSV whose leading columns equal `keys`.
fn matching(csv: &str, keys: &[&str]) -> Vec<Published> {
    let rows = parse_csv(csv).expect("compiled-in reference CSV is valid");
    let header = &rows[0].1;
    let n = keys.len();
    rows[1..]
        .iter()
        .filter(|(_, r)| r.len() == header.len() && r[..n].iter().zip(keys).all(|(a, b)| a == b))
        .map(|(_, r)| Published {
            model: r[0].clone(),
            source: r[n].clone(),
            values: header[n + 1..].iter().zip(&r[n + 1..]).map(|(h, v)| (h.clone(), v.trim().parse().ok())).collect(),
        })
        .collect()
}

/// Published retrieval numbers for a model on a dataset and split.
pub fn retrieval(model: &str, dataset: &str, split: &str) -> Vec<Published> {
    matching(RETRIEVAL_CSV, &[model, dataset, split])
}

/// Published zero-shot accuracy for a model on a dataset.
pub fn classification(model: &str, dataset: &str) -> Vec<Published> {
    matching(CLASSIFICATION_CSV, &[model, dataset])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Config;

    #[test]
    fn families_come_from_shapes() {
        let b = Config::preset("longclip-b").unwrap();
        assert_eq!(model_family(&b), Some("LongCLIP-B"));
        let mut clip = b.clone();
        clip.text.context_length = 77;
        assert_eq!(model_family(&clip), Some("CLIP ViT-B/16"));
        assert_eq!(model_family(&Config::preset("longclip-l").unwrap()), Some("LongCLIP-L"));
        let mut tiny = b;
        tiny.vision.image_size = 64;
        assert_eq!(model_family(&tiny), None);
        assert_eq!(parse_model("longclip-b").unwrap(), Some("LongCLIP-B"));
        assert_eq!(parse_model("clip vit-l/14").unwrap(), Some("CLIP ViT-L/14"));
        assert_eq!(parse_model("none").unwrap(), None);
        assert!(parse_model("gpt").is_err());
    }

    #[test]
    fn the_paper_numbers_are_carried_over() {
        let rows = retrieval("LongCLIP-B", "urban1k", "test");
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].get("i2t_r1"), rows[0].get("t2i_r1")), (Some(78.9), Some(79.5)));
        assert_eq!(rows[0].get("t2i_r5"), None);
        assert_eq!(retrieval("LongCLIP-L", "coco", "val2017").len(), 2);
        assert!(retrieval("LongCLIP-B", "coco", "karpathy").is_empty());
        let c = classification("LongCLIP-B", "cifar100");
        assert_eq!(c[0].get("top1"), Some(69.3));
    }
}
