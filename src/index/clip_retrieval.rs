//! `index import --clip-retrieval DIR`: an index from clip-retrieval's
//! output (`clip-retrieval inference`): `DIR/img_emb/img_emb_{i}.npy`
//! ([N, D] float16 or float32) beside `DIR/metadata/metadata_{i}.parquet`
//! (an `image_path` column, optionally `caption`), paired by the number i.
//! The text embeddings (`text_emb/`) are not read.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::import::{import_parts, npy_shape, ImportOptions, Part};
use super::manifest::Manifest;
use crate::table::{read_parquet, Value};

/// One partition: an embedding matrix and its metadata table.
#[derive(Clone, Debug, PartialEq)]
pub struct Partition {
    /// The number i of `img_emb_{i}.npy` / `metadata_{i}.parquet` (zero
    /// padding ignored: `img_emb_007.npy` pairs with `metadata_7.parquet`).
    pub number: u64,
    pub embeddings: PathBuf,
    pub metadata: PathBuf,
}

/// The partitions under `dir`, sorted by number. Errors: no `img_emb`
/// folder or no matrices in it, a matrix without its table (or the
/// reverse), and two files with the same number (`img_emb_1.npy` and
/// `img_emb_01.npy`), each naming the files.
pub fn partitions(dir: &Path) -> Result<Vec<Partition>> {
    let embeddings = numbered(&dir.join("img_emb"), "img_emb_", ".npy")?;
    let metadata = numbered(&dir.join("metadata"), "metadata_", ".parquet")?;
    if embeddings.is_empty() {
        bail!("{}: no img_emb/img_emb_{{i}}.npy (clip-retrieval's layout: img_emb/img_emb_{{i}}.npy beside metadata/metadata_{{i}}.parquet)", dir.display());
    }
    for (number, path) in &metadata {
        if !embeddings.contains_key(number) {
            bail!("{}: no img_emb/img_emb_{number}.npy for it (each partition needs both files)", path.display());
        }
    }
    embeddings
        .into_iter()
        .map(|(number, embeddings)| match metadata.get(&number) {
            Some(m) => Ok(Partition { number, embeddings, metadata: m.clone() }),
            None => bail!("{}: no metadata/metadata_{number}.parquet for it (each partition needs both files)", embeddings.display()),
        })
        .collect()
}

/// Files `{prefix}{digits}{suffix}` in `dir` by number; a missing folder is empty.
fn numbered(dir: &Path, prefix: &str, suffix: &str) -> Result<BTreeMap<u64, PathBuf>> {
    let mut found: BTreeMap<u64, PathBuf> = BTreeMap::new();
    if !dir.is_dir() {
        return Ok(found);
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))? {
        let path = entry.with_context(|| format!("{}: cannot list", dir.display()))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Some(digits) = name.strip_prefix(prefix).and_then(|r| r.strip_suffix(suffix)) else { continue };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let number: u64 = digits.parse().with_context(|| format!("{}: partition number too large", path.display()))?;
        if let Some(other) = found.insert(number, path.clone()) {
            bail!("{} and {} are both partition {number}", other.display(), path.display());
        }
    }
    Ok(found)
}

/// Builds an index at `index` from the clip-retrieval output in `source`
/// (or appends to one, with `opts.append`): each partition becomes one
/// segment (more when it has over `opts.segment_rows` rows), all in one
/// commit. Ids are the `image_path` cells, captions the `caption` cells
/// (null: none). `opts.embeddings` and `opts.ids` are not read (pass
/// `source`; they name it in messages).
///
/// Errors name the files: row counts that differ between a matrix and its
/// table, a missing `image_path` column, an empty or null path, a path in
/// two rows (both places named), row widths that differ between
/// partitions; and those of [`super::import`].
pub fn import_clip_retrieval(index: &Path, source: &Path, opts: &ImportOptions) -> Result<Manifest> {
    if !source.is_dir() {
        bail!("{}: no such folder (expected clip-retrieval's layout: img_emb/, metadata/)", source.display());
    }
    let opts = &with_recorded_model(source, opts)?;
    let what = || format!("{}: the import stopped; the index is as it was before it", index.display());
    super::lock::cleaning_up(index, || super::catch_panic(what, || import_parts(index, opts, || load(source)))?)
}

/// A folder written by `longclip inference` names the model that made it
/// (`longclip-inference.json`): the index records that model, so queries
/// are embedded by it, and a `--model` with other weights is refused.
fn with_recorded_model(source: &Path, opts: &ImportOptions) -> Result<ImportOptions> {
    let Some(record) = crate::inference::Record::read(source)? else { return Ok(opts.clone()) };
    let recorded = record.model_info();
    if let Some(given) = &opts.model {
        if given.fingerprint != recorded.fingerprint {
            bail!(
                "{}: its embeddings were made with {} (fingerprint {}), not with --model {} (fingerprint {}); drop --model to take the recorded one",
                source.display(),
                recorded.path.as_deref().unwrap_or("?"),
                recorded.fingerprint.as_deref().unwrap_or("unknown"),
                given.path.as_deref().unwrap_or("?"),
                given.fingerprint.as_deref().unwrap_or("unknown")
            );
        }
        return Ok(opts.clone());
    }
    Ok(ImportOptions { model: Some(recorded), ..opts.clone() })
}

/// The parts to import, checked: counts, paths present and unique.
fn load(source: &Path) -> Result<Vec<Part>> {
    let mut parts = Vec::new();
    let mut seen: HashMap<String, (usize, usize)> = HashMap::new();
    let partitions = partitions(source)?;
    for (p, partition) in partitions.iter().enumerate() {
        let rows = read_rows(partition)?;
        for (r, (path, _)) in rows.iter().enumerate() {
            if let Some((q, first)) = seen.insert(path.clone(), (p, r)) {
                bail!("image_path '{path}' is in {} row {first} and in {} row {r} (ids must be unique)", partitions[q].metadata.display(), partition.metadata.display());
            }
        }
        parts.push(Part { npy: partition.embeddings.clone(), rows });
    }
    Ok(parts)
}

/// (image_path, caption) per row of a partition's table, in row order.
fn read_rows(partition: &Partition) -> Result<Vec<(String, Option<String>)>> {
    let (count, _) = npy_shape(&partition.embeddings)?;
    let file = &partition.metadata;
    let columns = read_parquet(file)?;
    let column = |name: &str| columns.iter().find(|c| c.name == name);
    let Some(paths) = column("image_path") else {
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        bail!("{}: no column 'image_path' (columns: {})", file.display(), names.join(", "));
    };
    if paths.values.len() != count {
        bail!("{} has {} rows but {} has {count} rows", file.display(), paths.values.len(), partition.embeddings.display());
    }
    let captions = column("caption");
    paths
        .values
        .iter()
        .enumerate()
        .map(|(r, v)| {
            let path = match v {
                Value::Text(s) if !s.trim().is_empty() => s.clone(),
                Value::Text(_) => bail!("{} row {r}: empty image_path", file.display()),
                Value::Null => bail!("{} row {r}: image_path is null", file.display()),
                other => bail!("{} row {r}: image_path is not text ({other:?})", file.display()),
            };
            let caption = captions.and_then(|c| match &c.values[r] {
                Value::Null => None,
                Value::Text(s) => Some(s.clone()),
                Value::Int(i) => Some(i.to_string()),
                Value::Float(f) => Some(f.to_string()),
                Value::Bool(b) => Some(b.to_string()),
            });
            Ok((path, caption))
        })
        .collect()
}
