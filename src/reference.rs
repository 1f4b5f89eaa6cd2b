//! Published numbers (`eval/reference/*.csv`, compiled in) and which of
//! them belong beside a run. The published model is read off the
//! checkpoint's family and shapes (LongCLIP-B/L have 248 positions, CLIP
//! ViT-B/16 and ViT-L/14 77, FG-CLIP-B/-L are the FG-CLIP family at ViT-B/16
//! and ViT-L/14; GOAL has no comparable numbers), or named by the user.
//!
//! Every retrieval row carries its source and its protocol (which images,
//! captions and context it was measured with), and is keyed by the dataset
//! and split whose protocol it matches: the Long-CLIP paper's Flickr30k
//! numbers are `flickr30k`/`full` (the whole token file), the FG-CLIP
//! repository's are `flickr30k`/`karpathy` (the 1k test). FG-CLIP rows also
//! name the text path they were measured with. A number is only printed
//! beside a run of the same dataset, split and text path.

use anyhow::{bail, Result};
use serde::Serialize;

use crate::checkpoint::Config;
use crate::datasets::table::parse_csv;
use crate::family::{Family, TextPath};

const RETRIEVAL_CSV: &str = include_str!("../eval/reference/retrieval.csv");
const CLASSIFICATION_CSV: &str = include_str!("../eval/reference/classification.csv");

/// Names `--paper-model` takes.
pub const MODELS: [&str; 8] = [
    "CLIP ViT-B/16",
    "CLIP ViT-L/14",
    "LongCLIP-B",
    "LongCLIP-L",
    "FG-CLIP-B",
    "FG-CLIP-L",
    "LoTLIP ViT-B/16",
    "TULIP ViT-L/14",
];

/// The published model a checkpoint's architecture corresponds to, if any:
/// the family first (FG-CLIP-B/-L; GOAL: none), then the shapes.
pub fn model_family(c: &Config) -> Option<&'static str> {
    let vit = match (c.embed_dim, c.vision.width, c.vision.layers, c.vision.patch_size, c.vision.image_size) {
        (512, 768, 12, 16, 224) => "B",
        (768, 1024, 24, 14, 224) => "L",
        // FG-CLIP-L runs at 336 pixels.
        (768, 1024, 24, 14, 336) if c.family == Family::FgClip => "L",
        _ => return None,
    };
    match (c.family, c.text.context_length, vit) {
        (Family::FgClip, 248, "B") => Some("FG-CLIP-B"),
        (Family::FgClip, 248, _) => Some("FG-CLIP-L"),
        (Family::LongClip, 248, "B") => Some("LongCLIP-B"),
        (Family::LongClip, 248, _) => Some("LongCLIP-L"),
        (Family::LongClip, 77, "B") => Some("CLIP ViT-B/16"),
        (Family::LongClip, 77, _) => Some("CLIP ViT-L/14"),
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

/// Whose published numbers go beside a model's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PaperModel {
    /// Read off the checkpoint ([`model_family`]).
    #[default]
    FromCheckpoint,
    /// Named by the user (`--paper-model`).
    Named(&'static str),
    /// None (`--paper-model none`).
    Nothing,
}

impl PaperModel {
    /// `--paper-model NAME`; see [`parse_model`].
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match parse_model(name)? {
            Some(m) => PaperModel::Named(m),
            None => PaperModel::Nothing,
        })
    }

    /// The published model for a checkpoint with `config`.
    pub fn resolve(self, config: &Config) -> Option<&'static str> {
        match self {
            PaperModel::FromCheckpoint => model_family(config),
            PaperModel::Named(m) => Some(m),
            PaperModel::Nothing => None,
        }
    }
}

/// One published row: the source and the numbers it gives (None = not given).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Published {
    pub model: String,
    pub source: String,
    /// How it was measured (images, captions, context); empty where the
    /// table does not say.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// The text path it was measured with, for families with two.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text_path: Option<TextPath>,
    /// (metric name, value in percent), e.g. ("t2i_r1", 79.5).
    pub values: Vec<(String, Option<f64>)>,
}

impl Published {
    pub fn get(&self, metric: &str) -> Option<f64> {
        self.values.iter().find(|(m, _)| m == metric).and_then(|(_, v)| *v)
    }
}

/// Columns that describe a row rather than hold a number.
const DESCRIPTIVE: [&str; 3] = ["source", "protocol", "text_path"];

/// Rows of a compiled-in CSV whose columns named in `keys` hold the given
/// values; every column that is neither a key nor descriptive is a metric.
fn matching(csv: &str, keys: &[(&str, &str)]) -> Vec<Published> {
    let rows = parse_csv(csv).expect("compiled-in reference CSV is valid");
    let header = &rows[0].1;
    let column = |name: &str| header.iter().position(|h| h == name);
    let key_columns: Vec<(usize, &str)> = keys.iter().map(|(k, v)| (column(k).expect("key column exists"), *v)).collect();
    let metrics: Vec<usize> = (0..header.len())
        .filter(|&i| !DESCRIPTIVE.contains(&header[i].as_str()) && !keys.iter().any(|(k, _)| header[i] == *k))
        .collect();
    let text = |r: &[String], name: &str| column(name).map(|i| r[i].clone()).unwrap_or_default();
    rows[1..]
        .iter()
        .filter(|(_, r)| r.len() == header.len() && key_columns.iter().all(|&(i, v)| r[i] == v))
        .map(|(_, r)| Published {
            model: text(r, "model"),
            source: text(r, "source"),
            protocol: text(r, "protocol"),
            text_path: match text(r, "text_path").as_str() {
                "short" => Some(TextPath::Short),
                "long" => Some(TextPath::Long),
                _ => None,
            },
            values: metrics.iter().map(|&i| (header[i].clone(), r[i].trim().parse().ok())).collect(),
        })
        .collect()
}

