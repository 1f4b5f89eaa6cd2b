//! CLIP's tokenizer, exactly as the official Long-CLIP code runs it.
//!
//! Long-CLIP's `model/simple_tokenizer.py` is OpenAI CLIP's: clean the text
//! (`ftfy.fix_text`, `html.unescape` twice, collapse whitespace, lowercase),
//! split it with one regex, and run byte-level BPE over each piece. Its
//! `tokenize()` wraps the ids in SOT/EOT and truncates to 248 by default.
//!
//! The cleaning decides which ids come out, so `ftfy` 6.x (default config) is
//! ported in the `ftfy` module below. Its data tables (HTML entities, the
//! single-byte codecs, character classes) are dumped from the real libraries
//! into `assets/ftfy_tables.txt` by `scripts/gen_ftfy_tables.py`.
//!
//! Known differences, none of which real captions hit: Unicode versions
//! (Python 3.11 lowercases and normalizes with Unicode 14 and the `regex`
//! package splits with its own newer tables; the Rust crates have theirs),
//! lone surrogates (a `&str` cannot hold them, so ftfy's `fix_surrogates` has
//! nothing to do), and `&#` followed by over 4300 digits (Python raises).

use std::collections::HashMap;
use std::io::Read;
use std::sync::{OnceLock, PoisonError, RwLock};

use anyhow::{ensure, Result};
use rayon::prelude::*;
use regex::Regex;

pub const SOT: u32 = 49406;
pub const EOT: u32 = 49407;
pub const VOCAB_SIZE: usize = 49408;
/// Long-CLIP's `tokenize()` default (`77*4-60`).
pub const DEFAULT_CONTEXT_LENGTH: usize = 248;

const VOCAB_GZ: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/bpe_simple_vocab_16e6.txt.gz"
));
/// The official code keeps lines[1 : 49152-256-2+1] of the vocab file as merges.
const NUM_MERGES: usize = 49152 - 256 - 2;
/// Pieces whose BPE result is remembered; a bound so odd inputs cannot grow it forever.
const CACHE_LIMIT: usize = 1 << 16;

/// The official split pattern. It is compiled with IGNORECASE there; on
/// lowercased text that only matters for 'ſ' (which case-folds to 's') and for
/// U+0345 (which folds into \p{L}, so the negated class skips it and no
/// alternative matches it). Both are spelled out here instead.
const PATTERN: &str = r"<\|[sſ]tartoftext\|>|<\|endoftext\|>|'[sſ]|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}\x{345}]+";

/// Token ids of one text: SOT, the BPE ids, EOT; no padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoding {
    pub ids: Vec<u32>,
    /// The text did not fit and was cut (EOT still ends `ids`).
    pub truncated: bool,
}

pub struct Tokenizer {
    /// Id of each byte as a symbol inside a word, and as a word's last symbol (`</w>`).
    byte_ids: [u32; 256],
    byte_end_ids: [u32; 256],
    /// (left id, right id) -> (merge rank, merged id).
    merges: HashMap<u64, (u32, u32), BuildFastHasher>,
    /// Piece bytes -> BPE ids, like the official `self.cache`.
    cache: BpeCache,
    /// Id -> vocab string, and the vocab's char -> byte map, for `decode`.
    vocab: Vec<String>,
    byte_decoder: HashMap<char, u8>,
    pattern: Regex,
    fixer: ftfy::Fixer,
}

