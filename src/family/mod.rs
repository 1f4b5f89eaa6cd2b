//! Model families: everything that makes a checkpoint of one family compute
//! what its official code computes, in one description per family.
//!
//! A family fixes, beyond the tensor shapes: the tokenizer rules, the image
//! preprocessing, which position table and which text projection each text
//! path uses, and where the text is pooled. [`Rules`] is that description;
//! [`longclip`], [`fgclip`] and [`goal`] each implement it, and the rest of
//! the crate (model, embed, eval, index, search) asks [`Family::rules`]
//! instead of branching on the family itself.
//!
//! The family is found from the checkpoint's keys when it is loaded
//! ([`detect`]), stored in its [`Config`] (and so in our safetensors
//! metadata), hashed into its fingerprint when it is not Long-CLIP (so the
//! embedding cache keeps families apart), and recorded in index manifests.

pub mod fgclip;
pub mod goal;
pub mod hf;
pub mod longclip;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use anyhow::{bail, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, Config};
use crate::preprocess::Transform;
use crate::tokenizer::Encoding;

/// The model families longclip runs exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Long-CLIP (and OpenAI CLIP, the 77-position case): OpenAI's tokenizer
    /// with ftfy, torchvision's resize + crop, one merged position table.
    #[default]
    #[serde(alias = "Long-CLIP", alias = "long-clip")]
    LongClip,
    /// FG-CLIP v1 (ICML 2025): HF tokenizer, square resize, a 77-row short
    /// path and a 248-row long path with its own projection.
    // Reports spell it as `name()` does ("FG-CLIP"): read both.
    #[serde(alias = "FG-CLIP", alias = "fg-clip")]
    FgClip,
    /// GOAL (CVPR 2025): an HF `CLIPModel` with one 248-row table, HF
    /// tokenizer and HF `CLIPImageProcessor`.
    #[serde(alias = "GOAL")]
    Goal,
}

/// Which of a family's text encoders runs: FG-CLIP has two (`--text-path`),
/// the others only the long one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TextPath {
    /// 77 positions (FG-CLIP: `position_embedding`, `text_projection`).
    Short,
    /// The long table (248 rows for the released models).
    Long,
}

impl fmt::Display for TextPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TextPath::Short => "short",
            TextPath::Long => "long",
        })
    }
}

/// Where the text features are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The first EOT (49407): Long-CLIP's `text.argmax(-1)`, FG-CLIP's first
    /// `input_ids == eos_token_id` and GOAL's legacy `argmax(input_ids)` all
    /// land there on unpadded (or 49407-padded) ids.
    FirstEot,
}

/// What a text encoder adds and multiplies for one text path.
pub struct TextTables {
    /// Position rows added to the token embeddings, [L, W], f32.
    pub positions: Tensor,
    /// Checkpoint key (official names) of the projection [W, E].
    pub projection: &'static str,
}

/// One family's description. Implementations: [`longclip::LongClipRules`],
/// [`fgclip::FgClipRules`], [`goal::GoalRules`].
pub trait Rules: Sync {
    /// Human name, e.g. "FG-CLIP".
    fn name(&self) -> &'static str;
    /// Where the tokenizer and preprocessing rules come from (for `info`).
    fn source(&self) -> &'static str;
    /// Token ids of each text (SOT … EOT, unpadded), cut to `context_length`
    /// with EOT kept last.
    fn tokenize(&self, texts: &[String], context_length: usize) -> Result<Vec<Encoding>>;
    /// The image transform at `size` pixels.
    fn transform(&self, size: usize) -> Transform;
    /// Text paths the family has; the first is the default.
    fn text_paths(&self) -> &'static [TextPath] {
        &[TextPath::Long]
    }
    /// The model and its position tables in words, for `info`.
    fn describe_tables(&self, ckpt: &Checkpoint) -> String;
    /// Position table and projection of `path`.
    fn text_tables(&self, ckpt: &Checkpoint, path: TextPath) -> Result<TextTables>;
    /// Tensors beyond the CLIP/Long-CLIP ones (official names), with shapes.
    fn extra_shapes(&self, _config: &Config) -> Vec<(String, Vec<usize>)> {
        Vec::new()
    }
    fn pooling(&self) -> Pooling {
        Pooling::FirstEot
    }
    /// The text position tables and projections of a Hugging Face export,
    /// under the names the family's own code loads (the inverse of
    /// [`prepare`] and the common HF renames): one merged table and
    /// `text_projection` [E, W] unless the family has keys of its own.
    fn hf_text_tensors(&self, ckpt: &Checkpoint) -> Result<Vec<(String, Tensor)>> {
        Ok(vec![
            (goal::POSITION_KEY.to_string(), ckpt.text_positions()?),
            ("text_projection.weight".to_string(), ckpt.get("text_projection")?.t()?.contiguous()?),
        ])
    }
    /// `architectures[0]` and the text `max_position_embeddings` of an HF
    /// export's config.json (FG-CLIP's says 77: its 248 rows are hard-coded).
    fn hf_model(&self, config: &Config) -> (&'static str, usize) {
        ("CLIPModel", config.text.context_length)
    }
    /// Tensors the model does not read that a loaded checkpoint still keeps,
    /// so a converted file is complete (FG-CLIP's training-only logit scales).
    fn carried_keys(&self) -> &'static [&'static str] {
        &[]
    }
}

