//! Urban1k for the benches that run on real photos: `[URBAN1K_DIR [IMAGES]]`
//! from the command line (default ../shared/datasets/urban1k, all pairs).

use std::path::PathBuf;

use longclip::datasets::{self, Dataset, LoadOptions};

/// The dataset and its folder, or None (after saying so) when the folder is
/// not there, so a bench without ../shared skips instead of failing.
pub fn urban_from_args() -> anyhow::Result<Option<(PathBuf, Dataset)>> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let root = args.first().map(PathBuf::from).unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/datasets/urban1k")));
    if !root.exists() {
        eprintln!("skipped: {} is not there", root.display());
        return Ok(None);
    }
    let mut data = datasets::load("urban1k", &root, &LoadOptions::default())?;
    if let Some(n) = args.get(1).and_then(|n| n.parse::<usize>().ok()) {
        data.images.truncate(n);
        data.captions.truncate(n);
    }
    Ok(Some((root, data)))
}
