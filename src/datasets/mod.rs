//! Dataset loaders: the on-disk layouts users download, read into images and
//! captions in the order the official evaluation scripts use.
//!
//! | name | layout | captions |
//! |---|---|---|
//! | `coco` | `annotations/captions_val2017.json` + `val2017/` (any `--split` with that pattern), or `--split karpathy` with `dataset_coco.json` | first 5 per image |
//! | `flickr30k` | `--split full`: `results_20130124.token` + `flickr30k-images/`; `--split karpathy`: `dataset_flickr30k.json` | 5 per image |
//! | `sharegpt4v` | `share-captioner_coco_lcs_sam_1246k_1107.json` + images under the root | first 1,000 records (`--split 10k`: 10,000; `--limit N`: N), `conversations[1].value` |
//! | `urban1k`, `urban200` | `image/N.jpg` + `caption/N.txt` | first line |
//! | `dci` | `--split long` (Long-DCI, TULIP), `fgclip`, `lotlip`: DCI's `densely_captioned_images/` (+ Long-DCI's `dci_long.csv`) | `extra_caption` (lotlip: `short_caption` + `extra_caption`) |
//! | `docci` | `docci_descriptions.jsonlines` + `images/`, `--split test` (5,000) or `qual_test` | `description` |
//! | `iiw` | ImageInWords `IIW-400/`, `DCI_Test/`, `DOCCI_Test/` `data.jsonl` + `docci_aar/`, `dci/`, `docci/` | `IIW` |
//! | `csv`, `jsonl` | a file with image and caption columns | rows grouped by image |
//!
//! The long-caption benchmarks' protocols and sources are in docs/benchmarks.md.
//!
//! Retrieval sets are [`Dataset`]s; zero-shot classification sets (CIFAR,
//! ImageNet) are in [`classes`].

pub mod classes;
mod coco;
mod dci;
mod docci;
mod flickr;
mod iiw;
mod pickle;
pub mod sharegpt4v;
pub mod table;
mod urban;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;

/// An image to embed: a file, or encoded bytes held in memory (CIFAR's
/// pixels, written as PNG so that they go through the same transform).
#[derive(Clone, Debug, PartialEq)]
pub enum ImageRef {
    File(PathBuf),
    Encoded { name: String, bytes: Arc<Vec<u8>> },
}

impl ImageRef {
    pub fn name(&self) -> String {
        match self {
            ImageRef::File(p) => p.display().to_string(),
            ImageRef::Encoded { name, .. } => name.clone(),
        }
    }

    /// The encoded bytes (a file is read).
    pub fn bytes(&self) -> Result<std::borrow::Cow<'_, [u8]>> {
        match self {
            ImageRef::File(p) => match std::fs::read(p) {
                Ok(b) => Ok(b.into()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("{}: file not found", p.display()),
                Err(e) => bail!("{}: cannot read file: {e}", p.display()),
            },
            ImageRef::Encoded { bytes, .. } => Ok(bytes.as_slice().into()),
        }
    }
}

/// The retrieval datasets `load` knows.
pub const RETRIEVAL_DATASETS: [&str; 10] =
    ["coco", "flickr30k", "sharegpt4v", "urban1k", "urban200", "dci", "docci", "iiw", "csv", "jsonl"];

/// A retrieval set: images and the captions of each image.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dataset {
    pub name: String,
    pub split: String,
    pub images: Vec<PathBuf>,
    /// Captions of each image, in order; texts are numbered image by image.
    pub captions: Vec<Vec<String>>,
    /// Things worth telling the user that are not errors.
    pub notes: Vec<String>,
    /// Things that make the numbers mean less than they seem (e.g. test
    /// items that are in a model's training data); printed as warnings.
    pub warnings: Vec<String>,
}

impl Dataset {
    pub fn n_texts(&self) -> usize {
        self.captions.iter().map(Vec::len).sum()
    }

    /// All captions, image by image (image 0's, then image 1's, ...).
    pub fn texts(&self) -> Vec<String> {
        self.captions.iter().flatten().cloned().collect()
    }

    /// The image of each text in `texts()` order.
    pub fn text_image(&self) -> Vec<usize> {
        self.captions.iter().enumerate().flat_map(|(i, c)| std::iter::repeat_n(i, c.len())).collect()
    }

    /// Indices of images that are not readable files.
    pub fn missing_images(&self) -> Vec<usize> {
        (0..self.images.len()).filter(|&i| !self.images[i].is_file()).collect()
    }