impl Default for Tokenizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Tokenizer {
    /// Builds the tokenizer from the bundled vocabulary (tens of milliseconds:
    /// prefer `Tokenizer::global()`).
    pub fn new() -> Tokenizer {
        let text = vocab_file();
        let merges: Vec<(&str, &str)> = text
            .split('\n')
            .skip(1)
            .take(NUM_MERGES)
            .map(|line| line.split_once(' ').expect("merge line has two symbols"))
            .collect();

        // Same order as the official vocab list; ids are positions in it.
        let bytes = byte_order();
        let mut vocab: Vec<String> = bytes.iter().map(|&(_, c)| c.to_string()).collect();
        vocab.extend(bytes.iter().map(|&(_, c)| format!("{c}</w>")));
        vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        vocab.push("<|startoftext|>".into());
        vocab.push("<|endoftext|>".into());
        assert_eq!(vocab.len(), VOCAB_SIZE);

        let encoder: HashMap<&str, u32> = vocab
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), i as u32))
            .collect();
        let mut byte_ids = [0; 256];
        let mut byte_end_ids = [0; 256];
        for (i, &(b, _)) in bytes.iter().enumerate() {
            byte_ids[b as usize] = i as u32;
            byte_end_ids[b as usize] = (i + 256) as u32;
        }
        let mut merge_map =
            HashMap::with_capacity_and_hasher(merges.len(), BuildFastHasher::default());
        for (rank, (a, b)) in merges.iter().enumerate() {
            // A merge whose halves are not tokens could never fire (none in this file).
            if let (Some(&l), Some(&r)) = (encoder.get(a), encoder.get(b)) {
                let merged = encoder[format!("{a}{b}").as_str()];
                merge_map.insert(pair_key(l, r), (rank as u32, merged));
            }
        }
        Tokenizer {
            byte_ids,
            byte_end_ids,
            merges: merge_map,
            cache: RwLock::default(),
            byte_decoder: bytes.iter().map(|&(b, c)| (c, b)).collect(),
            vocab,
            pattern: Regex::new(PATTERN).expect("valid split pattern"),
            fixer: ftfy::Fixer::new(),
        }
    }

    /// One shared tokenizer, built on first use.
    pub fn global() -> &'static Tokenizer {
        static GLOBAL: OnceLock<Tokenizer> = OnceLock::new();
        GLOBAL.get_or_init(Tokenizer::new)
    }

    /// The official `whitespace_clean(basic_clean(text)).lower()`.
    pub fn clean(&self, text: &str) -> String {
        let text = self.fixer.fix_text(text);
        let text = self.fixer.html_unescape(&self.fixer.html_unescape(&text));
        let mut out = String::with_capacity(text.len());
        let mut in_space = false;
        // `regex`'s \s (Unicode White_Space) is exactly char::is_whitespace.
        for c in text.trim_matches(is_py_space).chars() {
            if c.is_whitespace() {
                if !in_space {
                    out.push(' ');
                }
                in_space = true;
            } else {
                out.push(c);
                in_space = false;
            }
        }
        // Both lowercasings do full mappings and the final-sigma rule.
        out.trim_matches(is_py_space).to_lowercase()
    }

    /// BPE ids of the cleaned text, without SOT/EOT.
    pub fn bpe_ids(&self, text: &str) -> Vec<u32> {
        let cleaned = self.clean(text);
        let mut ids = Vec::with_capacity(cleaned.len() / 3 + 1);
        for piece in self.pattern.find_iter(&cleaned) {
            // The official cache is pre-seeded with the two special strings.
            match piece.as_str() {
                "<|startoftext|>" => ids.push(SOT),
                "<|endoftext|>" => ids.push(EOT),
                piece => self.bpe_cached(piece.as_bytes(), &mut ids),
            }
        }
        ids
    }

    /// The official `tokenize(text, context_length, truncate=True)`, unpadded.
    pub fn encode(&self, text: &str, context_length: usize) -> Result<Encoding> {
        check_context_length(context_length)?;
        let mut ids = vec![SOT];
        ids.extend(self.bpe_ids(text));
        ids.push(EOT);
        let truncated = truncate_ids(&mut ids, context_length);
        Ok(Encoding { ids, truncated })
    }

    /// `encode` over many texts in parallel (rayon), in order.
    pub fn encode_batch(&self, texts: &[String], context_length: usize) -> Result<Vec<Encoding>> {
        check_context_length(context_length)?;
        texts
            .par_iter()
            .map(|text| self.encode(text, context_length))
            .collect()
    }

    /// Token strings by id (`vocab.json` of a Hugging Face export).
    pub fn vocabulary(&self) -> &[String] {
        &self.vocab
    }

    /// The BPE merges in rank order (`merges.txt` of a Hugging Face export).
    pub fn merges(&self) -> Vec<(String, String)> {
        let text = vocab_file();
        text.split('\n')
            .skip(1)
            .take(NUM_MERGES)
            .filter_map(|line| line.split_once(' '))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// Ids back to text like the official `decode` (`</w>` becomes a space).
    /// Unknown ids are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .filter_map(|&id| self.vocab.get(id as usize))
            .flat_map(|token| token.chars().map(|c| self.byte_decoder[&c]))
            .collect();
        String::from_utf8_lossy(&bytes).replace("</w>", " ")
    }

    fn bpe_cached(&self, piece: &[u8], out: &mut Vec<u32>) {
        // The cache only holds finished results, so a poisoned lock is still usable.
        if let Some(ids) = self
            .cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(piece)
        {
            out.extend_from_slice(ids);
            return;
        }
        let start = out.len();
        self.bpe(piece, out);
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        if cache.len() < CACHE_LIMIT {
            cache.insert(piece.into(), out[start..].into());
        }
    }

    /// The official `bpe()`: start from bytes (the last one marked `</w>`) and
    /// repeatedly merge every occurrence, left to right, of the lowest-ranked pair.
    fn bpe(&self, piece: &[u8], out: &mut Vec<u32>) {
        let Some((&last, rest)) = piece.split_last() else {
            return;
        };
        let mut word: Vec<u32> = rest.iter().map(|&b| self.byte_ids[b as usize]).collect();
        word.push(self.byte_end_ids[last as usize]);
        let mut next = Vec::with_capacity(word.len());
        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|w| {
                    self.merges
                        .get(&pair_key(w[0], w[1]))
                        .map(|&(rank, merged)| (rank, w[0], w[1], merged))
                })
                .min_by_key(|&(rank, ..)| rank);
            let Some((_, left, right, merged)) = best else {
                break;
            };
            next.clear();
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == left && word[i + 1] == right {
                    next.push(merged);
                    i += 2;
                } else {
                    next.push(word[i]);
                    i += 1;
                }
            }
            std::mem::swap(&mut word, &mut next);
        }
        out.extend_from_slice(&word);
    }
}

fn vocab_file() -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(VOCAB_GZ)
        .read_to_string(&mut text)
        .expect("bundled BPE vocabulary is valid gzip UTF-8");
    text
}

/// Cuts SOT..EOT `ids` to `context_length` as the official
/// `tokenize(..., truncate=True)` does (and HF's tokenizer with
/// `truncation=True`): the first `context_length` ids, the last one replaced
/// by EOT. Returns whether anything was cut. `context_length` must be >= 1.
pub fn truncate_ids(ids: &mut Vec<u32>, context_length: usize) -> bool {
    if ids.len() <= context_length {
        return false;
    }
    ids.truncate(context_length);
    if let Some(last) = ids.last_mut() {
        *last = EOT;
    }
    true
}

/// The paper authors' word truncation: `" ".join(caption.split(" ")[:n])`.
pub fn truncate_words(text: &str, n: usize) -> String {
    text.split(' ').take(n).collect::<Vec<_>>().join(" ")
}

fn check_context_length(context_length: usize) -> Result<()> {
    ensure!(
        context_length >= 2,
        "context length must be at least 2 (SOT and EOT), got {context_length}"
    );
    Ok(())
}

/// Python's `str.isspace()`: White_Space plus the separators U+1C..U+1F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The official `bytes_to_unicode()` as (byte, char) in its dict order:
/// printable Latin-1 bytes map to themselves, the rest to U+0100 onwards.
fn byte_order() -> Vec<(u8, char)> {
    let printable = |b: u32| matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
    let mut order: Vec<(u8, char)> = (0..256u32)
        .filter(|&b| printable(b))
        .map(|b| (b as u8, char::from_u32(b).unwrap()))
        .collect();
    let others = (0..256u32).filter(|&b| !printable(b));
    order.extend(
        others
            .enumerate()
            .map(|(n, b)| (b as u8, char::from_u32(256 + n as u32).unwrap())),
    );
    order
}

