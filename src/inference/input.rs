//! What `inference` reads: brace-expanded lists of webdataset shards, or
//! image files (a folder or a list) with their `.txt` and `.json` siblings,
//! and the partition rule that splits them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::preprocess::is_image_path;

/// `--input-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    /// Image files: a folder (recursive) or a text file listing them.
    Files,
    /// Tar shards in webdataset layout (what img2dataset writes).
    Webdataset,
}

impl InputFormat {
    pub fn parse(s: &str) -> Result<InputFormat> {
        match s {
            "files" => Ok(InputFormat::Files),
            "webdataset" => Ok(InputFormat::Webdataset),
            other => bail!("--input-format '{other}': expected files or webdataset"),
        }
    }
}

/// One image file and the files that ride along with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSample {
    /// The image, as clip-retrieval writes it in `image_path`: the input
    /// folder joined with the path under it (or the listed path).
    pub image: PathBuf,
    /// `KEY.txt` beside the image, when present.
    pub caption: Option<PathBuf>,
    /// `KEY.json` beside the image, when present.
    pub metadata: Option<PathBuf>,
}

/// Whether input number `n` (0-based, in listed order) belongs to partition
/// `index` of `count`: clip-retrieval's `Sampler` (`i % count == index`).
pub fn takes(n: usize, index: usize, count: usize) -> bool {
    n % count == index
}

/// The webdataset shards named by `pattern` (brace ranges expanded, as
/// Python's `braceexpand`), all of which must exist: the error lists the
/// missing ones.
pub fn list_shards(pattern: &str) -> Result<Vec<PathBuf>> {
    if pattern.contains("://") || pattern.starts_with("pipe:") {
        bail!("--input '{pattern}': only local tar files are read; copy or mount the shards first");
    }
    let shards: Vec<PathBuf> = expand_braces(pattern)?.into_iter().map(PathBuf::from).collect();
    if let Some(dir) = shards.iter().find(|p| p.is_dir()) {
        bail!("--input '{pattern}': {} is a folder; name the tar files in it, e.g. '{}/{{00000..00099}}.tar'", dir.display(), dir.display());
    }
    if pattern.contains(['*', '?', '[']) && shards.iter().any(|p| !p.exists()) {
        bail!("--input '{pattern}': wildcards are not expanded; name the shards with a brace range, e.g. 'DIR/{{00000..00099}}.tar'");
    }
    let missing: Vec<&PathBuf> = shards.iter().filter(|p| !p.is_file()).collect();
    if !missing.is_empty() {
        let shown: Vec<String> = missing.iter().take(5).map(|p| p.display().to_string()).collect();
        let more = if missing.len() > 5 { format!(" and {} more", missing.len() - 5) } else { String::new() };
        let named = if shards.len() == 1 { "1 shard".to_string() } else { format!("{} shards", shards.len()) };
        let which = if shards.len() == 1 { "which does not exist".to_string() } else { format!("{} of which do not exist", missing.len()) };
        bail!(
            "--input '{pattern}' names {named}, {which}: {}{more}; fix the range or fetch the shards",
            shown.join(", ")
        );
    }
    Ok(shards)
}

/// Image samples under a folder (recursive, hidden names skipped, sorted by
/// path) or listed one per line in a text file (in listed order, relative
/// paths taken from the current directory). A `.txt` or `.json` with the
/// image's path minus its extension rides along.
pub fn list_files(input: &Path) -> Result<Vec<FileSample>> {
    let images = if input.is_dir() {
        let mut found = Vec::new();
        walk(input, &mut found)?;
        found.sort();
        found
    } else if is_image_path(input) {
        vec![input.to_path_buf()]
    } else {
        let text = std::fs::read_to_string(input).with_context(|| format!("{}: cannot read the file list", input.display()))?;
        text.lines().map(str::trim).filter(|l| !l.is_empty()).map(PathBuf::from).collect()
    };
    Ok(images.into_iter().map(sample_of).collect())
}

