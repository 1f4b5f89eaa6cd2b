//! Urban-1k / Urban-200: `image/N.jpg` and `caption/N.txt`, paired by file
//! stem; the caption is the first line of the text file (the official script
//! reads `f.readlines()[0]`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{Dataset, LoadOptions};
use crate::preprocess::is_image_path;

pub fn load(root: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let caption_dir = root.join("caption");
    let image_dir = opts.image_root.clone().unwrap_or_else(|| root.join("image"));
    if !caption_dir.is_dir() || !image_dir.is_dir() {
        bail!(
            "{}: not an Urban layout: expected image/ (N.jpg) and caption/ (N.txt, the caption on its first line) there",
            root.display()
        );
    }
    let captions = files_by_stem(&caption_dir, |p| has_extension(p, "txt"), "caption files")?;
    let images = files_by_stem(&image_dir, is_image_path, "images")?;
    if captions.is_empty() {
        bail!("{}: no .txt caption files", caption_dir.display());
    }
    let mut stems: Vec<&String> = captions.keys().collect();
    stems.sort_by(|a, b| natural_key(a).cmp(&natural_key(b)));
    let mut data = Dataset { split: "test".into(), ..Default::default() };
    let ext = usual_extension(&images);
    for stem in stems {
        data.captions.push(vec![first_line(&captions[stem])?]);
        // A caption without its image is reported later as a missing image,
        // named with the extension the other images have (synth writes .png).
        let image = images.get(stem).cloned().unwrap_or_else(|| image_dir.join(format!("{stem}.{ext}")));
        data.images.push(image);
    }
    let orphans: Vec<&String> = images.keys().filter(|s| !captions.contains_key(*s)).collect();
    if !orphans.is_empty() {
        data.notes.push(format!("{} images have no caption file and are not used (e.g. {})", orphans.len(), orphans[0]));
    }
    Ok(data)
}

/// The most common extension among the images (ties: the first in name
/// order), "jpg" when there are none.
fn usual_extension(images: &BTreeMap<String, PathBuf>) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for p in images.values() {
        if let Some(e) = p.extension() {
            *counts.entry(e.to_string_lossy().into_owned()).or_default() += 1;
        }
    }
    counts.into_iter().fold((String::from("jpg"), 0), |best, (e, n)| if n > best.1 { (e, n) } else { best }).0
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

/// Files of `dir` accepted by `keep`, by stem; two files with one stem are an error.
fn files_by_stem(dir: &Path, keep: impl Fn(&Path) -> bool, what: &str) -> Result<BTreeMap<String, PathBuf>> {
    let mut out: BTreeMap<String, PathBuf> = BTreeMap::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
    for entry in entries {
        let path = entry.with_context(|| format!("{}: cannot list", dir.display()))?.path();
        let hidden = path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden || !path.is_file() || !keep(&path) {
            continue;
        }
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(other) = out.insert(stem.clone(), path.clone()) {
            bail!("two {what} for one pair '{stem}': {} and {}", other.display(), path.display());
        }
    }
    Ok(out)
}

/// Numbers in numeric order (1, 2, 10), anything else after them by name.
fn natural_key(stem: &str) -> (u8, u64, &str) {
    match stem.parse::<u64>() {
        Ok(n) => (0, n, stem),
        Err(_) => (1, 0, stem),
    }
}

/// The first line, as Python's `readlines()[0]` splits lines (\n, \r\n or \r).
fn first_line(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if bytes.is_empty() {
        bail!("{}: the caption file is empty", path.display());
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!("{}: not UTF-8 text (invalid byte at offset {})", path.display(), e.utf8_error().valid_up_to())
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let line = text.split(['\n', '\r']).next().unwrap_or_default();
    if line.trim().is_empty() {
        bail!("{}: the first line, which holds the caption, is empty", path.display());
    }
    Ok(line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_sort_numerically() {
        let mut s = vec!["10", "2", "b", "1", "a"];
        s.sort_by(|a, b| natural_key(a).cmp(&natural_key(b)));
        assert_eq!(s, ["1", "2", "10", "a", "b"]);
    }

    #[test]
    fn first_line_follows_python_line_endings() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("1.txt");
        for (content, want) in [("a b\nc", "a b"), ("a\r\nb", "a"), ("a\rb", "a"), ("\u{feff}x", "x"), ("only", "only")] {
            std::fs::write(&p, content).unwrap();
            assert_eq!(first_line(&p).unwrap(), want);
        }
        std::fs::write(&p, "").unwrap();
        assert!(first_line(&p).unwrap_err().to_string().contains("is empty"));
        std::fs::write(&p, "\nsecond").unwrap();
        assert!(first_line(&p).unwrap_err().to_string().contains("first line"));
        std::fs::write(&p, [0xffu8, 0x41]).unwrap();
        assert!(first_line(&p).unwrap_err().to_string().contains("not UTF-8"));
    }
}
