//! GOAL (PerceptualAI-Lab/GOAL @ 2db3d4a0): a plain HF `CLIPModel` whose
//! text position table has 248 rows, saved as a bare `.pth` state dict.
//!
//! * Checkpoint: `torch.save(model.state_dict())` with HF key names and no
//!   config (`goal_loss_finetuning.py`). The architecture comes from the
//!   shapes; heads and activation from a `config.json` beside the `.pth`
//!   when there is one (the base model's, which `retrieval_goal.py` loads
//!   first), else heads = width / 64 as for every released CLIP. The 248
//!   rows are read from the table as they are: `retrieval_goal.py` stretches
//!   the base model's 77 rows and then overwrites them with the `.pth`'s.
//! * Tokenizer: HF `CLIPTokenizer` ([`super::hf`]).
//! * Image: HF `CLIPImageProcessor`: `convert("RGB")`, shortest edge to S
//!   (bicubic), center crop with `top = (h − S) // 2` ([`Transform::hf_clip`]).
//! * Text: `tok[ids] + pos[p]`, causal pre-LN transformer, `final_layer_norm`,
//!   pooled at `argmax(input_ids)` (the first EOT), `text_projection`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::{hf::HfTokenizer, Rules, TextPath, TextTables};
use crate::checkpoint::Checkpoint;
use crate::preprocess::Transform;
use crate::tokenizer::Encoding;

/// HF name of the text position table.
pub const POSITION_KEY: &str = "text_model.embeddings.position_embedding.weight";
/// Rows of CLIP's table; GOAL's has more.
const CLIP_POSITIONS: usize = 77;

pub struct GoalRules;

impl Rules for GoalRules {
    fn name(&self) -> &'static str {
        "GOAL"
    }

    fn source(&self) -> &'static str {
        "GOAL retrieval_goal.py (AutoModel/AutoProcessor of openai/clip-vit-*, then the .pth), transformers CLIPModel"
    }

    fn tokenize(&self, texts: &[String], context_length: usize) -> Result<Vec<Encoding>> {
        HfTokenizer::global()?.encode_batch(texts, context_length)
    }

    fn describe_tables(&self, ckpt: &Checkpoint) -> String {
        format!("GOAL (one {}-row position table, loaded as stored)", ckpt.config.text.context_length)
    }

    fn transform(&self, size: usize) -> Transform {
        Transform::hf_clip(size)
    }

    fn text_tables(&self, ckpt: &Checkpoint, path: TextPath) -> Result<TextTables> {
        if path != TextPath::Long {
            bail!("{}: GOAL has one text path (long)", ckpt.path.display());
        }
        Ok(TextTables { positions: ckpt.text_positions()?, projection: "text_projection" })
    }
}

/// An HF state dict whose text table is longer than CLIP's.
pub fn is_goal(raw: &HashMap<String, Tensor>) -> bool {
    raw.get(POSITION_KEY).is_some_and(|t| t.dims().first().is_some_and(|&n| n > CLIP_POSITIONS))
}

/// The base model's `config.json` beside a `.pth`, if there is one.
///
/// Errors, naming that file, when it cannot be read or is not JSON.
pub fn base_config(pth: &Path) -> anyhow::Result<Option<serde_json::Value>> {
    use anyhow::Context;
    let Some(path) = pth.parent().map(|d| d.join("config.json")) else {
        return Ok(None);
    };
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let value = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}:{}:{}: invalid JSON: {e}", path.display(), e.line(), e.column()))?;
    Ok(Some(value))
}
