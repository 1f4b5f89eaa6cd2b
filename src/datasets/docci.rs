//! DOCCI (Descriptions of Connected and Contrasting Images, google/docci,
//! <https://google.github.io/docci/>): `docci_descriptions.jsonlines` (one
//! record a line: `example_id`, `split`, `image_file`, `description`) and
//! `images/` from `docci_images.tar.gz`, as the HF loader `google/docci`
//! reads them.
//!
//! `--split test` (default): the 5,000 records whose `split` is `test`, in
//! file order; caption = `description`; image = `images/<image_file>`
//! (`--image-root` replaces `images/`). `--split qual_test` (100 records)
//! and the other splits of the file (`train`, `qual_dev`) select the same
//! way; several, comma separated, are read together in file order. GOAL
//! evaluates `test` and `qual_test` together (5,100 pairs): `--split
//! test,qual_test` selects the same pairs from DOCCI's own file, and
//! `--split goal` reads GOAL's list itself (PerceptualAI-Lab/GOAL
//! `datasets/docci_test.json`, copied into `--root`; see
//! [`super::load_goal_list`]).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Result};
use serde::Deserialize;

use super::{file_or_in, load_goal_list, read_jsonl, Dataset, LoadOptions};

pub const FILE_NAME: &str = "docci_descriptions.jsonlines";

#[derive(Deserialize)]
struct Record {
    split: String,
    image_file: String,
    description: String,
}

pub fn load(root: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let (path, dir) = file_or_in(root, FILE_NAME);
    if !path.is_file() {
        bail!("{}: not a DOCCI layout: expected {FILE_NAME} and images/ there", root.display());
    }
    let split = opts.split.clone().unwrap_or_else(|| "test".into());
    let image_dir = opts.image_root.clone().unwrap_or_else(|| dir.join("images"));
    if split == "goal" {
        return load_goal_list(&dir, "docci_test.json", &image_dir);
    }
    let wanted: Vec<&str> = split.split(',').map(str::trim).collect();
    if wanted.iter().any(|w| w.is_empty()) {
        bail!("--split '{split}': an empty split name; give DOCCI splits separated by commas (e.g. test,qual_test)");
    }
    let mut data = Dataset { split: split.clone(), ..Default::default() };
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (line, r) in read_jsonl::<Record>(&path)? {
        *counts.entry(r.split.clone()).or_default() += 1;
        if !wanted.contains(&r.split.as_str()) {
            continue;
        }
        if r.image_file.trim().is_empty() {
            bail!("{}:{line}: empty image_file", path.display());
        }
        if r.description.trim().is_empty() {
            bail!("{}:{line}: empty description", path.display());
        }
        data.images.push(image_dir.join(&r.image_file));
        data.captions.push(vec![r.description]);
    }
    for w in &wanted {
        if !counts.contains_key(*w) {
            let have: Vec<String> = counts.iter().map(|(s, n)| format!("{s} ({n})")).collect();
            bail!("{}: no record has split '{w}' (the file has: {})", path.display(), have.join(", "));
        }
    }
    Ok(data)
}