type BpeCache = RwLock<HashMap<Box<[u8]>, Box<[u32]>, BuildFastHasher>>;

fn pair_key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

/// An FxHash-style hasher: the merge table is hit once per adjacent pair per
/// BPE step, where SipHash would dominate. Worst-case inputs only slow one
/// caption down, they cannot change results.
type BuildFastHasher = std::hash::BuildHasherDefault<FastHasher>;

#[derive(Default)]
struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.write_u64(u64::from_le_bytes(chunk.try_into().unwrap()));
        }
        for &b in chunks.remainder() {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

/// A port of `ftfy.fix_text` 6.3.1 with its default config, plus Python's
/// `html.unescape`, which ftfy and the tokenizer both use.
mod ftfy {
    use std::collections::HashMap;

    use regex::bytes::Regex as BytesRegex;
    use regex::Regex;
    use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

    const TABLES: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/ftfy_tables.txt"
    ));

    /// ftfy's `max_decode_length`: the longest segment fixed as one piece.
    const MAX_DECODE_LENGTH: usize = 1_000_000;
    /// ftfy repeats its fixes until nothing changes; this only guards against a cycle.
    const MAX_PASSES: usize = 100;

    /// ftfy's BADNESS_RE (badness.py), one alternative per entry, in its order.
    /// `{name}` is a MOJIBAKE_CATEGORIES class; `{s}` and `{w}` are Python's
    /// `\s` and `\w`, which differ from Rust's (U+1C..U+1F; combining marks).
    /// Literal characters are escaped; the Python source is in the comments.
    const BADNESS: &[&str] = &[
        "[{c1}]",
        "[{bad}{lower_accented}{upper_accented}{box}{start_punctuation}{end_punctuation}{currency}{numeric}{law}][{bad}]",
        "[a-zA-Z][{lower_common}{upper_common}][{bad}]",
        "[{bad}][{lower_accented}{upper_accented}{box}{start_punctuation}{end_punctuation}{currency}{numeric}{law}]",
        "[{lower_accented}{lower_common}{box}{end_punctuation}{currency}{numeric}][{upper_accented}]",
        "[{box}{end_punctuation}{currency}{numeric}][{lower_accented}]",
        "[{lower_accented}{box}{end_punctuation}][{currency}]",
        "{s}[{upper_accented}][{currency}]",
        "[{upper_accented}{box}][{numeric}{law}]",
        "[{lower_accented}{upper_accented}{box}{currency}{end_punctuation}][{start_punctuation}][{numeric}]",
        "[{lower_accented}{upper_accented}{currency}{numeric}{box}{law}][{end_punctuation}][{start_punctuation}]",
        "[{currency}{numeric}{box}][{start_punctuation}]",
        "[a-z][{upper_accented}][{start_punctuation}{currency}]",
        "[{box}][{kaomoji}]",
        "[{lower_accented}{upper_accented}{currency}{numeric}{start_punctuation}{end_punctuation}{law}][{box}]",
        "[{box}][{end_punctuation}]",
        "[{lower_accented}{upper_accented}][{start_punctuation}{end_punctuation}]{w}",
        // [Œœ][^A-Za-z]
        r"[\x{152}\x{153}][^A-Za-z]",
        // [{upper_accented}]°
        r"[{upper_accented}]\x{b0}",
        // [ÂÃÎÐ][€œŠš¢£Ÿž\xa0\xad®©°·»{start_punctuation}{end_punctuation}–—´]
        r"[\x{c2}\x{c3}\x{ce}\x{d0}][\x{20ac}\x{153}\x{160}\x{161}\x{a2}\x{a3}\x{178}\x{17e}\x{a0}\x{ad}\x{ae}\x{a9}\x{b0}\x{b7}\x{bb}{start_punctuation}{end_punctuation}\x{2013}\x{2014}\x{b4}]",
        // × [²³]
        r"\x{d7}[\x{b2}\x{b3}]",
        // [ØÙ] [{common}{currency}{bad}{numeric}{start_punctuation}ŸŠ®°µ»], twice
        r"[\x{d8}\x{d9}][{common}{currency}{bad}{numeric}{start_punctuation}\x{178}\x{160}\x{ae}\x{b0}\x{b5}\x{bb}][\x{d8}\x{d9}][{common}{currency}{bad}{numeric}{start_punctuation}\x{178}\x{160}\x{ae}\x{b0}\x{b5}\x{bb}]",
        // à[²µ¹¼½¾]
        r"\x{e0}[\x{b2}\x{b5}\x{b9}\x{bc}\x{bd}\x{be}]",
        // √[±∂†≠®™´≤≥¥µø]
        r"\x{221a}[\x{b1}\x{2202}\x{2020}\x{2260}\x{ae}\x{2122}\x{b4}\x{2264}\x{2265}\x{a5}\x{b5}\x{f8}]",
        // ≈[°¢]
        r"\x{2248}[\x{b0}\x{a2}]",
        // ‚Ä[ìîïòôúùû†°¢π]
        r"\x{201a}\x{c4}[\x{ec}\x{ee}\x{ef}\x{f2}\x{f4}\x{fa}\x{f9}\x{fb}\x{2020}\x{b0}\x{a2}\x{3c0}]",
        // ‚[âó][àä°ê]
        r"\x{201a}[\x{e2}\x{f3}][\x{e0}\x{e4}\x{b0}\x{ea}]",
        // вЂ
        r"\x{432}\x{402}",
        // [ВГРС][{c1}{bad}{start_punctuation}{end_punctuation}{currency}°µ][ВГРС]
        r"[\x{412}\x{413}\x{420}\x{421}][{c1}{bad}{start_punctuation}{end_punctuation}{currency}\x{b0}\x{b5}][\x{412}\x{413}\x{420}\x{421}]",
        // ГўВЂВ.[A-Za-z ]
        r"\x{413}\x{45e}\x{412}\x{402}\x{412}.[A-Za-z ]",
        // Ã[\xa0¡]
        r"\x{c3}[\x{a0}\x{a1}]",
        // [a-z]\s?[ÃÂ][ ]
        r"[a-z]{s}?[\x{c3}\x{c2}][ ]",
        // ^[ÃÂ][ ]
        r"^[\x{c3}\x{c2}][ ]",
        // [a-z.,?!{end_punctuation}] Â [ {start_punctuation}{end_punctuation}]
        r"[a-z.,?!{end_punctuation}]\x{c2}[ {start_punctuation}{end_punctuation}]",
        // β€[™\xa0Ά\xad®°]
        r"\x{3b2}\x{20ac}[\x{2122}\x{a0}\x{386}\x{ad}\x{ae}\x{b0}]",
        // [ΒΓΞΟ][{c1}{bad}{start_punctuation}{end_punctuation}{currency}°][ΒΓΞΟ]
        r"[\x{392}\x{393}\x{39e}\x{39f}][{c1}{bad}{start_punctuation}{end_punctuation}{currency}\x{b0}][\x{392}\x{393}\x{39e}\x{39f}]",
        // ā€
        r"\x{101}\x{20ac}",
    ];

    /// chardata.ALTERED_UTF8_RE: UTF-8 that would be valid if a space were byte A0.
    const ALTERED_UTF8: &str = concat!(
        r"(?-u)[\xc2\xc3\xc5\xce\xd0\xd9][ ]",
        r"|[\xe2\xe3][ ][\x80-\x84\x86-\x9f\xa1-\xbf]",
        r"|[\xe0-\xe3][\x80-\x84\x86-\x9f\xa1-\xbf][ ]",
        r"|[\xf0][ ][\x80-\xbf][\x80-\xbf]",
        r"|[\xf0][\x80-\xbf][ ][\x80-\xbf]",
        r"|[\xf0][\x80-\xbf][\x80-\xbf][ ]",
    );

    /// chardata.LOSSY_UTF8_RE: UTF-8 whose lost bytes became 0x1A (or '?').
    const LOSSY_UTF8: &str = concat!(
        r"(?-u)[\xc2-\xdf][\x1a]",
        r"|[\xc2-\xc3][?]",
        r"|\xed[\xa0-\xaf][\x1a?]\xed[\xb0-\xbf][\x1a?\x80-\xbf]",
        r"|\xed[\xa0-\xaf][\x1a?\x80-\xbf]\xed[\xb0-\xbf][\x1a?]",
        r"|[\xe0-\xef][\x1a?][\x1a\x80-\xbf]",
        r"|[\xe0-\xef][\x1a\x80-\xbf][\x1a?]",
        r"|[\xf0-\xf4][\x1a?][\x1a\x80-\xbf][\x1a\x80-\xbf]",
        r"|[\xf0-\xf4][\x1a\x80-\xbf][\x1a?][\x1a\x80-\xbf]",
        r"|[\xf0-\xf4][\x1a\x80-\xbf][\x1a\x80-\xbf][\x1a?]",
        r"|\x1a",
    );

    /// fixes.ANSI_RE (Python's `\d` is Unicode, like Rust's).
    const ANSI: &str = r"\x1b\[(?:\d|;)*[a-zA-Z]";

    pub(super) struct Fixer {
        /// Python's `html.entities.html5` (names with and without ';').
        html5: HashMap<String, String>,
        /// ftfy's HTML_ENTITIES: "&name;" of html5 plus upper-cased Latin ones.
        entities: HashMap<String, String>,
        /// ftfy's CHARMAP_ENCODINGS, in the order it tries them.
        codecs: Vec<Codec>,
        width: HashMap<char, String>,
        badness: Regex,
        altered_utf8: BytesRegex,
        lossy_utf8: BytesRegex,
        ansi: Regex,
        first_of_2: CharSet,
        first_of_3: CharSet,
        first_of_4: CharSet,
        continuation: CharSet,
        continuation_strict: CharSet,
    }

    impl Fixer {
        pub(super) fn new() -> Fixer {
            let mut html5 = HashMap::new();
            let mut upper = Vec::new();
            let mut codecs = Vec::new();
            let mut width = HashMap::new();
            let mut classes = HashMap::new();
            for line in TABLES.lines().filter(|l| !l.starts_with('#')) {
                let mut fields = line.split('\t');
                let (kind, key, value) = (
                    fields.next().unwrap(),
                    fields.next().unwrap(),
                    parse_hex(fields.next().unwrap()),
                );
                match kind {
                    "html5" => drop(html5.insert(key.to_string(), value)),
                    "upper" => upper.push((key.to_string(), value)),
                    "codec" => codecs.push(Codec::new(key, &value)),
                    "width" => drop(width.insert(char_from_hex(key), value)),
                    "class" => drop(classes.insert(key.to_string(), value)),
                    _ => panic!("unknown ftfy table kind {kind}"),
                }
            }
            let mut entities: HashMap<String, String> = html5
                .iter()
                .filter(|(name, _)| name.ends_with(';'))
                .map(|(name, value)| (format!("&{name}"), value.clone()))
                .collect();
            entities.extend(upper);

            let class = |name: &str| CharSet::parse(&classes[name]);
            let mut fills: HashMap<&str, String> = classes
                .iter()
                .map(|(name, spec)| (name.as_str(), CharSet::parse(spec).regex_class()))
                .collect();
            fills.insert("s", r"[\s\x{1c}-\x{1f}]".into());
            fills.insert("w", r"[\p{L}\p{N}_]".into());
            let badness = fill_template(&BADNESS.join("|"), &fills);
            Fixer {
                html5,
                entities,
                codecs,
                width,
                badness: Regex::new(&badness).expect("valid badness regex"),
                altered_utf8: BytesRegex::new(ALTERED_UTF8).unwrap(),
                lossy_utf8: BytesRegex::new(LOSSY_UTF8).unwrap(),
                ansi: Regex::new(ANSI).unwrap(),
                first_of_2: class("utf8_first_of_2"),
                first_of_3: class("utf8_first_of_3"),
                first_of_4: class("utf8_first_of_4"),
                continuation: class("utf8_continuation"),
                continuation_strict: class("utf8_continuation_strict"),
            }
        }

        /// `ftfy.fix_text(text)`: fix each line on its own.
        pub(super) fn fix_text(&self, text: &str) -> String {
            if is_plain(text) {
                return text.to_owned();
            }
            let mut unescape = true;
            let mut out = String::with_capacity(text.len());
            let mut rest = text;
            while !rest.is_empty() {
                let (segment, tail) = rest.split_at(segment_end(rest));
                // "auto" HTML mode: a literal '<' means real HTML, so entities
                // stay; ftfy keeps it off for all later lines too.
                if segment.contains('<') {
                    unescape = false;
                }
                out.push_str(&self.fix_segment(segment, unescape));
                rest = tail;
            }
            out
        }

        /// `fix_and_explain`: apply every fixer in ftfy's order until nothing changes.
        fn fix_segment(&self, segment: &str, unescape: bool) -> String {
            let mut text = segment.to_owned();
            for _ in 0..MAX_PASSES {
                let before = text.clone();
                if unescape {
                    text = self.unescape_html(&text);
                }
                text = self.fix_encoding(&text);
                text = self.fix_c1_controls(&text);
                text = replace_chars(&text, ligature);
                text = replace_chars(&text, |c| self.width.get(&c).map(String::as_str));
                text = replace_chars(&text, uncurl_quote);
                text = fix_line_breaks(&text);
                // fix_surrogates: a Rust string cannot hold surrogates.
                text = self.ansi.replace_all(&text, "").into_owned();
                text.retain(|c| !is_control(c));
                if is_nfc_quick(text.chars()) != IsNormalized::Yes {
                    text = text.nfc().collect();
                }
                if text == before {
                    break;
                }
            }
            text
        }

        /// ftfy's `unescape_html`: only `&name;`-shaped entities, with ftfy's table.
        fn unescape_html(&self, text: &str) -> String {
            replace_ampersands(text, |after| {
                let len = entity_len(after.as_bytes())?;
                let entity = format!("&{}", &after[..len]);
                let fixed = if let Some(value) = self.entities.get(&entity) {
                    value.clone()
                } else if entity.starts_with("&#") {
                    // A numeric reference must be decoded whole, ';' included.
                    let decoded = self.html_unescape(&entity);
                    if decoded.contains(';') {
                        entity
                    } else {
                        decoded
                    }
                } else {
                    entity
                };
                Some((fixed, len))
            })
        }

        /// `fix_encoding`: undo mojibake one step at a time until stable.
        fn fix_encoding(&self, text: &str) -> String {
            let mut text = text.to_owned();
            for _ in 0..MAX_PASSES {
                let fixed = self.fix_encoding_step(&text);
                if fixed == text {
                    break;
                }
                text = fixed;
            }
            text
        }

        /// `_fix_encoding_one_step_and_explain`.
        fn fix_encoding_step(&self, text: &str) -> String {
            if text.is_ascii() || !self.is_bad(text) {
                return text.to_owned();
            }
            let mut latin1_possible = false;
            // Text that is UTF-8 decoded as a single-byte encoding: re-encode and decode as UTF-8.
            for codec in &self.codecs {
                let Some(mut bytes) = codec.encode(text) else {
                    continue;
                };
                latin1_possible |= codec.name == "latin-1";
                if codec.name != "macroman" && self.altered_utf8.is_match(&bytes) {
                    bytes = self.restore_byte_a0(&bytes);
                }
                if codec.sloppy {
                    bytes = self
                        .lossy_utf8
                        .replace_all(&bytes, "\u{fffd}".as_bytes())
                        .into_owned();
                }
                if let Some(fixed) = decode_utf8_variants(&bytes) {
                    return fixed;
                }
            }
            if self.has_utf8_mojibake(text) {
                let fixed = self.decode_inconsistent_utf8(text);
                if fixed != text {
                    return fixed;
                }
            }
            // ftfy means to keep text that is both Latin-1 and Windows-1252 here, but
            // it tests for "windows-1252" in a list that only ever holds
            // "sloppy-windows-1252", so it always reads Latin-1 as strict Windows-1252.
            if latin1_possible {
                let cp1252 = self.codec("sloppy-windows-1252");
                let strict: Option<String> = text
                    .chars()
                    .map(|c| cp1252.decode_strict(c as u32 as u8))
                    .collect();
                if let Some(fixed) = strict.filter(|fixed| fixed != text) {
                    return fixed;
                }
            }
            if text.chars().any(is_c1) {
                return self.fix_c1_controls(text);
            }
            text.to_owned()
        }

        fn is_bad(&self, text: &str) -> bool {
            self.badness.is_match(text)
        }

        fn codec(&self, name: &str) -> &Codec {
            self.codecs
                .iter()
                .find(|c| c.name == name)
                .expect("codec in ftfy tables")
        }

        /// `fixes.restore_byte_a0`: put back the A0 bytes that became spaces.
        fn restore_byte_a0(&self, bytes: &[u8]) -> Vec<u8> {
            // A_GRAVE_WORD_RE = b"\xc3 (?! |quele|quela|quilo|s )": "Ã " is usually
            // the word "à" (keep the space), except before Portuguese "às", "àquele"...
            const NOT_BEFORE: [&[u8]; 5] = [b" ", b"quele", b"quela", b"quilo", b"s "];
            let mut fixed = Vec::with_capacity(bytes.len() + 4);
            let mut i = 0;
            while i < bytes.len() {
                let after = &bytes[(i + 2).min(bytes.len())..];
                if bytes[i] == 0xc3
                    && bytes.get(i + 1) == Some(&b' ')
                    && !NOT_BEFORE.iter().any(|w| after.starts_with(w))
                {
                    fixed.extend_from_slice(b"\xc3\xa0 ");
                    i += 2;
                } else {
                    fixed.push(bytes[i]);
                    i += 1;
                }
            }
            let swap_spaces = |caps: &regex::bytes::Captures| -> Vec<u8> {
                caps[0]
                    .iter()
                    .map(|&b| if b == b' ' { 0xa0 } else { b })
                    .collect()
            };
            self.altered_utf8
                .replace_all(&fixed, swap_spaces)
                .into_owned()
        }

        /// `chardata.UTF8_DETECTOR_RE.search`.
        fn has_utf8_mojibake(&self, text: &str) -> bool {
            let chars: Vec<char> = text.chars().collect();
            (0..chars.len()).any(|p| self.utf8_mojibake_end(&chars, p) > p)
        }

        /// Where a UTF8_DETECTOR_RE match starting at `p` ends (`p` if none):
        /// not after a strict continuation char, then greedily repeat the first
        /// alternative that fits (nothing follows the `+`, so no backtracking).
        fn utf8_mojibake_end(&self, chars: &[char], p: usize) -> usize {
            if p > 0 && self.continuation_strict.contains(chars[p - 1]) {
                return p;
            }
            let continues = |from: usize, n: usize| {
                (from..from + n)
                    .all(|i| chars.get(i).is_some_and(|&c| self.continuation.contains(c)))
            };
            let mut end = p;
            while let Some(&c) = chars.get(end) {
                end += if self.first_of_2.contains(c) && continues(end + 1, 1) {
                    2
                } else if self.first_of_3.contains(c) && continues(end + 1, 2) {
                    3
                } else if self.first_of_4.contains(c) && continues(end + 1, 3) {
                    4
                } else {
                    break;
                };
            }
            end
        }

        /// `fixes.decode_inconsistent_utf8`: fix mojibake runs inside otherwise fine text.
        fn decode_inconsistent_utf8(&self, text: &str) -> String {
            let chars: Vec<char> = text.chars().collect();
            let mut out = String::with_capacity(text.len());
            let mut p = 0;
            while p < chars.len() {
                let end = self.utf8_mojibake_end(&chars, p);
                if end == p {
                    out.push(chars[p]);
                    p += 1;
                    continue;
                }
                let run: String = chars[p..end].iter().collect();
                // Shorter than the whole text, so the recursion ends.
                if end - p < chars.len() && self.is_bad(&run) {
                    out.push_str(&self.fix_encoding(&run));
                } else {
                    out.push_str(&run);
                }
                p = end;
            }
            out
        }

        /// `fixes.fix_c1_controls`: C1 controls read as Windows-1252, like browsers do.
        fn fix_c1_controls(&self, text: &str) -> String {
            if !text.chars().any(is_c1) {
                return text.to_owned();
            }
            let cp1252 = self.codec("sloppy-windows-1252");
            text.chars()
                .map(|c| {
                    if is_c1(c) {
                        cp1252.decode(c as u32 as u8)
                    } else {
                        c
                    }
                })
                .collect()
        }

        /// Python's `html.unescape` (HTML5 rules: named references with or
        /// without ';', the longest known prefix, numeric references with fix-ups).
        pub(super) fn html_unescape(&self, text: &str) -> String {
            replace_ampersands(text, |after| self.charref(after))
        }

        /// One match of Python's `html._charref` after a '&':
        /// `#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?`.
        fn charref(&self, s: &str) -> Option<(String, usize)> {
            let b = s.as_bytes();
            if b.first() == Some(&b'#') {
                let hex = matches!(b.get(1), Some(b'x' | b'X'));
                let (start, radix) = if hex { (2, 16) } else { (1, 10) };
                let digits = b[start.min(b.len())..]
                    .iter()
                    .take_while(|&&c| (c as char).is_digit(radix))
                    .count();
                if digits == 0 {
                    return None;
                }
                let end = start + digits;
                let used = if b.get(end) == Some(&b';') {
                    end + 1
                } else {
                    end
                };
                // Saturate: anything past U+10FFFF gives U+FFFD all the same.
                let num = s[start..end].chars().fold(0u32, |n, c| {
                    (n * radix + c.to_digit(radix).unwrap()).min(0x11_0000)
                });
                return Some((self.numeric_charref(num), used));
            }
            let mut end = 0;
            for (count, (i, c)) in s.char_indices().enumerate() {
                if count == 32 || matches!(c, '\t' | '\n' | '\x0c' | ' ' | '<' | '&' | '#' | ';') {
                    break;
                }
                end = i + c.len_utf8();
            }
            if end == 0 {
                return None;
            }
            let used = if s[end..].starts_with(';') {
                end + 1
            } else {
                end
            };
            let name = &s[..used];
            if let Some(value) = self.html5.get(name) {
                return Some((value.clone(), used));
            }
            // The longest prefix of at least two chars that is a known name.
            let starts: Vec<usize> = name.char_indices().map(|(i, _)| i).collect();
            for &cut in starts.iter().skip(2).rev() {
                if let Some(value) = self.html5.get(&name[..cut]) {
                    return Some((format!("{value}{}", &name[cut..]), used));
                }
            }
            Some((format!("&{name}"), used))
        }

        /// Python's `_replace_charref` for `&#NUM;`.
        fn numeric_charref(&self, num: u32) -> String {
            match num {
                0x00 => "\u{fffd}".into(),
                0x0d => "\r".into(),
                0x80..=0x9f => self
                    .codec("sloppy-windows-1252")
                    .decode(num as u8)
                    .to_string(),
                0xd800..=0xdfff | 0x11_0000.. => "\u{fffd}".into(),
                0x01..=0x08 | 0x0b | 0x0e..=0x1f | 0x7f | 0xfdd0..=0xfdef => String::new(),
                _ if num & 0xfffe == 0xfffe => String::new(),
                _ => char::from_u32(num).unwrap().to_string(),
            }
        }
    }

    /// Rewrites each '&' reference: `replace` gets the text after the '&' and
    /// returns the replacement and how many bytes after the '&' it used.
    fn replace_ampersands(text: &str, replace: impl Fn(&str) -> Option<(String, usize)>) -> String {
        if !text.contains('&') {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find('&') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            match replace(after) {
                Some((replacement, used)) => {
                    out.push_str(&replacement);
                    rest = &after[used..];
                }
                None => {
                    out.push('&');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// ftfy's HTML_ENTITY_RE `&#?[0-9A-Za-z]{1,24};`, matched after the '&':
    /// its length without the '&'.
    fn entity_len(b: &[u8]) -> Option<usize> {
        let start = usize::from(b.first() == Some(&b'#'));
        let run = b[start..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric())
            .count();
        let end = start + run;
        ((1..=24).contains(&run) && b.get(end) == Some(&b';')).then_some(end + 1)
    }

    /// Text no ftfy fixer can change: printable ASCII, tab, LF and FF, no '&'.
    fn is_plain(text: &str) -> bool {
        text.bytes()
            .all(|b| matches!(b, b'\t' | b'\n' | 0x0c | b' '..=b'~') && b != b'&')
    }

    /// End of the next ftfy segment: through the next '\n', at most MAX_DECODE_LENGTH chars.
    fn segment_end(text: &str) -> usize {
        let end = text.find('\n').map_or(text.len(), |i| i + 1);
        match text[..end].char_indices().nth(MAX_DECODE_LENGTH) {
            Some((cut, _)) => cut,
            None => end,
        }
    }

    fn is_c1(c: char) -> bool {
        ('\u{80}'..='\u{9f}').contains(&c)
    }

    /// `chardata.CONTROL_CHARS`, which `remove_control_chars` deletes.
    fn is_control(c: char) -> bool {
        matches!(
            c,
            '\u{00}'..='\u{08}'
                | '\u{0b}'
                | '\u{0e}'..='\u{1f}'
                | '\u{7f}'
                | '\u{206a}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffc}'
        )
    }

    /// Rewrites the chars that `f` maps to a string; the rest stay.
    fn replace_chars<'a>(text: &str, f: impl Fn(char) -> Option<&'a str>) -> String {
        if !text.chars().any(|c| f(c).is_some()) {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len() + 8);
        for c in text.chars() {
            match f(c) {
                Some(s) => out.push_str(s),
                None => out.push(c),
            }
        }
        out
    }

    /// `fixes.uncurl_quotes`.
    fn uncurl_quote(c: char) -> Option<&'static str> {
        match c {
            '\u{2bc}' | '\u{2018}'..='\u{201b}' => Some("'"),
            '\u{201c}'..='\u{201f}' => Some("\""),
            _ => None,
        }
    }

    /// `chardata.LIGATURES`: Latin ligatures and digraphs, split.
    fn ligature(c: char) -> Option<&'static str> {
        let split = match c {
            'Ĳ' => "IJ",
            'ĳ' => "ij",
            'ŉ' => "ʼn",
            'Ǳ' => "DZ",
            'ǲ' => "Dz",
            'ǳ' => "dz",
            'Ǆ' => "DŽ",
            'ǅ' => "Dž",
            'ǆ' => "dž",
            'Ǉ' => "LJ",
            'ǈ' => "Lj",
            'ǉ' => "lj",
            'Ǌ' => "NJ",
            'ǋ' => "Nj",
            'ǌ' => "nj",
            'ﬀ' => "ff",
            'ﬁ' => "fi",
            'ﬂ' => "fl",
            'ﬃ' => "ffi",
            'ﬄ' => "ffl",
            'ﬅ' => "ſt",
            'ﬆ' => "st",
            _ => return None,
        };
        Some(split)
    }

    /// `fixes.fix_line_breaks`: CRLF, CR, U+2028, U+2029 and U+0085 become LF.
    fn fix_line_breaks(text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\r' => {
                    chars.next_if_eq(&'\n');
                    out.push('\n');
                }
                '\u{2028}' | '\u{2029}' | '\u{85}' => out.push('\n'),
                _ => out.push(c),
            }
        }
        out
    }

    /// Bytes as ftfy's "utf-8-variants" codec reads them: UTF-8, plus Java's
    /// C0 80 for NUL and CESU-8 surrogate pairs. Without those bytes it is
    /// plain strict UTF-8. `None` where Python raises UnicodeDecodeError.
    fn decode_utf8_variants(bytes: &[u8]) -> Option<String> {
        let mut out = String::with_capacity(bytes.len());
        let mut rest = bytes;
        while !rest.is_empty() {
            let Some(at) = (0..rest.len()).find(|&i| special_at(rest, i)) else {
                out.push_str(std::str::from_utf8(rest).ok()?);
                break;
            };
            if at > 0 {
                out.push_str(std::str::from_utf8(&rest[..at]).ok()?);
                rest = &rest[at..];
                continue;
            }
            if rest[0] == 0xc0 {
                // Matched C0 80, or C0 before the end (`$` also matches before a final "\n").
                if rest.len() < 2 {
                    return None;
                }
                out.push('\0');
                rest = &rest[2..];
            } else {
                // ED: a CESU-8 pair, or an error.
                let final_newline = rest.len() == 6 && rest.get(5) == Some(&b'\n');
                let is_pair = rest.len() >= 6
                    && (0xa0..=0xaf).contains(&rest[1])
                    && (0x80..=0xbf).contains(&rest[2])
                    && rest[3] == 0xed
                    && (0xb0..=0xbf).contains(&rest[4])
                    && ((0x80..=0xbf).contains(&rest[5]) || final_newline);
                if !is_pair {
                    return None;
                }
                let cp = (u32::from(rest[1] & 0x0f) << 16)
                    + (u32::from(rest[2] & 0x3f) << 10)
                    + (u32::from(rest[4] & 0x0f) << 6)
                    + u32::from(rest[5] & 0x3f)
                    + 0x10000;
                out.push(char::from_u32(cp)?);
                rest = &rest[6..];
            }
        }
        Some(out)
    }

    /// Whether utf8_variants.SPECIAL_BYTES_RE matches at `i`: `\xc0(\x80|$)`,
    /// or `\xed([\xa0-\xbf]|$)([\x80-\xbf]|$)` (its CESU-8 alternative only
    /// matches where this one does). Python's `$` also matches before a final "\n".
    fn special_at(b: &[u8], i: usize) -> bool {
        let at_end = |p: usize| p == b.len() || (p + 1 == b.len() && b[p] == b'\n');
        let in_range = |p: usize, lo: u8, hi: u8| b.get(p).is_some_and(|&x| (lo..=hi).contains(&x));
        match b[i] {
            0xc0 => in_range(i + 1, 0x80, 0x80) || at_end(i + 1),
            0xed => {
                at_end(i + 1)
                    || (in_range(i + 1, 0xa0, 0xbf)
                        && (at_end(i + 2) || in_range(i + 2, 0x80, 0xbf)))
            }
            _ => false,
        }
    }

    /// One of ftfy's single-byte codecs. "sloppy-" ones decode their undefined
    /// bytes like Latin-1, and use byte 1A for U+FFFD.
    struct Codec {
        name: String,
        sloppy: bool,
        upper: Vec<char>,
        encoder: HashMap<char, u8>,
    }

    impl Codec {
        fn new(name: &str, upper_half: &str) -> Codec {
            let upper: Vec<char> = upper_half.chars().collect();
            assert_eq!(upper.len(), 128, "codec {name} covers bytes 80..FF");
            let encoder = upper
                .iter()
                .enumerate()
                .map(|(i, &c)| (c, 0x80 + i as u8))
                .collect();
            Codec {
                name: name.to_owned(),
                sloppy: name.starts_with("sloppy-"),
                upper,
                encoder,
            }
        }

        /// `text.encode(codec)`, or `None` where ftfy's `possible_encoding` says no.
        fn encode(&self, text: &str) -> Option<Vec<u8>> {
            text.chars()
                .map(|c| match c {
                    '\u{1a}' if self.sloppy => None,
                    '\u{fffd}' if self.sloppy => Some(0x1a),
                    '\0'..='\u{7f}' => Some(c as u8),
                    _ => self.encoder.get(&c).copied(),
                })
                .collect()
        }

        fn decode(&self, byte: u8) -> char {
            match byte {
                0x1a if self.sloppy => '\u{fffd}',
                0x00..=0x7f => byte as char,
                _ => self.upper[byte as usize - 0x80],
            }
        }

        /// The non-sloppy codec: ASCII is ASCII (0x1A too), undefined bytes are errors.
        fn decode_strict(&self, byte: u8) -> Option<char> {
            if byte < 0x80 {
                return Some(byte as char);
            }
            let c = self.decode(byte);
            (c as u32 != u32::from(byte) || !is_c1(c)).then_some(c)
        }
    }

    /// A regex-style character class: single chars and `a-b` ranges.
    struct CharSet(Vec<(char, char)>);

    impl CharSet {
        /// Parses a Python class body: '-' between two chars makes a range.
        fn parse(spec: &str) -> CharSet {
            let chars: Vec<char> = spec.chars().collect();
            let mut ranges = Vec::new();
            let mut i = 0;
            while i < chars.len() {
                if i + 2 < chars.len() && chars[i + 1] == '-' {
                    ranges.push((chars[i], chars[i + 2]));
                    i += 3;
                } else {
                    ranges.push((chars[i], chars[i]));
                    i += 1;
                }
            }
            CharSet(ranges)
        }

        fn contains(&self, c: char) -> bool {
            self.0.iter().any(|&(lo, hi)| lo <= c && c <= hi)
        }

        /// The class body in Rust regex syntax, every char escaped.
        fn regex_class(&self) -> String {
            self.0
                .iter()
                .map(|&(lo, hi)| match lo == hi {
                    true => format!(r"\x{{{:x}}}", lo as u32),
                    false => format!(r"\x{{{:x}}}-\x{{{:x}}}", lo as u32, hi as u32),
                })
                .collect()
        }
    }

    /// Replaces each `{name}` in a regex template, leaving `\x{..}` escapes alone.
    fn fill_template(template: &str, fills: &HashMap<&str, String>) -> String {
        let mut out = String::with_capacity(template.len() * 8);
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            let (head, tail) = rest.split_at(open);
            out.push_str(head);
            let close = tail.find('}').expect("closed brace") + 1;
            if head.ends_with("\\x") {
                out.push_str(&tail[..close]);
            } else {
                let name = &tail[1..close - 1];
                out.push_str(fills.get(name).unwrap_or_else(|| panic!("no class {name}")));
            }
            rest = &tail[close..];
        }
        out.push_str(rest);
        out
    }

    fn char_from_hex(hex: &str) -> char {
        char::from_u32(u32::from_str_radix(hex, 16).expect("hex code point"))
            .expect("valid code point")
    }

    fn parse_hex(field: &str) -> String {
        field
            .split(' ')
            .filter(|h| !h.is_empty())
            .map(char_from_hex)
            .collect()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn decodes_utf8_variants_like_ftfy() {
            assert_eq!(
                decode_utf8_variants(b"caf\xc3\xa9").as_deref(),
                Some("café")
            );
            assert_eq!(decode_utf8_variants(b"a\xc0\x80b").as_deref(), Some("a\0b"));
            assert_eq!(
                decode_utf8_variants(b"\xed\xa0\xbd\xed\xb8\x80").as_deref(),
                Some("😀")
            );
            assert_eq!(decode_utf8_variants(b"\xed\xa0\xbd"), None);
            assert_eq!(decode_utf8_variants(b"\xc3"), None);
        }

        #[test]
        fn strict_cp1252_rejects_undefined_bytes() {
            let fixer = Fixer::new();
            let cp1252 = fixer.codec("sloppy-windows-1252");
            assert_eq!(cp1252.decode_strict(0x80), Some('€'));
            assert_eq!(cp1252.decode_strict(0x81), None);
            assert_eq!(cp1252.decode_strict(0x41), Some('A'));
            assert_eq!(cp1252.decode_strict(0x1a), Some('\u{1a}'));
            assert_eq!(cp1252.decode_strict(0xe9), Some('é'));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocab_has_unique_tokens() {
        let tok = Tokenizer::global();
        let unique: std::collections::HashSet<&String> = tok.vocab.iter().collect();
        assert_eq!(unique.len(), VOCAB_SIZE);
        assert_eq!(tok.vocab[SOT as usize], "<|startoftext|>");
        assert_eq!(tok.vocab[0], "!");
        assert_eq!(tok.vocab[256], "!</w>");
    }

    #[test]
    fn tokenizer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Tokenizer>();
    }
}