fn sample_of(image: PathBuf) -> FileSample {
    let sibling = |ext: &str| Some(image.with_extension(ext)).filter(|p| p.is_file());
    FileSample { caption: sibling("txt"), metadata: sibling("json"), image }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let listing = std::fs::read_dir(dir).with_context(|| format!("{}: cannot list directory", dir.display()))?;
    for entry in listing {
        let entry = entry.with_context(|| format!("{}: cannot list directory", dir.display()))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if is_image_path(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Bash-style brace expansion as Python's `braceexpand` does it, which
/// clip-retrieval and webdataset use for shard lists: `{a,b}` alternatives,
/// `{0..9}` and `{a..e}` ranges with an optional `..step`, zero padding to
/// the wider end when either end has a leading zero (`{000..099}`), nested
/// braces, and `\{` for a literal brace.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>> {
    let chars: Vec<char> = pattern.chars().collect();
    expand(&chars).with_context(|| format!("--input '{pattern}': bad brace pattern"))
}

fn expand(chars: &[char]) -> Result<Vec<String>> {
    let Some(open) = find_open(chars) else {
        return Ok(vec![unescape(chars)]);
    };
    let close = find_close(chars, open).context("a '{' is never closed")?;
    let prefix = unescape(&chars[..open]);
    let body = &chars[open + 1..close];
    let suffixes = expand(&chars[close + 1..])?;
    let middles: Vec<String> = match range(body)? {
        Some(items) => items,
        None => {
            let parts = split_top(body);
            if parts.len() < 2 {
                // Not an expansion (`{x}`): braceexpand keeps it literally.
                let mut inner = vec!['{'];
                inner.extend_from_slice(body);
                inner.push('}');
                return Ok(cross(&prefix, &expand(&inner_literal(&inner))?, &suffixes));
            }
            let mut all = Vec::new();
            for part in parts {
                all.extend(expand(part)?);
            }
            all
        }
    };
    Ok(cross(&prefix, &middles, &suffixes))
}

/// A single-item brace stays as text: escape its braces so `expand` does
/// not try again.
fn inner_literal(chars: &[char]) -> Vec<char> {
    let mut out = vec!['\\', '{'];
    out.extend_from_slice(&chars[1..chars.len() - 1]);
    out.extend(['\\', '}']);
    out
}

fn cross(prefix: &str, middles: &[String], suffixes: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(middles.len() * suffixes.len());
    for m in middles {
        for s in suffixes {
            out.push(format!("{prefix}{m}{s}"));
        }
    }
    out
}

fn find_open(chars: &[char]) -> Option<usize> {
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '{' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

fn find_close(chars: &[char], open: usize) -> Option<usize> {
    let mut depth = 0;
    let mut i = open;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 1,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Splits at commas outside nested braces.
fn split_top(body: &[char]) -> Vec<&[char]> {
    let mut parts = Vec::new();
    let (mut depth, mut start, mut i) = (0, 0, 0);
    while i < body.len() {
        match body[i] {
            '\\' => i += 1,
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&body[start..]);
    parts
}

fn unescape(chars: &[char]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\\' && i + 1 < chars.len() {
            i += 1;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// `A..B` or `A..B..STEP` over integers or single letters; None if `body`
/// is not a range.
fn range(body: &[char]) -> Result<Option<Vec<String>>> {
    let text: String = body.iter().collect();
    let parts: Vec<&str> = text.split("..").collect();
    if !(2..=3).contains(&parts.len()) {
        return Ok(None);
    }
    let step: i64 = match parts.get(2) {
        Some(s) => match s.parse::<i64>() {
            Ok(v) => v.abs().max(1),
            Err(_) => return Ok(None),
        },
        None => 1,
    };
    let (left, right) = (parts[0], parts[1]);
    if let (Ok(a), Ok(b)) = (left.parse::<i64>(), right.parse::<i64>()) {
        let padded = [left, right].iter().any(|s| *s != "0" && *s != "-0" && (s.starts_with('0') || s.starts_with("-0")));
        let width = if padded { left.len().max(right.len()) } else { 0 };
        let items = stepped(a, b, step).map(|v| if v < 0 { format!("-{:0w$}", -v, w = width.saturating_sub(1)) } else { format!("{v:0width$}") });
        return Ok(Some(items.collect()));
    }
    let (mut l, mut r) = (left.chars(), right.chars());
    if let (Some(a), None, Some(b), None) = (l.next(), l.next(), r.next(), r.next()) {
        if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() && a.is_ascii_lowercase() != b.is_ascii_lowercase() {
            // braceexpand yields just the two ends for a mixed-case range.
            return Ok(Some(vec![a.to_string(), b.to_string()]));
        }
        if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() {
            return Ok(Some(stepped(a as i64, b as i64, step).map(|c| (c as u8 as char).to_string()).collect()));
        }
    }
    Ok(None)
}

fn stepped(a: i64, b: i64, step: i64) -> impl Iterator<Item = i64> {
    let up = a <= b;
    let count = (a - b).unsigned_abs() / step as u64 + 1;
    (0..count as i64).map(move |k| if up { a + k * step } else { a - k * step })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(p: &str) -> Vec<String> {
        expand_braces(p).unwrap()
    }

    #[test]
    fn ranges_pad_like_braceexpand() {
        assert_eq!(x("ds/{00000..00002}.tar"), ["ds/00000.tar", "ds/00001.tar", "ds/00002.tar"]);
        assert_eq!(x("{8..11}"), ["8", "9", "10", "11"]);
        assert_eq!(x("{08..11}"), ["08", "09", "10", "11"]);
        assert_eq!(x("{0..4..2}"), ["0", "2", "4"]);
        assert_eq!(x("{3..1}"), ["3", "2", "1"]);
        assert_eq!(x("{a..c}"), ["a", "b", "c"]);
        // Checked against Python's braceexpand 0.1.7.
        assert_eq!(x("{-03..2}"), ["-03", "-02", "-01", "000", "001", "002"]);
        assert_eq!(x("{1..10..3}"), ["1", "4", "7", "10"]);
        assert_eq!(x("{1..3..-1}"), ["1", "2", "3"]);
        assert_eq!(x("{a..Z}"), ["a", "Z"]);
        assert_eq!(x("{}"), ["{}"]);
    }

    #[test]
    fn alternatives_nest_and_multiply() {
        assert_eq!(x("{a,b}{1..2}"), ["a1", "a2", "b1", "b2"]);
        assert_eq!(x("s/{x,{y,z}}.tar"), ["s/x.tar", "s/y.tar", "s/z.tar"]);
        assert_eq!(x("plain.tar"), ["plain.tar"]);
        assert_eq!(x("{single}.tar"), ["{single}.tar"]);
        assert_eq!(x(r"a\{b\}"), ["a{b}"]);
    }

    #[test]
    fn unclosed_brace_is_an_error() {
        let e = expand_braces("ds/{000..009.tar").unwrap_err();
        assert!(format!("{e:#}").contains("never closed"), "{e:#}");
    }

    #[test]
    fn partition_rule_is_strided() {
        let taken: Vec<usize> = (0..10).filter(|&n| takes(n, 1, 3)).collect();
        assert_eq!(taken, [1, 4, 7]);
    }
}
