//! The embedding cache: features stored by model fingerprint and input, so
//! a re-run, a probe or another dataset sharing images never embeds the same
//! input twice with the same weights.
//!
//! Layout: `DIR/sha256-<model fingerprint>/<kind>-<stamp>.safetensors`, each
//! file a shard holding `keys` [N, 32] (u8) and `features` [N, D] (f32, not
//! normalized). Keys are SHA-256 digests of the input: the image file's bytes
//! (so a renamed or copied image still hits and an edited one misses) or the
//! token ids of a text (so captions that truncate to the same ids share one
//! entry). `kind` says what was encoded and how: images through the official
//! transform without EXIF rotation, or texts, and on which device type.
//! Shards are written whole under a temporary name and renamed, so readers
//! never see half a shard; a shard that cannot be read is ignored with a
//! warning (the cache only saves time, it never changes a result).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use sha2::{Digest, Sha256};

pub type Key = [u8; 32];

/// `$LONGCLIP_CACHE`, else `$XDG_CACHE_HOME/longclip/embeddings`, else
/// `~/.cache/longclip/embeddings`.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LONGCLIP_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("longclip").join("embeddings")
}

pub fn image_key(bytes: &[u8]) -> Key {
    Sha256::new().chain_update(b"image:").chain_update(bytes).finalize().into()
}

pub fn text_key(ids: &[u32]) -> Key {
    let mut h = Sha256::new().chain_update(b"ids:");
    for id in ids {
        h.update(id.to_le_bytes());
    }
    h.finalize().into()
}

struct Shard {
    map: memmap2::Mmap,
    /// Byte offset of the features in the file.
    start: usize,
}

/// Features of one kind for one model.
pub struct FeatureCache {
    dir: PathBuf,
    kind: String,
    dim: usize,
    shards: Vec<Shard>,
    index: HashMap<Key, (usize, usize)>,
    pending: Vec<(Key, Vec<f32>)>,
}

