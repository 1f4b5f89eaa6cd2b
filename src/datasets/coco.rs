//! COCO captions: the official Long-CLIP protocol (`captions_val2017.json` +
//! `val2017/`, images in id order as torchvision's `CocoCaptions` lists
//! them, the first 5 captions of each in annotation order) and the Karpathy
//! 5k test split (`dataset_coco.json`, images under `val2014/`).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Result};
use serde::Deserialize;

use super::{find_first, first_captions, read_json, require_dir, Dataset, LoadOptions};

#[derive(Deserialize)]
struct CaptionsFile {
    images: Vec<Image>,
    annotations: Vec<Annotation>,
}

#[derive(Deserialize)]
struct Image {
    id: u64,
    file_name: String,
}

#[derive(Deserialize)]
struct Annotation {
    image_id: u64,
    caption: String,
}

pub fn load(root: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let split = opts.split.clone().unwrap_or_else(|| "val2017".into());
    if split == "karpathy" {
        return load_karpathy(root, opts, "dataset_coco.json", None, "coco");
    }
    let name = format!("captions_{split}.json");
    let Some(ann) = find_first(root, &[&format!("annotations/{name}"), &name]) else {
        bail!(
            "{}: not a COCO layout: expected annotations/{name} (or {name}) and {split}/ under it, \
             as the official script reads them; for the Karpathy split use --split karpathy with dataset_coco.json",
            root.display()
        );
    };
    let image_dir = opts.image_root.clone().unwrap_or_else(|| root.join(&split));
    require_dir(&image_dir, &format!("the COCO layout keeps the {split} images there (or pass --image-root)"))?;
    let file: CaptionsFile = read_json(&ann)?;
    let mut by_image: HashMap<u64, Vec<String>> = file.images.iter().map(|i| (i.id, Vec::new())).collect();
    for a in file.annotations {
        match by_image.get_mut(&a.image_id) {
            Some(c) => c.push(a.caption),
            None => bail!("{}: a caption refers to image id {}, which is not in \"images\"", ann.display(), a.image_id),
        }
    }
    let mut images = file.images;
    images.sort_by_key(|i| i.id);
    let mut data = Dataset { split, ..Default::default() };
    for image in images {
        let captions = by_image.remove(&image.id).unwrap_or_default();
        if captions.is_empty() {
            data.notes.push(format!("image id {} ({}) has no captions and is left out", image.id, image.file_name));
            continue;
        }
        data.images.push(image_dir.join(&image.file_name));
        data.captions.push(first_captions(captions, opts.max_captions));
    }
    Ok(data)
}

#[derive(Deserialize)]
struct KarpathyFile {
    images: Vec<KarpathyImage>,
}

#[derive(Deserialize)]
struct KarpathyImage {
    #[serde(default)]
    filepath: Option<String>,
    filename: String,
    split: String,
    sentences: Vec<Sentence>,
}

#[derive(Deserialize)]
struct Sentence {
    raw: String,
}

/// Karpathy's split files (`dataset_coco.json`, `dataset_flickr30k.json`):
/// the images whose `split` is "test", their first captions (`raw`).
pub fn load_karpathy(
    root: &Path,
    opts: &LoadOptions,
    file_name: &str,
    image_subdir: Option<&str>,
    what: &str,
) -> Result<Dataset> {
    let Some(path) = find_first(root, &[file_name, &format!("annotations/{file_name}")]) else {
        bail!("{}: not a Karpathy-split {what} layout: expected {file_name} there (or in annotations/)", root.display());
    };
    let image_root = match (&opts.image_root, image_subdir) {
        (Some(dir), _) => dir.clone(),
        (None, Some(sub)) => root.join(sub),
        (None, None) => root.to_path_buf(),
    };
    let file: KarpathyFile = read_json(&path)?;
    let mut data = Dataset { split: "karpathy".into(), ..Default::default() };
    for image in file.images.into_iter().filter(|i| i.split == "test") {
        let mut p = image_root.clone();
        if let Some(dir) = &image.filepath {
            p.push(dir);
        }
        p.push(&image.filename);
        let captions: Vec<String> = image.sentences.into_iter().map(|s| s.raw).collect();
        if captions.is_empty() {
            bail!("{}: test image {} has no sentences", path.display(), image.filename);
        }
        data.images.push(p);
        data.captions.push(first_captions(captions, opts.max_captions));
    }
    if data.images.is_empty() {
        bail!("{}: no image has \"split\": \"test\"", path.display());
    }
    Ok(data)
}
