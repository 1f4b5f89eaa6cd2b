//! Hugging Face's CLIP tokenizer (`CLIPTokenizer` of transformers 5, the
//! tokenizers-backed class that `AutoTokenizer` gives FG-CLIP and GOAL),
//! built with the `tokenizers` crate from the vocabulary this crate already
//! ships (`assets/bpe_simple_vocab_16e6.txt.gz`: HF's `vocab.json` is its
//! `encoder` and `merges.txt` its merges, see `tests/fixtures/frontier/README.md`).
//!
//! The rules, as transformers' `CLIPTokenizer.__init__` (and the older
//! `CLIPConverter` in `convert_slow_tokenizer.py`) set them:
//!
//! * normalizer: NFC, `\s+` -> " ", lowercase. No ftfy and no
//!   `html.unescape`: `&amp;` stays three tokens and `’s` is not `'s`,
//!   where Long-CLIP's tokenizer fixes both (about 2 % of Urban1k captions);
//! * pre-tokenizer: CLIP's split pattern (matches kept, the rest dropped),
//!   then byte-level (no prefix space);
//! * model: BPE with `</w>` ending a word, `<|endoftext|>` as unknown;
//! * post-processor: `<|startoftext|>` … `<|endoftext|>` (49406 … 49407).
//!
//! Truncation (`truncation=True, max_length=N`) keeps BOS, the first N − 2
//! BPE ids and EOS: the same ids as Long-CLIP's `truncate=True`, so
//! [`HfTokenizer::encode`] cuts the same way. Padding (49407 in HF, 0 in
//! Long-CLIP) never reaches the model here: causal attention makes the
//! trailing pads irrelevant and the pooled row is the first EOT.

use std::sync::OnceLock;

use anyhow::{anyhow, ensure, Result};
use rayon::prelude::*;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::tokenizer::{Encoding, Tokenizer, EOT, SOT};

/// CLIP's split pattern as HF writes it (no special tokens in it: those are
/// added tokens, cut out of the raw text before normalization).
const HF_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
const BOS_TOKEN: &str = "<|startoftext|>";
const EOS_TOKEN: &str = "<|endoftext|>";

/// The HF CLIP tokenizer.
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
}

impl HfTokenizer {
    /// Builds it from the bundled vocabulary (a few hundred milliseconds:
    /// prefer [`HfTokenizer::global`]).
    pub fn new() -> Result<HfTokenizer> {
        let base = Tokenizer::global();
        let vocab: Vec<(String, u32)> = base.vocabulary().iter().enumerate().map(|(i, s)| (s.clone(), i as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab.into_iter().collect::<tokenizers::models::bpe::Vocab>(), base.merges())
            .unk_token(EOS_TOKEN.into())
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix("</w>".into())
            .build()
            .map_err(|e| anyhow!("HF CLIP tokenizer: {e}"))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let normalizer = NormalizerSequence::new(vec![
            NFC.into(),
            Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()), " ")
                .map_err(|e| anyhow!("HF CLIP tokenizer: {e}"))?
                .into(),
            Lowercase.into(),
        ]);
        inner.with_normalizer(Some(normalizer)).map_err(|e| anyhow!("HF CLIP tokenizer: {e}"))?;
        let split = Split::new(SplitPattern::Regex(HF_PATTERN.into()), SplitDelimiterBehavior::Removed, true)
            .map_err(|e| anyhow!("HF CLIP tokenizer: {e}"))?;
        inner.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![split.into(), ByteLevel::new(false, true, true).into()])));
        let post = RobertaProcessing::new((EOS_TOKEN.into(), EOT), (BOS_TOKEN.into(), SOT)).trim_offsets(false).add_prefix_space(false);
        inner.with_post_processor(Some(post));
        inner
            .add_special_tokens([AddedToken::from(BOS_TOKEN, true), AddedToken::from(EOS_TOKEN, true)])
            .map_err(|e| anyhow!("HF CLIP tokenizer: {e}"))?;
        Ok(HfTokenizer { inner })
    }

    /// One shared tokenizer, built on first use.
    pub fn global() -> Result<&'static HfTokenizer> {
        static GLOBAL: OnceLock<std::result::Result<HfTokenizer, String>> = OnceLock::new();
        GLOBAL.get_or_init(|| HfTokenizer::new().map_err(|e| format!("{e:#}"))).as_ref().map_err(|e| anyhow!("{e}"))
    }

    /// `tokenizer(text, max_length=context_length, truncation=True).input_ids`:
    /// BOS, the BPE ids, EOS; cut to `context_length` with EOS kept last.
    /// Errors: `context_length` < 2.
    pub fn encode(&self, text: &str, context_length: usize) -> Result<Encoding> {
        ensure!(context_length >= 2, "context length must be at least 2 (SOT and EOT), got {context_length}");
        let encoded = self.inner.encode(text, true).map_err(|e| anyhow!("HF CLIP tokenizer: {e}"))?;
        let mut ids = encoded.get_ids().to_vec();
        let truncated = crate::tokenizer::truncate_ids(&mut ids, context_length);
        Ok(Encoding { ids, truncated })
    }

    /// [`HfTokenizer::encode`] over many texts in parallel (rayon), in order.
    pub fn encode_batch(&self, texts: &[String], context_length: usize) -> Result<Vec<Encoding>> {
        texts.par_iter().map(|t| self.encode(t, context_length)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities_and_curly_quotes_stay_as_written() {
        let hf = HfTokenizer::global().unwrap();
        let ours = hf.encode("Tom &amp; Jerry’s", 77).unwrap().ids;
        let longclip = Tokenizer::global().encode("Tom &amp; Jerry’s", 77).unwrap().ids;
        assert_ne!(ours, longclip, "Long-CLIP unescapes &amp; and straightens ’");
        assert_eq!(ours.first(), Some(&SOT));
        assert_eq!(ours.last(), Some(&EOT));
    }

    #[test]
    fn plain_text_matches_long_clip() {
        let hf = HfTokenizer::global().unwrap();
        for text in ["a photo of a dog", "A cat  jumping.\n", "it's 2024!"] {
            assert_eq!(hf.encode(text, 77).unwrap(), Tokenizer::global().encode(text, 77).unwrap(), "{text}");
        }
    }

    #[test]
    fn truncation_keeps_eos_last() {
        let hf = HfTokenizer::global().unwrap();
        let e = hf.encode(&"word ".repeat(300), 248).unwrap();
        assert!(e.truncated);
        assert_eq!(e.ids.len(), 248);
        assert_eq!(e.ids[247], EOT);
        assert!(hf.encode("x", 1).is_err());
    }
}