    /// The dataset without the given images and their captions.
    pub fn without(&self, drop: &[usize]) -> Dataset {
        let mut keep = vec![true; self.images.len()];
        for &i in drop {
            keep[i] = false;
        }
        let (images, captions) = self
            .images
            .iter()
            .zip(&self.captions)
            .zip(&keep)
            .filter(|(_, &k)| k)
            .map(|((p, c), _)| (p.clone(), c.clone()))
            .unzip();
        Dataset { images, captions, ..self.clone() }
    }
}

/// What to do with images that are listed but missing or unreadable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnMissing {
    /// Leave the image and its captions out, and say how many.
    Skip,
    /// Stop with an error naming the images.
    Fail,
}

/// Options that some layouts use.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub split: Option<String>,
    /// Where image paths are relative to, when not the layout's usual place.
    pub image_root: Option<PathBuf>,
    /// csv / jsonl column names.
    pub image_column: String,
    pub caption_column: String,
    /// ShareGPT4V: how many records from the start form the test set (None:
    /// as `split` says, 1,000 without one; see [`sharegpt4v::records_wanted`]).
    pub limit: Option<usize>,
    /// COCO and Flickr30k: captions kept per image (0 = all).
    pub max_captions: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            split: None,
            image_root: None,
            image_column: "image".into(),
            caption_column: "caption".into(),
            limit: None,
            max_captions: 5,
        }
    }
}

/// Loads a retrieval dataset by name from `root` (a folder, or the file
/// itself for csv / jsonl).
/// Errors: a missing root, a bad file, or `limit` with a dataset other
/// than ShareGPT4V (whose test set it sizes; elsewhere it would silently
/// do nothing, or change a benchmark's protocol).
pub fn load(name: &str, root: &Path, opts: &LoadOptions) -> Result<Dataset> {
    if !root.exists() {
        bail!("{}: no such file or directory", root.display());
    }
    if opts.limit.is_some() && name != "sharegpt4v" {
        bail!("--limit sizes ShareGPT4V's test set; {name} has a fixed protocol (leave --limit out)");
    }
    let mut data = match name {
        "coco" => coco::load(root, opts)?,
        "flickr30k" | "flickr" => flickr::load(root, opts)?,
        "sharegpt4v" => sharegpt4v::load(root, opts)?,
        "urban1k" | "urban200" | "urban" => urban::load(root, opts)?,
        "dci" => dci::load(root, opts)?,
        "docci" => docci::load(root, opts)?,
        "iiw" => iiw::load(root, opts)?,
        "csv" => table::load_csv(root, opts)?,
        "jsonl" => table::load_jsonl(root, opts)?,
        other => bail!(
            "unknown dataset '{other}' (expected one of {}; cifar10, cifar100 and imagenet are classification sets)",
            RETRIEVAL_DATASETS.join(", ")
        ),
    };
    data.name = match name {
        "flickr" => "flickr30k".into(),
        "urban" => "urban1k".into(),
        n => n.into(),
    };
    if data.images.is_empty() {
        bail!("{}: the {} layout was found but lists no images", root.display(), data.name);
    }
    Ok(data)
}

/// Reads and parses a JSON file; errors name the file, line and column.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let reader = std::io::BufReader::with_capacity(1 << 20, file);
    serde_json::from_reader(reader).map_err(|e| json_error(path, &e))
}

pub(crate) fn json_error(path: &Path, e: &serde_json::Error) -> anyhow::Error {
    let what = match e.classify() {
        serde_json::error::Category::Data => "unexpected JSON content",
        serde_json::error::Category::Io => "cannot read",
        _ => "malformed JSON",
    };
    anyhow::anyhow!("{}:{}:{}: {what}: {e}", path.display(), e.line(), e.column())
}

/// The first of `names` that exists under `root`.
pub(crate) fn find_first(root: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| root.join(n)).find(|p| p.exists())
}

/// Keeps the first `max` captions (0 = all).
pub(crate) fn first_captions(mut captions: Vec<String>, max: usize) -> Vec<String> {
    if max > 0 {
        captions.truncate(max);
    }
    captions
}

/// Fails unless `dir` is a directory, saying what the layout expected.
pub(crate) fn require_dir(dir: &Path, layout: &str) -> Result<()> {
    if !dir.is_dir() {
        bail!("{}: not found; {layout}", dir.display());
    }
    Ok(())
}

/// Reads a JSON Lines file into records; errors name the file and line
/// (1-based). Blank lines are skipped.
/// `root` is the layout's file itself, or the folder holding it as `name`:
/// returns (the file, its folder). The file's existence is the caller's check.
pub(crate) fn file_or_in(root: &Path, name: &str) -> (PathBuf, PathBuf) {
    if root.is_file() {
        (root.to_path_buf(), root.parent().unwrap_or(Path::new(".")).to_path_buf())
    } else {
        (root.join(name), root.to_path_buf())
    }
}

