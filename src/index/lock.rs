//! The writers' lock: an exclusive OS lock (flock) on `INDEX/lock`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{LOCK_FILE, MANIFEST, SEGMENTS_DIR, STAGING_DIR};

/// Held while a process writes the index. The kernel drops it when the
/// process dies, however it dies, so a killed build never blocks the next.
pub struct Lock {
    _file: File,
}

/// Takes the lock of an index that exists (it has a manifest, or an
/// interrupted build's staging); errors, creating nothing, otherwise. A
/// second writer gets an error naming the holder's pid.
pub fn lock_existing(dir: &Path) -> Result<Lock> {
    if !dir.is_dir() {
        bail!("{}: no such index (directory not found)", dir.display());
    }
    if !dir.join(MANIFEST).exists() && !dir.join(STAGING_DIR).exists() {
        bail!("{}: not a longclip index (no {MANIFEST})", dir.display());
    }
    lock(dir)
}

/// Takes the lock of an index to create or write: the directory is created
/// when missing, and a non-empty directory that is not an index (a photo
/// folder given by mistake) is refused. A second writer gets an error naming
/// the holder's pid.
pub fn lock_new(dir: &Path) -> Result<Lock> {
    if dir.is_dir() && !dir.join(MANIFEST).exists() {
        let foreign = std::fs::read_dir(dir)
            .with_context(|| format!("{}: cannot list", dir.display()))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            // What a build that died before its first commit leaves.
            .find(|name| ![LOCK_FILE, STAGING_DIR, SEGMENTS_DIR].contains(&name.as_str()) && !name.starts_with('.') && !(name.starts_with("skipped-") && name.ends_with(".jsonl")));
        if let Some(name) = foreign {
            bail!("{}: exists and is not a longclip index (it holds {name}); give a new or empty directory", dir.display());
        }
    } else if dir.exists() && !dir.is_dir() {
        bail!("{}: exists and is not a directory", dir.display());
    }
    lock(dir)
}

fn lock(dir: &Path) -> Result<Lock> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the index directory", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("{}: cannot open the lock file", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let who = holder.trim();
            let who = if who.is_empty() { String::new() } else { format!(" ({who})") };
            bail!(
                "{}: another longclip process is writing this index{who}; wait for it to finish \
                 (the lock on {} is released when it exits)",
                dir.display(),
                path.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => bail!("{}: cannot lock: {e}", path.display()),
    }
    // Who holds it, for the message above; the lock itself is the flock.
    let _ = file.set_len(0);
    let _ = write!(file, "pid {}", std::process::id());
    Ok(Lock { _file: file })
}

/// Runs a writer that may create `dir`; if it fails and `dir` did not exist
/// before, removes what the attempt left when that is only the lock file
/// (a failed first import or merge leaves no folder behind).
pub(crate) fn cleaning_up<T>(dir: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let existed = dir.exists();
    let result = f();
    if result.is_err() && !existed {
        let only_lock = std::fs::read_dir(dir).map(|l| l.flatten().all(|e| e.file_name() == LOCK_FILE)).unwrap_or(false);
        if only_lock {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    result
}
