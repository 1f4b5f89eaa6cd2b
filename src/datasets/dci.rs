//! DCI (Densely Captioned Images, github facebookresearch/DCI) as
//! long-caption retrieval: one image, one caption, three protocols that the
//! papers disagree on (see docs/benchmarks.md).
//!
//! The download (`dci.tar.gz` + the SA-1B archive `sa_000138.tar`) is laid
//! out as `densely_captioned_images/annotations/*.json` (one file per
//! image, with `image`, `short_caption` and `extra_caption`),
//! `densely_captioned_images/photos/` and `densely_captioned_images/splits.json`.
//! `--root` is the folder holding `densely_captioned_images/`, or that folder.
//!
//! - `--split long` (default): Long-DCI (TULIP, HF `mderakhshani/Long-DCI`,
//!   7,805 pairs). TULIP's `dci_long.csv` (tab-separated, columns
//!   `filepath` and `title`, read by `local_dataset` in
//!   ivonajdenkoska/tulip `eval/dci_long.py`) when it is in `--root` or is
//!   `--root`; otherwise built the way TULIP built it
//!   (`open_clip/data_prep/dci_long_part.py`): every annotation file in name
//!   order, caption `extra_caption`, files whose `extra_caption` is empty
//!   left out.
//! - `--split fgclip`: FG-CLIP v1 (360CVGroup/FG-CLIP
//!   `fgclip/eval/dci_retrieval.py`, `eval_dci`): every annotation file,
//!   caption `extra_caption`, empty ones kept. FG-CLIP lists the folder in
//!   `os.listdir` order; we use name order (the pairs are one to one, so
//!   R@K only changes through exact ties).
//! - `--split lotlip`: LoTLIP (wuw2019/LoTLIP `dataloaders/dci_retrieval.py`,
//!   `dci_retrieval_dataset`): the files listed in `splits.json`, its splits
//!   in file order, caption `short_caption + "\n" + extra_caption` through
//!   LoTLIP's `split_caption` ([`super::lotlip_caption`]).
//! - `--split goal`: GOAL's 1,999 test pairs (PerceptualAI-Lab/GOAL
//!   `datasets/DCI_test.json`, copied into `--root`): its captions, its
//!   images by file name under `photos/` ([`super::load_goal_list`]).
//!
//! Images: `photos/<image>` of the annotation (`--image-root` replaces
//! `photos/`); the CSV's `filepath` is relative to `photos/` when that
//! folder exists, else to the CSV's folder (TULIP keeps the images beside
//! its CSV).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::table::parse_delimited;
use super::{load_goal_list, lotlip_caption, read_json, Dataset, LoadOptions};

const DCI_DIR: &str = "densely_captioned_images";
/// The name TULIP's scripts give Long-DCI's caption file.
pub const LONG_DCI_CSV: &str = "dci_long.csv";
const LAYOUT: &str = "expected densely_captioned_images/ with annotations/ and photos/ (and splits.json for --split lotlip), \
     as DCI's download unpacks, or Long-DCI's dci_long.csv";

#[derive(Deserialize)]
struct Annotation {
    image: String,
    #[serde(default)]
    short_caption: String,
    /// Required: the official loaders index it (`KeyError` without it); an
    /// empty string is a caption the protocols handle (left out or kept).
    extra_caption: String,
}

pub fn load(root: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let split = opts.split.as_deref().unwrap_or("long");
    let mut data = match split {
        "long" => load_long(root, opts)?,
        "fgclip" => load_fgclip(root, opts)?,
        "lotlip" => load_lotlip(root, opts)?,
        "goal" => {
            let dir = require_dci_dir(root)?;
            load_goal_list(root, "DCI_test.json", &photos(&dir, opts))?
        }
        other => bail!("unknown DCI split '{other}' (expected long, fgclip, lotlip or goal)"),
    };
    data.split = split.into();
    Ok(data)
}

/// The `densely_captioned_images` folder: under `root`, or `root` itself.
fn dci_dir(root: &Path) -> Option<PathBuf> {
    [root.join(DCI_DIR), root.to_path_buf()].into_iter().find(|d| d.join("annotations").is_dir())
}

fn require_dci_dir(root: &Path) -> Result<PathBuf> {
    dci_dir(root).with_context(|| format!("{}: not a DCI layout: {LAYOUT}", root.display()))
}

fn photos(dir: &Path, opts: &LoadOptions) -> PathBuf {
    opts.image_root.clone().unwrap_or_else(|| dir.join("photos"))
}

/// Annotation files (`*.json`) in name order.
fn annotation_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let ann = dir.join("annotations");
    let entries = std::fs::read_dir(&ann).with_context(|| format!("{}: cannot list", ann.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| format!("{}: cannot list", ann.display()))?.path();
        if path.extension().is_some_and(|e| e == "json") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("{}: no .json annotation files", ann.display());
    }
    Ok(files)
}