pub(crate) fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<(usize, T)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read as UTF-8 text", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(line).map_err(|e| {
            let what = if e.is_data() { "unexpected JSON content" } else { "malformed JSON" };
            anyhow::anyhow!("{}:{}: {what}: {e}", path.display(), n + 1)
        })?;
        out.push((n + 1, record));
    }
    Ok(out)
}

/// GOAL's test lists (PerceptualAI-Lab/GOAL `datasets/DCI_test.json`,
/// `datasets/docci_test.json`, read by `QueryLoader` in `retrieval_goal.py`):
/// a JSON array of `{"filename", "caption"}`, one pair each. The filenames
/// carry GOAL's own folders, so only the file name is kept, under
/// `image_dir`. Looked for as `file_name` in `root` or `root/datasets/`.
pub(crate) fn load_goal_list(root: &Path, file_name: &str, image_dir: &Path) -> Result<Dataset> {
    #[derive(serde::Deserialize)]
    struct Pair {
        filename: String,
        caption: String,
    }
    let Some(path) = find_first(root, &[file_name, &format!("datasets/{file_name}")]) else {
        bail!("{}: GOAL's protocol reads its {file_name} (from GOAL's datasets/ folder): expected it there or in datasets/", root.display());
    };
    let pairs: Vec<Pair> = read_json(&path)?;
    let mut data = Dataset { split: "goal".into(), ..Default::default() };
    for (n, p) in pairs.into_iter().enumerate() {
        let name = p.filename.rsplit(['/', '\\']).next().unwrap_or_default();
        if name.trim().is_empty() {
            bail!("{}: record {n} has an empty filename", path.display());
        }
        if p.caption.trim().is_empty() {
            bail!("{}: record {n} has an empty caption", path.display());
        }
        data.images.push(image_dir.join(name));
        data.captions.push(vec![p.caption]);
    }
    Ok(data)
}

/// LoTLIP's caption clean-up, applied to every long caption it evaluates
/// (`split_caption` in wuw2019/LoTLIP `dataloaders/dci_retrieval.py`,
/// `iiw_retrieval.py`, `share4v.py`): split at newlines, `</s>` and full
/// stops (`re.split(r'\n|</s>|[.]', text)`), strip each piece, drop the
/// empty ones and join with ". " (so the final full stop is gone).
pub fn lotlip_caption(text: &str) -> String {
    let pieces = text.split("</s>").flat_map(|part| part.split(['\n', '.']));
    pieces.map(str::trim).filter(|p| !p.is_empty()).collect::<Vec<_>>().join(". ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Dataset {
        Dataset {
            name: "x".into(),
            split: "test".into(),
            images: vec!["a.jpg".into(), "b.jpg".into(), "c.jpg".into()],
            captions: vec![vec!["a1".into(), "a2".into()], vec!["b1".into()], vec!["c1".into(), "c2".into()]],
            notes: vec![],
            warnings: vec![],
        }
    }

    #[test]
    fn texts_are_numbered_image_by_image() {
        let d = sample();
        assert_eq!(d.texts(), ["a1", "a2", "b1", "c1", "c2"]);
        assert_eq!(d.text_image(), [0, 0, 1, 2, 2]);
        assert_eq!(d.n_texts(), 5);
    }

    #[test]
    fn dropping_an_image_drops_its_captions() {
        let d = sample().without(&[1]);
        assert_eq!(d.images, [PathBuf::from("a.jpg"), PathBuf::from("c.jpg")]);
        assert_eq!(d.text_image(), [0, 0, 1, 1]);
    }

    #[test]
    fn lotlip_caption_follows_split_caption() {
        assert_eq!(lotlip_caption("A dog.  It runs.\nOn grass</s>x"), "A dog. It runs. On grass. x");
        assert_eq!(lotlip_caption("Short.\nLong one. 3.5 m"), "Short. Long one. 3. 5 m");
        assert_eq!(lotlip_caption(" .. \n"), "");
    }

    #[test]
    fn unknown_names_and_roots_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let err = load("mnist", dir.path(), &LoadOptions::default()).unwrap_err().to_string();
        assert!(err.contains("unknown dataset 'mnist'") && err.contains("urban1k"), "{err}");
        let err = load("coco", &dir.path().join("nope"), &LoadOptions::default()).unwrap_err().to_string();
        assert!(err.contains("no such file"), "{err}");
    }
}