impl Family {
    pub fn rules(self) -> &'static dyn Rules {
        match self {
            Family::LongClip => &longclip::LongClipRules,
            Family::FgClip => &fgclip::FgClipRules,
            Family::Goal => &goal::GoalRules,
        }
    }

    pub fn name(self) -> &'static str {
        self.rules().name()
    }

    /// For serde's `skip_serializing_if`: Long-CLIP is what a missing field means.
    pub fn is_long_clip(&self) -> bool {
        *self == Family::LongClip
    }

    /// The family's default text path (FG-CLIP: long, as its long-caption evals).
    pub fn default_text_path(self) -> TextPath {
        self.rules().text_paths()[0]
    }

    /// `path`, or the default; an error when the family has no such path.
    pub fn text_path(self, path: Option<TextPath>) -> Result<TextPath> {
        let Some(path) = path else {
            return Ok(self.default_text_path());
        };
        if !self.rules().text_paths().contains(&path) {
            bail!("{} has no {path} text path (--text-path short is FG-CLIP's 77-position encoder)", self.name());
        }
        Ok(path)
    }

    /// Positions of `path` for a checkpoint of this family with `config`.
    pub fn context_length(self, config: &Config, path: TextPath) -> usize {
        match path {
            TextPath::Short => fgclip::SHORT_POSITIONS.min(config.text.context_length),
            TextPath::Long => config.text.context_length,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a checkpoint was stored, as far as [`detect`] cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// HF `CLIPModel` names in a `torch.save` zip (`.pth`, GOAL's way).
    HfTorchZip,
    /// HF names in a model directory or a safetensors file.
    HfFiles,
    /// Official (OpenAI / Long-CLIP) names.
    Official,
}

/// The family of a state dict, from its raw keys (before renaming).
///
/// FG-CLIP: any of its three extra keys; all of them, and its short table
/// and projection, must then be there. Long-CLIP: `positional_embedding_res`.
/// GOAL: HF names in a torch zip with a text table of more than 77 rows.
/// Anything else loads as Long-CLIP (a CLIP is its 77-position case).
///
/// Errors, naming the key: a checkpoint with keys of two families, an
/// FG-CLIP table without its projection (or the reverse).
pub fn detect(raw: &HashMap<String, Tensor>, storage: Storage, path: &Path) -> Result<Family> {
    let fg = fgclip::markers(raw);
    let long = raw.keys().find(|k| k.as_str() == longclip::RES_KEY || k.ends_with(&format!(".{}", longclip::RES_KEY)));
    if let (Some(f), Some(l)) = (fg.first(), long) {
        bail!(
            "{}: mixes model families: '{f}' is FG-CLIP's, '{l}' is Long-CLIP's; a checkpoint is one model",
            path.display()
        );
    }
    if !fg.is_empty() {
        fgclip::check_complete(raw, path)?;
        return Ok(Family::FgClip);
    }
    if long.is_some() {
        if let Some(hf) = raw.keys().find(|k| k.starts_with("text_model.embeddings.")) {
            bail!(
                "{}: mixes model families: '{hf}' is an HF CLIPModel key (FG-CLIP, GOAL), '{}' is Long-CLIP's",
                path.display(),
                longclip::RES_KEY
            );
        }
        return Ok(Family::LongClip);
    }
    if storage == Storage::HfTorchZip && goal::is_goal(raw) {
        return Ok(Family::Goal);
    }
    Ok(Family::LongClip)
}

/// The family of a state dict when its file names one (`longclip_family` in
/// an HF directory's config.json, written by `convert`): GOAL's tensors are
/// those of a Long-CLIP HF port, so only the record tells them apart.
///
/// Errors, naming the file: a recorded family the tensors cannot be (an
/// FG-CLIP record without FG-CLIP's keys, or the reverse; GOAL without an HF
/// text table of more than 77 rows).
pub fn resolve(raw: &HashMap<String, Tensor>, storage: Storage, path: &Path, recorded: Option<Family>) -> Result<Family> {
    let detected = detect(raw, storage, path)?;
    let Some(recorded) = recorded else {
        return Ok(detected);
    };
    let fits = match recorded {
        Family::FgClip => detected == Family::FgClip,
        Family::Goal => detected != Family::FgClip && goal::is_goal(raw),
        Family::LongClip => detected != Family::FgClip,
    };
    if !fits {
        bail!(
            "{}: its config.json records the {recorded} family, but the tensors are not a {recorded} checkpoint (they read as {detected})",
            path.display()
        );
    }
    Ok(recorded)
}

/// The family official-named tensors (our safetensors) can be: FG-CLIP
/// with its short table or projection (`positional_embedding_short`,
/// `text_projection_short`), Long-CLIP with `positional_embedding_res`,
/// GOAL with one `positional_embedding` of more than 77 rows, else a
/// 77-position CLIP (Long-CLIP's case).
fn detect_official(raw: &HashMap<String, Tensor>) -> Family {
    let rows = raw.get("positional_embedding").and_then(|t| t.dims().first().copied()).unwrap_or(0);
    if raw.contains_key(fgclip::SHORT_POSITIONS_NAME) || raw.contains_key(fgclip::SHORT_PROJECTION_NAME) {
        Family::FgClip
    } else if raw.contains_key(longclip::RES_KEY) {
        Family::LongClip
    } else if rows > 77 {
        Family::Goal
    } else {
        Family::LongClip
    }
}

/// Checks the family our safetensors metadata (`longclip.config`) records
/// against its official-named tensors, as [`resolve`] checks an HF
/// config.json: FG-CLIP needs its short path, GOAL one table of more than 77
/// rows and no `positional_embedding_res`; Long-CLIP takes any but FG-CLIP's
/// (a GOAL relabelled Long-CLIP is the same tensors read another way).
///
/// Errors, naming the file and the metadata key, when they cannot agree.
pub fn check_recorded_official(raw: &HashMap<String, Tensor>, path: &Path, recorded: Family) -> Result<()> {
    let detected = detect_official(raw);
    let fits = match recorded {
        Family::LongClip => detected != Family::FgClip,
        _ => detected == recorded,
    };
    if !fits {
        bail!(
            "{}: its '{}' metadata records the {recorded} family, but the tensors are not a {recorded} checkpoint (they read as {detected})",
            path.display(),
            crate::checkpoint::CONFIG_METADATA_KEY
        );
    }
    Ok(())
}

/// The family's renames of its own keys to the official names the model
/// reads, before the common HF renames (only FG-CLIP has any).
pub fn prepare(family: Family, raw: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    match family {
        Family::FgClip => fgclip::prepare(raw),
        _ => Ok(raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn keys(names: &[&str]) -> HashMap<String, Tensor> {
        let t = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
        names.iter().map(|k| (k.to_string(), t.clone())).collect()
    }

    #[test]
    fn fg_clip_table_without_its_projection_names_the_key() {
        let raw = keys(&[
            "text_model.embeddings.position_embedding.weight",
            "text_model.embeddings.position_embedding_ori.weight",
            "text_model.embeddings.position_embedding_res.weight",
            "text_projection.weight",
        ]);
        let err = detect(&raw, Storage::HfFiles, Path::new("m")).unwrap_err().to_string();
        assert!(err.contains("text_filip_projection.weight"), "{err}");
    }

    #[test]
    fn mixed_families_name_both_keys() {
        let raw = keys(&["text_filip_projection.weight", "positional_embedding_res"]);
        let err = detect(&raw, Storage::HfFiles, Path::new("m")).unwrap_err().to_string();
        assert!(err.contains("mixes model families") && err.contains("positional_embedding_res"), "{err}");
        let raw = keys(&["text_model.embeddings.position_embedding.weight", "positional_embedding_res"]);
        let err = detect(&raw, Storage::Official, Path::new("m")).unwrap_err().to_string();
        assert!(err.contains("text_model.embeddings.position_embedding.weight"), "{err}");
    }

    #[test]
    fn a_recorded_family_must_fit_the_tensors() {
        let table = |rows: usize| -> HashMap<String, Tensor> {
            let t = Tensor::zeros((rows, 2), DType::F32, &Device::Cpu).unwrap();
            [(goal::POSITION_KEY.to_string(), t)].into_iter().collect()
        };
        let m = Path::new("m");
        assert_eq!(resolve(&table(248), Storage::HfFiles, m, None).unwrap(), Family::LongClip, "a port");
        assert_eq!(resolve(&table(248), Storage::HfFiles, m, Some(Family::Goal)).unwrap(), Family::Goal);
        assert_eq!(resolve(&table(248), Storage::HfFiles, m, Some(Family::LongClip)).unwrap(), Family::LongClip);
        let err = resolve(&table(77), Storage::HfFiles, m, Some(Family::Goal)).unwrap_err().to_string();
        assert!(err.contains("records the GOAL family"), "{err}");
        let err = resolve(&table(248), Storage::HfFiles, m, Some(Family::FgClip)).unwrap_err().to_string();
        assert!(err.contains("records the FG-CLIP family"), "{err}");
    }

    #[test]
    fn text_paths_per_family() {
        assert_eq!(Family::FgClip.text_path(None).unwrap(), TextPath::Long);
        assert_eq!(Family::FgClip.text_path(Some(TextPath::Short)).unwrap(), TextPath::Short);
        assert!(Family::Goal.text_path(Some(TextPath::Short)).is_err());
        assert_eq!(Family::LongClip.text_path(Some(TextPath::Long)).unwrap(), TextPath::Long);
    }

    #[test]
    fn old_configs_read_as_long_clip() {
        for spelling in ["\"fg_clip\"", "\"FG-CLIP\""] {
            let f: Family = serde_json::from_str(spelling).unwrap();
            assert_eq!(f, Family::FgClip, "{spelling}");
        }
        assert_eq!(serde_json::from_str::<Family>("\"GOAL\"").unwrap(), Family::Goal);
        assert_eq!(Family::default(), Family::LongClip);
    }
}
