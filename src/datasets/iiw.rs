//! ImageInWords (IIW, google/imageinwords; HF `google/imageinwords`, whose
//! loading script fetches the same files) as LoTLIP evaluates long-caption
//! retrieval on it (wuw2019/LoTLIP `dataloaders/iiw_retrieval.py`,
//! `iiw_retrieval_dataset.get_data`), the protocol later papers reuse.
//!
//! Layout: the three human-annotated sets of IIW's `datasets/` folder,
//! `DOCCI_Test/data.jsonl` (100), `IIW-400/data.jsonl` (400) and
//! `DCI_Test/data.jsonl` (112), directly under `--root` or under
//! `--root/datasets/`; and the images as LoTLIP's
//! `dataloaders/imageinwords/data_preprocess.py` copies them: `docci/`
//! (DOCCI `images/`), `docci_aar/` (DOCCI `images_aar/`) and `dci/` (DCI
//! `photos/`) under `--root` (or `--image-root`).
//!
//! - `--split lotlip` (default): the three sets in LoTLIP's order (DOCCI_Test,
//!   IIW-400, DCI_Test), 612 pairs.
//! - `--split docci_test`, `iiw400`, `dci_test`: one of them.
//!
//! Caption: the human `IIW` description through LoTLIP's `split_caption`
//! ([`super::lotlip_caption`]). Image: the record's `image` (else
//! `image/key`), with `.jpg` appended when the name has no `.jpg` in it,
//! under the set's folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::Deserialize;

use super::{find_first, lotlip_caption, read_jsonl, Dataset, LoadOptions};

/// (split name, IIW folder, image folder), in LoTLIP's order.
const SETS: [(&str, &str, &str); 3] =
    [("docci_test", "DOCCI_Test", "docci"), ("iiw400", "IIW-400", "docci_aar"), ("dci_test", "DCI_Test", "dci")];

#[derive(Deserialize)]
struct Record {
    #[serde(default)]
    image: Option<String>,
    #[serde(rename = "image/key", default)]
    image_key: Option<String>,
    #[serde(rename = "IIW", default)]
    iiw: Option<String>,
}

pub fn load(root: &Path, opts: &LoadOptions) -> Result<Dataset> {
    let split = opts.split.clone().unwrap_or_else(|| "lotlip".into());
    let sets: Vec<_> = match split.as_str() {
        "lotlip" => SETS.to_vec(),
        s => match SETS.iter().find(|(name, _, _)| *name == s) {
            Some(set) => vec![*set],
            None => bail!("unknown IIW split '{s}' (expected lotlip, docci_test, iiw400 or dci_test)"),
        },
    };
    let image_base = opts.image_root.clone().unwrap_or_else(|| root.to_path_buf());
    let mut data = Dataset { split, ..Default::default() };
    for (_, folder, image_folder) in sets {
        let file = format!("{folder}/data.jsonl");
        let Some(path) = find_first(root, &[&file, &format!("datasets/{file}")]) else {
            bail!(
                "{}: not an ImageInWords layout: expected {file} (or datasets/{file}) there, with the images in docci/, docci_aar/ and dci/",
                root.display()
            );
        };
        read_set(&path, &image_base.join(image_folder), &mut data)?;
    }
    Ok(data)
}

fn read_set(path: &Path, image_dir: &Path, data: &mut Dataset) -> Result<()> {
    for (line, r) in read_jsonl::<Record>(path)? {
        let Some(name) = r.image.or(r.image_key).filter(|n| !n.trim().is_empty()) else {
            bail!("{}:{line}: no \"image\" or \"image/key\"", path.display());
        };
        let caption = lotlip_caption(r.iiw.as_deref().unwrap_or_default());
        if caption.is_empty() {
            bail!("{}:{line}: no \"IIW\" description", path.display());
        }
        data.images.push(image_path(image_dir, &name));
        data.captions.push(vec![caption]);
    }
    Ok(())
}

/// LoTLIP: `if '.jpg' not in image_name: image_name += '.jpg'`.
fn image_path(dir: &Path, name: &str) -> PathBuf {
    if name.contains(".jpg") {
        dir.join(name)
    } else {
        dir.join(format!("{name}.jpg"))
    }
}
