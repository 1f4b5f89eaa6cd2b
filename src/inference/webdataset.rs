//! Webdataset shards: tar files whose members are grouped into samples by
//! key, as the `webdataset` library does (`tariterators.py`:
//! `base_plus_ext` and `group_by_keys`).
//!
//! A member `dir/KEY.EXT` has key `dir/KEY`, the path up to the first dot of
//! the file name, and extension `EXT`, everything after that dot, lowercased.
//! Consecutive members with the same key form one sample; a key that comes
//! back later, or an extension seen twice in a row, starts a new sample with
//! the same key (the caller decides what a repeated key means). Members that
//! are not regular files, have no dot, or are `__NAME__` metadata are not
//! part of any sample.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{Context, Result};

/// One sample: its key and its members' extensions (lowercased) and bytes,
/// in tar order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub key: String,
    pub members: Vec<(String, Vec<u8>)>,
}

impl Sample {
    /// The bytes of the member with extension `ext`.
    pub fn get(&self, ext: &str) -> Option<&[u8]> {
        self.members.iter().find(|(e, _)| e == ext).map(|(_, b)| b.as_slice())
    }

    /// Takes the bytes of the member with extension `ext` out of the sample.
    pub fn take(&mut self, ext: &str) -> Option<Vec<u8>> {
        self.members.iter_mut().find(|(e, _)| e == ext).map(|(_, b)| std::mem::take(b))
    }

    /// The image member: the first of `IMAGE_EXTENSIONS` present.
    pub fn image(&self) -> Option<(&'static str, &[u8])> {
        IMAGE_EXTENSIONS.iter().find_map(|ext| self.get(ext).map(|b| (*ext, b)))
    }
}

/// Image members recognised in a sample, in order of preference.
pub const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// How reading a shard ended.
#[derive(Debug, Default)]
pub struct ShardEnd {
    /// Samples handed to the callback.
    pub samples: usize,
    /// Regular-file members left out of samples (no extension, `__x__`).
    pub ignored_members: usize,
    /// Why the shard stopped early (truncated or corrupt tar), naming it;
    /// every complete sample before that point was handed over.
    pub error: Option<String>,
    /// The key of the sample being read when the error came: it may be
    /// incomplete, so it is not handed over.
    pub cut_sample: Option<String>,
}

/// Reads `path` member by member, calling `each` for every sample in order.
/// An unreadable file is an error; a tar that breaks off part way is not:
/// the samples before the break are delivered and [`ShardEnd::error`] says
/// where it broke. An error from `each` stops the read and is returned.
pub fn read_shard(path: &Path, mut each: impl FnMut(Sample) -> Result<()>) -> Result<ShardEnd> {
    let file = File::open(path).with_context(|| format!("{}: cannot open shard", path.display()))?;
    let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, file));
    let mut end = ShardEnd::default();
    let mut current = Sample::default();
    let entries = match archive.entries() {
        Ok(e) => e,
        Err(e) => {
            end.error = Some(format!("{}: not a readable tar file: {e}", path.display()));
            return Ok(end);
        }
    };
    let mut members = 0usize;
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                end.error = Some(format!("{}: tar broken after {members} members: {e}", path.display()));
                break;
            }
        };
        members += 1;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some((key, ext)) = split_key(&name) else {
            end.ignored_members += 1;
            continue;
        };
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        if let Err(e) = entry.read_to_end(&mut bytes) {
            end.error = Some(format!("{}: tar broken in member '{name}' (member {members}): {e}", path.display()));
            end.cut_sample = Some(key.to_string());
            current = Sample::default();
            break;
        }
        let starts_new = current.key != key || current.get(&ext).is_some();
        if starts_new && !current.members.is_empty() {
            end.samples += 1;
            each(std::mem::take(&mut current))?;
        }
        current.key = key.to_string();
        current.members.push((ext, bytes));
    }
    if members == 0 && end.error.is_none() {
        let empty = std::fs::metadata(path).map(|m| m.len() == 0).unwrap_or(false);
        let what = if empty { "is empty (0 bytes)" } else { "holds no members" };
        end.error = Some(format!("{}: {what}: not a webdataset shard (a failed download?)", path.display()));
    }
    if !current.members.is_empty() {
        if end.error.is_some() {
            // The break may have cut this sample's remaining members.
            end.cut_sample = Some(current.key);
        } else {
            end.samples += 1;
            each(current)?;
        }
    }
    Ok(end)
}

/// `dir/KEY.EXT` -> (`dir/KEY`, `ext` lowercased), webdataset's
/// `base_plus_ext`; None for names with no dot in the file name and for
/// top-level `__NAME__` metadata members.
pub fn split_key(name: &str) -> Option<(&str, String)> {
    let file_start = name.rfind('/').map_or(0, |i| i + 1);
    let file = &name[file_start..];
    if file_start == 0 && file.starts_with("__") && file.ends_with("__") {
        return None;
    }
    // `[^.]+` in webdataset's pattern: at least one character before the dot.
    let dot = file.find('.').filter(|&d| d > 0)?;
    Some((&name[..file_start + dot], file[dot + 1..].to_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_end_at_the_first_dot_of_the_file_name() {
        assert_eq!(split_key("000001.jpg"), Some(("000001", "jpg".to_string())));
        assert_eq!(split_key("a/b.c/000001.JPG"), Some(("a/b.c/000001", "jpg".to_string())));
        assert_eq!(split_key("x.y.json"), Some(("x", "y.json".to_string())));
        assert_eq!(split_key("README"), None);
        assert_eq!(split_key("__meta__"), None);
        assert_eq!(split_key("d/.hidden.jpg"), None);
    }
}
