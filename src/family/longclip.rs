//! Long-CLIP (beichenzbc/Long-CLIP), and OpenAI CLIP as its 77-position case.
//!
//! * Tokenizer: OpenAI's `SimpleTokenizer` as `model/longclip.py::tokenize`
//!   calls it (ftfy, `html.unescape` twice, whitespace, lowercase), our
//!   [`crate::tokenizer`].
//! * Image: `model/longclip.py::_transform`: torchvision `Resize(n, BICUBIC)`
//!   on the image in its own mode, `CenterCrop(n)` (offset rounded),
//!   `convert("RGB")`, normalize ([`Transform::clip`]).
//! * Text: one table merged from `positional_embedding` (rows < K) and
//!   `positional_embedding_res` (rows ≥ K, K = 20 unless stretched otherwise),
//!   pooled at `text.argmax(-1)` (the first EOT), projected by
//!   `text_projection` (`model/model_longclip.py::encode_text`).

use anyhow::{bail, Result};

use super::{Rules, TextPath, TextTables};
use crate::checkpoint::Checkpoint;
use crate::preprocess::Transform;
use crate::tokenizer::{Encoding, Tokenizer};

/// Long-CLIP's second position table (official name).
pub const RES_KEY: &str = "positional_embedding_res";

pub struct LongClipRules;

impl Rules for LongClipRules {
    fn name(&self) -> &'static str {
        "Long-CLIP"
    }

    fn source(&self) -> &'static str {
        "Long-CLIP model/longclip.py (tokenize, _transform), model/model_longclip.py (encode_text)"
    }

    fn tokenize(&self, texts: &[String], context_length: usize) -> Result<Vec<Encoding>> {
        Tokenizer::global().encode_batch(texts, context_length)
    }

    fn describe_tables(&self, ckpt: &Checkpoint) -> String {
        let (k, n) = (ckpt.config.text.keep_positions, ckpt.config.text.context_length);
        if ckpt.is_long_clip() {
            format!("Long-CLIP (positional_embedding rows 0..{k} + positional_embedding_res rows {k}..{n})")
        } else if n > 77 {
            // An HF export of a Long-CLIP: one merged table, split where its config says.
            format!("Long-CLIP in one merged {n}-row table (the Long-CLIP split at row {k}: rows 0..{k} kept, {k}..{n} stretched)")
        } else {
            "CLIP (one positional table)".to_string()
        }
    }

    fn transform(&self, size: usize) -> Transform {
        Transform::clip(size)
    }

    fn text_tables(&self, ckpt: &Checkpoint, path: TextPath) -> Result<TextTables> {
        if path != TextPath::Long {
            bail!("{}: Long-CLIP has one text path (long)", ckpt.path.display());
        }
        Ok(TextTables { positions: ckpt.text_positions()?, projection: "text_projection" })
    }
}