impl FeatureCache {
    /// Opens (and creates) the cache of `kind` for the model `fingerprint`.
    pub fn open(root: &Path, fingerprint: &str, kind: &str, dim: usize) -> Result<FeatureCache> {
        let dir = root.join(fingerprint.replace(':', "-"));
        std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create the embedding cache", dir.display()))?;
        let mut cache = FeatureCache { dir, kind: kind.into(), dim, shards: vec![], index: HashMap::new(), pending: vec![] };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&cache.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!("{kind}-"))))
            .collect();
        files.sort();
        for file in files {
            if let Err(e) = cache.add_shard(&file) {
                eprintln!("warning: ignoring embedding cache shard {}: {}", crate::term::path(&file), crate::term::escape_lines(&format!("{e:#}")));
            }
        }
        Ok(cache)
    }

    fn add_shard(&mut self, path: &Path) -> Result<()> {
        let file = std::fs::File::open(path)?;
        // Safety: shards are written once under a temporary name and renamed;
        // nobody writes to a published shard.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        let (header, meta) = SafeTensors::read_metadata(&map).map_err(|e| anyhow::anyhow!("{e}"))?;
        let keys = meta.info("keys").context("no 'keys'")?;
        let feats = meta.info("features").context("no 'features'")?;
        anyhow::ensure!(keys.dtype == Dtype::U8 && feats.dtype == Dtype::F32, "unexpected dtypes");
        let n = keys.shape[0];
        anyhow::ensure!(keys.shape == [n, 32] && feats.shape == [n, self.dim], "shape {:?} does not match dim {}", feats.shape, self.dim);
        let base = 8 + header;
        let (k0, k1) = keys.data_offsets;
        let (f0, f1) = feats.data_offsets;
        anyhow::ensure!(base + k1.max(f1) <= map.len() && f1 - f0 == n * self.dim * 4 && k1 - k0 == n * 32, "truncated");
        let shard_id = self.shards.len();
        for (row, key) in map[base + k0..base + k1].chunks_exact(32).enumerate() {
            self.index.insert(key.try_into().expect("32 bytes"), (shard_id, row));
        }
        self.shards.push(Shard { map, start: base + f0 });
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.index.len() + self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored features of `key`.
    pub fn get(&self, key: &Key) -> Option<Vec<f32>> {
        if let Some(&(shard, row)) = self.index.get(key) {
            let s = &self.shards[shard];
            let at = s.start + row * self.dim * 4;
            let bytes = &s.map[at..at + self.dim * 4];
            return Some(bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect());
        }
        self.pending.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    pub fn insert(&mut self, key: Key, features: Vec<f32>) {
        debug_assert_eq!(features.len(), self.dim);
        self.pending.push((key, features));
    }

    /// Writes what was inserted since the last flush as a new shard.
    pub fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let n = self.pending.len();
        let keys: Vec<u8> = self.pending.iter().flat_map(|(k, _)| k.iter().copied()).collect();
        let feats: Vec<u8> = self.pending.iter().flat_map(|(_, v)| v.iter().flat_map(|x| x.to_le_bytes())).collect();
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let path = self.dir.join(format!("{}-{stamp}-{}.safetensors", self.kind, std::process::id()));
        let tmp = crate::export::temp_path(&path);
        let views = [
            ("keys", TensorView::new(Dtype::U8, vec![n, 32], &keys).map_err(|e| anyhow::anyhow!("{e}"))?),
            ("features", TensorView::new(Dtype::F32, vec![n, self.dim], &feats).map_err(|e| anyhow::anyhow!("{e}"))?),
        ];
        safetensors::serialize_to_file(views, None, &tmp)
            .map_err(|e| anyhow::anyhow!("{}: cannot write the embedding cache: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("{}: cannot rename into place", path.display()))?;
        self.pending.clear();
        self.add_shard(&path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_a_reopen_and_kinds_are_separate() {
        let dir = tempfile::tempdir().unwrap();
        let fp = "sha256:00ff";
        let mut c = FeatureCache::open(dir.path(), fp, "texts-cpu", 3).unwrap();
        let (a, b) = (text_key(&[1, 2]), text_key(&[1, 2, 3]));
        assert_ne!(a, b);
        assert!(c.get(&a).is_none());
        c.insert(a, vec![1.0, -2.5, 3.0]);
        assert_eq!(c.get(&a), Some(vec![1.0, -2.5, 3.0]));
        c.flush().unwrap();
        c.insert(b, vec![0.0, 0.5, 1e-30]);
        c.flush().unwrap();
        let c = FeatureCache::open(dir.path(), fp, "texts-cpu", 3).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&a), Some(vec![1.0, -2.5, 3.0]));
        assert_eq!(c.get(&b), Some(vec![0.0, 0.5, 1e-30]));
        assert!(FeatureCache::open(dir.path(), fp, "images-cpu", 3).unwrap().is_empty());
        assert!(FeatureCache::open(dir.path(), "sha256:0000", "texts-cpu", 3).unwrap().is_empty());
    }

    #[test]
    fn broken_or_mismatched_shards_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = FeatureCache::open(dir.path(), "sha256:01", "texts-cpu", 2).unwrap();
        c.insert(text_key(&[7]), vec![1.0, 2.0]);
        c.flush().unwrap();
        let model_dir = dir.path().join("sha256-01");
        std::fs::write(model_dir.join("texts-cpu-0-broken.safetensors"), b"not a shard").unwrap();
        let c = FeatureCache::open(dir.path(), "sha256:01", "texts-cpu", 2).unwrap();
        assert_eq!(c.len(), 1);
        // Another width (a different model sharing the folder by mistake): ignored.
        assert!(FeatureCache::open(dir.path(), "sha256:01", "texts-cpu", 3).unwrap().is_empty());
    }
}
