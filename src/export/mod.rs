//! Writing soft prompts in the formats front-ends read: a KoboldAI soft prompt `.zip`
//! ([`kobold`]) and a PEFT prompt-tuning adapter folder ([`peft`]). Layouts: `shared/formats.md`.
//!
//! Every write is atomic: the bytes go to a temporary name beside the target, are flushed to
//! disk, and are then renamed over it, so a crash never leaves a half-written prompt behind.

pub mod kobold;
pub mod peft;

pub use kobold::{KoboldMeta, write_kobold_zip};
pub use peft::{PeftMeta, write_peft_adapter};

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Result, anyhow};

/// Writes `bytes` to `path` atomically: to a temporary sibling name first, fsync, then rename.
/// Creates missing parent folders. On failure the temporary file is removed and `path` is left
/// as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let label = path.display();
    if path.is_dir() {
        return Err(anyhow!(
            "{label}: is a folder; give a file name to write to"
        ));
    }
    let parent = ensure_parent(path)?;
    let tmp = temp_sibling(path, "tmp")?;
    let result = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(anyhow!(
            "{label}: cannot write the file ({e}); check that the folder exists, is writable and has free space"
        ));
    }
    sync_dir(&parent);
    Ok(())
}

/// The folder `path` lives in, created if missing.
pub(crate) fn ensure_parent(path: &Path) -> Result<PathBuf> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| {
        anyhow!(
            "{}: cannot create the folder {} ({e}); check the path and permissions",
            path.display(),
            parent.display()
        )
    })?;
    Ok(parent)
}

/// A fresh hidden name beside `path`: `.<name>.<tag>-<pid>-<n>`. Nothing is created.
pub(crate) fn temp_sibling(path: &Path, tag: &str) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        anyhow!(
            "{}: the path has no file name; give a file or folder name to write to",
            path.display()
        )
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let candidate = parent.join(format!(
            ".{}.{tag}-{}-{n}",
            name.to_string_lossy(),
            std::process::id()
        ));
        if fs::symlink_metadata(&candidate).is_err() {
            return Ok(candidate);
        }
    }
}

/// Flushes a folder's entries (the renames) to disk where the platform allows it.
pub(crate) fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Writes `bytes` to a new file at `path` (which must not exist) and fsyncs it.
pub(crate) fn write_new_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
