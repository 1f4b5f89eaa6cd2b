//! FG-CLIP v1 (360CVGroup/FG-CLIP, tag v1.0 = 0fcea590,
//! `fgclip/model/clip_strc/fgclip.py` and `modeling_clip.py`).
//!
//! * Checkpoint: an HF directory (`config.json` + `model.safetensors`) with
//!   `CLIPModel` names plus three text position tables and two text
//!   projections:
//!   `text_model.embeddings.position_embedding` [77, W] (short path),
//!   `…position_embedding_ori` and `…position_embedding_res` [248, W] (long
//!   path, rows < 20 from ori, rows ≥ 20 from res: `CLIPTextEmbeddings`'
//!   `mask1[:20]` / `mask2[20:]`), `text_projection` [E, W] (short) and
//!   `text_filip_projection` [E, W] (long). The long path is Long-CLIP's
//!   arithmetic exactly, so ori/res load as `positional_embedding` /
//!   `positional_embedding_res` and the filip projection as `text_projection`;
//!   the short pair loads as `positional_embedding_short` / `text_projection_short`.
//! * Tokenizer: HF `CLIPTokenizer` ([`super::hf`]), as the eval scripts call
//!   it (`max_length=248|77, truncation=True`).
//! * Image: `Image.open(p).convert("RGB").resize((S, S))` (bicubic, the
//!   aspect ratio is not kept), then `CLIPImageProcessor`, whose resize and
//!   crop are no-ops on a square ([`Transform::square`]).
//! * Text: the caller picks the path (`walk_short_pos`); both pool at the
//!   first EOT (`input_ids == eos_token_id`, 49407). The long path is the
//!   default, as in the long-caption evals (`eval_long.sh`).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};

use super::{hf::HfTokenizer, Rules, TextPath, TextTables};
use crate::checkpoint::{Checkpoint, Config};
use crate::preprocess::Transform;
use crate::tokenizer::Encoding;

/// HF keys of FG-CLIP's long path (only FG-CLIP has them).
pub const ORI_KEY: &str = "text_model.embeddings.position_embedding_ori.weight";
pub const RES_KEY: &str = "text_model.embeddings.position_embedding_res.weight";
pub const FILIP_KEY: &str = "text_filip_projection.weight";
/// HF keys of the short path (CLIP's own names).
pub const SHORT_POSITION_KEY: &str = "text_model.embeddings.position_embedding.weight";
pub const SHORT_PROJECTION_KEY: &str = "text_projection.weight";
/// Official-style names the short path is kept under.
pub const SHORT_POSITIONS_NAME: &str = "positional_embedding_short";
pub const SHORT_PROJECTION_NAME: &str = "text_projection_short";
/// Rows of the short table (CLIP's context).
pub const SHORT_POSITIONS: usize = 77;
/// Logit scales only FG-CLIP's training losses use; kept so that a converted
/// file still loads in `FGCLIPModel` with `strict=True`.
pub const TRAINING_LOGIT_SCALES: [&str; 2] = ["logit_scale_finegraind", "logit_scale_hardneg"];

pub struct FgClipRules;