fn read_annotation(path: &Path) -> Result<Annotation> {
    let a: Annotation = read_json(path)?;
    if a.image.trim().is_empty() {
        bail!("{}: empty \"image\"", path.display());
    }
    Ok(a)
}

fn load_long(root: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let csv = if root.is_file() { Some(root.to_path_buf()) } else { Some(root.join(LONG_DCI_CSV)).filter(|p| p.is_file()) };
    if let Some(csv) = csv {
        return load_long_csv(&csv, opts);
    }
    let dir = require_dci_dir(root)?;
    let image_dir = photos(&dir, opts);
    let mut data = Dataset::default();
    let mut empty = 0;
    for path in annotation_files(&dir)? {
        let a = read_annotation(&path)?;
        // dci_long_part.py: `if len(long_caption) == 0: continue`.
        if a.extra_caption.is_empty() {
            empty += 1;
            continue;
        }
        data.images.push(image_dir.join(&a.image));
        data.captions.push(vec![a.extra_caption]);
    }
    if empty > 0 {
        data.notes.push(format!("{empty} annotation files have an empty extra_caption and are left out, as Long-DCI does"));
    }
    Ok(data)
}

/// TULIP's `dci_long.csv`: pandas `to_csv(sep='\t', index=False)` of
/// `filepath` and `title`.
fn load_long_csv(csv: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let text = std::fs::read_to_string(csv).with_context(|| format!("{}: cannot read as UTF-8 text", csv.display()))?;
    let rows = parse_delimited(&text, '\t').with_context(|| csv.display().to_string())?;
    let Some((header_line, header)) = rows.first() else {
        bail!("{}: empty file; expected a tab-separated header with 'filepath' and 'title'", csv.display());
    };
    let column = |name: &str| {
        header.iter().position(|h| h.trim() == name).with_context(|| {
            format!("{}:{header_line}: no column '{name}' (Long-DCI's file is tab-separated with filepath and title; the header has: {})", csv.display(), header.join(", "))
        })
    };
    let (fc, tc) = (column("filepath")?, column("title")?);
    let folder = csv.parent().unwrap_or(Path::new(".")).to_path_buf();
    let image_dir = match (&opts.image_root, dci_dir(&folder)) {
        (Some(dir), _) => dir.clone(),
        (None, Some(dir)) if dir.join("photos").is_dir() => dir.join("photos"),
        _ => folder,
    };
    let mut data = Dataset::default();
    for (line, fields) in &rows[1..] {
        if fields.len() == 1 && fields[0].is_empty() {
            continue;
        }
        if fields.len() != header.len() {
            bail!("{}:{line}: {} fields, but the header has {} (fields are separated by tabs)", csv.display(), fields.len(), header.len());
        }
        if fields[fc].trim().is_empty() {
            bail!("{}:{line}: empty filepath", csv.display());
        }
        if fields[tc].trim().is_empty() {
            bail!("{}:{line}: empty title (the caption)", csv.display());
        }
        data.images.push(image_dir.join(&fields[fc]));
        data.captions.push(vec![fields[tc].clone()]);
    }
    Ok(data)
}

fn load_fgclip(root: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let dir = require_dci_dir(root)?;
    let image_dir = photos(&dir, opts);
    let mut data = Dataset::default();
    let mut empty = 0;
    for path in annotation_files(&dir)? {
        let a = read_annotation(&path)?;
        empty += usize::from(a.extra_caption.trim().is_empty());
        data.images.push(image_dir.join(&a.image));
        data.captions.push(vec![a.extra_caption]);
    }
    if empty > 0 {
        data.notes.push(format!("{empty} annotation files have an empty extra_caption; FG-CLIP's protocol keeps them as empty captions"));
    }
    Ok(data)
}

fn load_lotlip(root: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let dir = require_dci_dir(root)?;
    let splits_path = dir.join("splits.json");
    if !splits_path.is_file() {
        bail!("{}: not found; LoTLIP's DCI protocol reads the annotation files it lists", splits_path.display());
    }
    // serde_json keeps the file's key order (feature preserve_order), as
    // Python's dict does.
    let splits: serde_json::Map<String, serde_json::Value> = read_json(&splits_path)?;
    let image_dir = photos(&dir, opts);
    let mut data = Dataset::default();
    for (split, files) in &splits {
        let files = files
            .as_array()
            .and_then(|a| a.iter().map(|f| f.as_str()).collect::<Option<Vec<_>>>())
            .with_context(|| format!("{}: \"{split}\" must be a list of annotation file names", splits_path.display()))?;
        for file in files {
            let a = read_annotation(&dir.join("annotations").join(file))
                .with_context(|| format!("{}: listed in \"{split}\"", splits_path.display()))?;
            let caption = lotlip_caption(&format!("{}\n{}", a.short_caption, a.extra_caption));
            data.images.push(image_dir.join(&a.image));
            data.captions.push(vec![caption]);
        }
    }
    Ok(data)
}
