//! Flickr30k: `--split full` is the official Long-CLIP protocol (every line
//! of `results_20130124.token`, `IMAGE#N<TAB>caption`, consecutive lines of
//! one image forming its captions, images from `flickr30k-images/`);
//! `--split karpathy` is the 1k test of `dataset_flickr30k.json`.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::coco::load_karpathy;
use super::{find_first, first_captions, require_dir, Dataset, LoadOptions};

const TOKEN_FILE: &str = "results_20130124.token";
const IMAGE_DIR: &str = "flickr30k-images";

pub fn load(root: &Path, opts: &LoadOptions) -> Result<Dataset> {
    match opts.split.as_deref().unwrap_or("full") {
        "full" => load_full(root, opts),
        "karpathy" => load_karpathy(root, opts, "dataset_flickr30k.json", Some(IMAGE_DIR), "Flickr30k"),
        other => bail!("unknown Flickr30k split '{other}' (expected full or karpathy)"),
    }
}

fn load_full(root: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let Some(path) = find_first(root, &[TOKEN_FILE]) else {
        bail!(
            "{}: not a Flickr30k layout: expected {TOKEN_FILE} and {IMAGE_DIR}/ there \
             (or --split karpathy with dataset_flickr30k.json)",
            root.display()
        );
    };
    let image_dir = opts.image_root.clone().unwrap_or_else(|| root.join(IMAGE_DIR));
    require_dir(&image_dir, "the Flickr30k layout keeps the images there (or pass --image-root)")?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read as UTF-8 text", path.display()))?;
    let mut data = Dataset { split: "full".into(), ..Default::default() };
    let mut names: Vec<String> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (name, caption) = parse_line(line).with_context(|| format!("{}:{}", path.display(), n + 1))?;
        if names.last().map(String::as_str) != Some(name) {
            names.push(name.to_string());
            data.captions.push(Vec::new());
        }
        data.captions.last_mut().expect("pushed above").push(caption.to_string());
    }
    let mut seen = std::collections::HashSet::new();
    for name in &names {
        if !seen.insert(name) {
            bail!("{}: the captions of {name} are not on consecutive lines", path.display());
        }
    }
    data.images = names.iter().map(|n| image_dir.join(n)).collect();
    data.captions = data.captions.into_iter().map(|c| first_captions(c, opts.max_captions)).collect();
    Ok(data)
}

/// `1000092795.jpg#0<TAB>Two young guys ...` -> ("1000092795.jpg", caption).
fn parse_line(line: &str) -> Result<(&str, &str)> {
    let Some((key, caption)) = line.split_once('\t') else {
        bail!("expected IMAGE#N, a tab, then the caption; found no tab");
    };
    let Some((name, number)) = key.rsplit_once('#') else {
        bail!("expected IMAGE#N before the tab, found '{key}'");
    };
    if name.is_empty() || number.parse::<u32>().is_err() {
        bail!("expected IMAGE#N before the tab, found '{key}'");
    }
    // The official script keeps only the second field of a line.
    let caption = caption.split('\t').next().unwrap_or_default();
    if caption.trim().is_empty() {
        bail!("empty caption for {key}");
    }
    Ok((name, caption))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lines_parse_and_bad_ones_are_explained() {
        assert_eq!(parse_line("1.jpg#0\tA dog.").unwrap(), ("1.jpg", "A dog."));
        assert_eq!(parse_line("a#b.jpg#12\tx\ty").unwrap(), ("a#b.jpg", "x"));
        assert!(parse_line("1.jpg#0 A dog.").unwrap_err().to_string().contains("no tab"));
        assert!(parse_line("1.jpg\tA dog.").unwrap_err().to_string().contains("IMAGE#N"));
        assert!(parse_line("1.jpg#0\t  ").unwrap_err().to_string().contains("empty caption"));
    }
}