impl Rules for FgClipRules {
    fn name(&self) -> &'static str {
        "FG-CLIP"
    }

    fn source(&self) -> &'static str {
        "FG-CLIP v1.0 fgclip/model/clip_strc/fgclip.py (get_text_features walk_short_pos, get_image_features), eval scripts (resize((S, S)), tokenizer max_length)"
    }

    fn tokenize(&self, texts: &[String], context_length: usize) -> Result<Vec<Encoding>> {
        HfTokenizer::global()?.encode_batch(texts, context_length)
    }

    fn describe_tables(&self, ckpt: &Checkpoint) -> String {
        let (k, n) = (ckpt.config.text.keep_positions, ckpt.config.text.context_length);
        format!(
            "FG-CLIP (long: position_embedding_ori rows 0..{k} + position_embedding_res rows {k}..{n}, text_filip_projection; \
             short: position_embedding {SHORT_POSITIONS} rows, text_projection)"
        )
    }

    fn transform(&self, size: usize) -> Transform {
        Transform::square(size)
    }

    fn text_paths(&self) -> &'static [TextPath] {
        &[TextPath::Long, TextPath::Short]
    }

    fn text_tables(&self, ckpt: &Checkpoint, path: TextPath) -> Result<TextTables> {
        Ok(match path {
            TextPath::Long => TextTables { positions: ckpt.text_positions()?, projection: "text_projection" },
            TextPath::Short => TextTables {
                positions: ckpt.get(SHORT_POSITIONS_NAME)?.to_dtype(DType::F32)?,
                projection: SHORT_PROJECTION_NAME,
            },
        })
    }

    /// Both paths under FG-CLIP's own names, so `FGCLIPModel` loads the export.
    fn hf_text_tensors(&self, ckpt: &Checkpoint) -> Result<Vec<(String, Tensor)>> {
        let transposed = |key: &str| -> Result<Tensor> { Ok(ckpt.get(key)?.t()?.contiguous()?) };
        Ok(vec![
            (SHORT_POSITION_KEY.into(), ckpt.get(SHORT_POSITIONS_NAME)?.clone()),
            (SHORT_PROJECTION_KEY.into(), transposed(SHORT_PROJECTION_NAME)?),
            (ORI_KEY.into(), ckpt.get("positional_embedding")?.clone()),
            (RES_KEY.into(), ckpt.get(super::longclip::RES_KEY)?.clone()),
            (FILIP_KEY.into(), transposed("text_projection")?),
        ])
    }

    /// FG-CLIP's config keeps CLIP's 77 (the short table); ori/res are 248 in code.
    fn hf_model(&self, _config: &Config) -> (&'static str, usize) {
        ("FGCLIPModel", SHORT_POSITIONS)
    }

    fn carried_keys(&self) -> &'static [&'static str] {
        &TRAINING_LOGIT_SCALES
    }

    fn extra_shapes(&self, c: &Config) -> Vec<(String, Vec<usize>)> {
        vec![
            (SHORT_POSITIONS_NAME.into(), vec![SHORT_POSITIONS, c.text.width]),
            (SHORT_PROJECTION_NAME.into(), vec![c.text.width, c.embed_dim]),
        ]
    }
}

/// FG-CLIP-only keys present in a raw state dict.
pub fn markers(raw: &HashMap<String, Tensor>) -> Vec<&'static str> {
    [ORI_KEY, RES_KEY, FILIP_KEY].into_iter().filter(|k| raw.contains_key(*k)).collect()
}

/// Every key of both text paths, or an error naming the first one missing
/// (e.g. an ori/res table without `text_filip_projection.weight`).
pub fn check_complete(raw: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let found = markers(raw);
    for key in [ORI_KEY, RES_KEY, FILIP_KEY, SHORT_POSITION_KEY, SHORT_PROJECTION_KEY] {
        if !raw.contains_key(key) {
            bail!(
                "{}: an FG-CLIP checkpoint (it has '{}') without '{key}': both text paths need their tables and projections",
                path.display(),
                found.first().copied().unwrap_or(ORI_KEY)
            );
        }
    }
    Ok(())
}

/// Renames FG-CLIP's keys so that the common HF renames give the long path
/// Long-CLIP's names (see the module docs); the short pair is kept aside.
pub fn prepare(mut raw: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
    let mut take = |key: &str| raw.remove(key).with_context(|| format!("missing tensor '{key}'"));
    let short_positions = take(SHORT_POSITION_KEY)?;
    let short_projection = take(SHORT_PROJECTION_KEY)?.t()?.contiguous()?;
    let ori = take(ORI_KEY)?;
    let res = take(RES_KEY)?;
    let filip = take(FILIP_KEY)?;
    raw.insert(SHORT_POSITIONS_NAME.into(), short_positions);
    raw.insert(SHORT_PROJECTION_NAME.into(), short_projection);
    raw.insert(SHORT_POSITION_KEY.into(), ori);
    raw.insert(super::longclip::RES_KEY.into(), res);
    raw.insert(SHORT_PROJECTION_KEY.into(), filip);
    Ok(raw)
}