/// Published retrieval numbers for a model on a dataset and split (every
/// text path).
pub fn retrieval(model: &str, dataset: &str, split: &str) -> Vec<Published> {
    matching(RETRIEVAL_CSV, &[("model", model), ("dataset", dataset), ("split", split)])
}

/// [`retrieval`] rows measured the way a run was: rows that name a text
/// path only when the run used it.
pub fn retrieval_for_run(model: &str, dataset: &str, split: &str, text_path: TextPath) -> Vec<Published> {
    retrieval(model, dataset, split).into_iter().filter(|p| p.text_path.is_none_or(|t| t == text_path)).collect()
}

/// Published zero-shot accuracy for a model on a dataset.
pub fn classification(model: &str, dataset: &str) -> Vec<Published> {
    matching(CLASSIFICATION_CSV, &[("model", model), ("dataset", dataset)])
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
        assert_eq!(parse_model("fg-clip-l").unwrap(), Some("FG-CLIP-L"));
    }

    #[test]
    fn the_family_decides_before_the_shapes() {
        let b = Config::preset("longclip-b").unwrap();
        let mut fg = b.clone();
        fg.family = Family::FgClip;
        assert_eq!(model_family(&fg), Some("FG-CLIP-B"));
        let mut fg_l = Config::preset("longclip-l").unwrap();
        fg_l.family = Family::FgClip;
        fg_l.vision.image_size = 336;
        assert_eq!(model_family(&fg_l), Some("FG-CLIP-L"));
        // Long-CLIP at 336 pixels (LongCLIP-L-336) has no published row here.
        let mut l336 = Config::preset("longclip-l").unwrap();
        l336.vision.image_size = 336;
        assert_eq!(model_family(&l336), None);
        let mut goal = b;
        goal.family = Family::Goal;
        assert_eq!(model_family(&goal), None);
        assert_eq!(PaperModel::FromCheckpoint.resolve(&goal), None);
        assert_eq!(PaperModel::parse("LongCLIP-B").unwrap().resolve(&goal), Some("LongCLIP-B"));
        assert_eq!(PaperModel::parse("none").unwrap(), PaperModel::Nothing);
    }

    #[test]
    fn frontier_rows_keep_their_protocol_apart() {
        // Flickr30k: Long-CLIP's paper measured the whole file, FG-CLIP's table the 1k test.
        let full = retrieval("LongCLIP-B", "flickr30k", "full");
        assert!(full.iter().all(|p| p.source.starts_with("Long-CLIP")), "{full:?}");
        let k = retrieval("LongCLIP-B", "flickr30k", "karpathy");
        assert_eq!(k.len(), 1);
        assert!(k[0].source.starts_with("FG-CLIP repository"));
        assert_eq!((k[0].get("i2t_r1"), k[0].get("t2i_r1")), (Some(85.9), Some(70.7)));
        let s = retrieval("FG-CLIP-L", "sharegpt4v", "1k");
        assert_eq!((s[0].get("i2t_r1"), s[0].get("t2i_r1"), s[0].text_path), (Some(97.4), Some(96.8), Some(TextPath::Long)));
        assert_eq!(retrieval("FG-CLIP-B", "dci", "fgclip")[0].get("t2i_r1"), Some(60.6));
        assert_eq!(retrieval("LoTLIP ViT-B/16", "dci", "lotlip")[0].get("i2t_r1"), Some(64.1));
        assert_eq!(retrieval("LoTLIP ViT-B/16", "iiw", "lotlip")[0].get("t2i_r1"), Some(92.7));
        assert_eq!(retrieval("LoTLIP ViT-B/16", "sharegpt4v", "10k")[0].get("t2i_r1"), Some(82.7));
        assert_eq!(retrieval("TULIP ViT-L/14", "urban1k", "test")[0].get("i2t_r1"), Some(90.1));
        assert!(retrieval("TULIP ViT-L/14", "coco", "val2017").is_empty());
        // FG-CLIP's COCO numbers are its short path's: none beside a long-path run.
        assert!(retrieval_for_run("FG-CLIP-B", "coco", "val2017", TextPath::Long).is_empty());
        assert_eq!(retrieval_for_run("FG-CLIP-B", "coco", "val2017", TextPath::Short).len(), 1);
        // Rows without a text path stand beside any run.
        assert_eq!(retrieval_for_run("LongCLIP-B", "coco", "val2017", TextPath::Long).len(), 3);
        assert!(retrieval("LongCLIP-B", "sharegpt4v", "1k").iter().all(|p| !p.protocol.is_empty()));
    }

    #[test]
    fn the_paper_numbers_are_carried_over() {
        let rows = retrieval("LongCLIP-B", "urban1k", "test");
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].get("i2t_r1"), rows[0].get("t2i_r1")), (Some(78.9), Some(79.5)));
        assert_eq!(rows[0].get("t2i_r5"), None);
        // The paper, the model zoo and the FG-CLIP table (the same val2017 protocol).
        assert_eq!(retrieval("LongCLIP-L", "coco", "val2017").len(), 3);
        assert!(retrieval("LongCLIP-B", "coco", "karpathy").is_empty());
        let c = classification("LongCLIP-B", "cifar100");
        assert_eq!(c[0].get("top1"), Some(69.3));
    }
}
