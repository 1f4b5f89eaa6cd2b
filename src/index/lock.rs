//! The writers' lock: an exclusive OS lock (flock) on `INDEX/lock`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::LOCK_FILE;

/// Held while a process writes the index. The kernel drops it when the
/// process dies, however it dies, so a killed build never blocks the next.
pub struct Lock {
    _file: File,
}

/// Takes the lock, creating the index directory; a second writer gets an
/// error naming the holder's pid.
pub fn lock(dir: &Path) -> Result<Lock> {
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
