//! Setting damaged files aside: a file or segment directory the store cannot read is moved into
//! a `quarantine/` directory next to it (`data/wal/traces/quarantine/`,
//! `data/traces/quarantine/`, `data/metrics/quarantine/`), with one log line naming it, so the
//! store starts and serves everything else instead of failing in a crash loop. Nothing in a
//! `quarantine/` directory is read again or deleted by obsbox; an operator can inspect it.
//!
//! [`Quarantine`] counts what one store set aside since it opened (`StoreStats::quarantined_files`,
//! `obsbox_store_quarantined_files_total` on `/metrics`).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::StoreError;

/// Name of the directory damaged files are moved into.
pub(crate) const DIR: &str = "quarantine";

/// Sets files aside and counts them. Cloning shares the count.
#[derive(Clone, Default)]
pub(crate) struct Quarantine(Arc<AtomicU64>);

impl Quarantine {
    /// Files and directories set aside so far.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// A free path for `name` in the quarantine directory next to `path`.
    fn target(path: &Path, name: &str) -> Result<PathBuf, StoreError> {
        let parent = path.parent().unwrap_or(Path::new("."));
        let dir = parent.join(DIR);
        fs::create_dir_all(&dir)?;
        let mut target = dir.join(name);
        let mut n = 1;
        while target.exists() {
            target = dir.join(format!("{name}.{n}"));
            n += 1;
        }
        Ok(target)
    }

    /// Moves the file or directory `path` into quarantine and logs why and what is lost.
    pub fn move_aside(&self, path: &Path, reason: &str, lost: &str) -> Result<PathBuf, StoreError> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("unnamed");
        let target = Self::target(path, name)?;
        fs::rename(path, &target)?;
        if let Some(parent) = path.parent() {
            crate::wal::sync_dir(parent)?;
        }
        self.0.fetch_add(1, Ordering::Relaxed);
        tracing::error!(path = %path.display(), aside = %target.display(), %reason, %lost, "damaged store file set aside");
        Ok(target)
    }

    /// Keeps a hard link to the file `path` in quarantine (the caller then replaces `path` with a
    /// repaired copy) and logs why and what is lost.
    pub fn link_aside(&self, path: &Path, reason: &str, lost: &str) -> Result<PathBuf, StoreError> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("unnamed");
        let target = Self::target(path, name)?;
        if fs::hard_link(path, &target).is_err() {
            fs::copy(path, &target)?;
        }
        self.0.fetch_add(1, Ordering::Relaxed);
        tracing::error!(path = %path.display(), aside = %target.display(), %reason, %lost, "damaged store file repaired, original set aside");
        Ok(target)
    }

    /// Counts and logs damage that is skipped over in place (a damaged section of a metric
    /// block found by a query: the block's other sections stay readable).
    pub fn note(&self, path: &Path, reason: &str, lost: &str) {
        self.0.fetch_add(1, Ordering::Relaxed);
        tracing::error!(path = %path.display(), %reason, %lost, "damaged store file, skipping the damaged part");
    }

    /// Writes `bytes` cut from the file `path` into quarantine as `<name>.<suffix>` and logs it
    /// (a torn tail after a crash: `warn`, since it holds nothing acknowledged).
    pub fn keep_bytes(&self, path: &Path, suffix: &str, bytes: &[u8], reason: &str) -> Result<PathBuf, StoreError> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("unnamed");
        let target = Self::target(path, &format!("{name}.{suffix}"))?;
        fs::write(&target, bytes)?;
        self.0.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(path = %path.display(), aside = %target.display(), bytes = bytes.len(), %reason, "store file cut back, the rest set aside");
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_files_and_directories_under_free_names_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quarantine::default();
        let f = dir.path().join("metastore");
        fs::write(&f, b"x").unwrap();
        let a = q.move_aside(&f, "bad", "nothing").unwrap();
        assert_eq!(a, dir.path().join("quarantine/metastore"));
        fs::write(&f, b"y").unwrap();
        let b = q.move_aside(&f, "bad", "nothing").unwrap();
        assert_eq!(b, dir.path().join("quarantine/metastore.1"));
        let seg = dir.path().join("seg-1");
        fs::create_dir(&seg).unwrap();
        fs::write(seg.join("f"), b"z").unwrap();
        q.move_aside(&seg, "bad", "nothing").unwrap();
        assert!(dir.path().join("quarantine/seg-1/f").exists());
        fs::write(&f, b"w").unwrap();
        q.link_aside(&f, "bad", "nothing").unwrap();
        assert!(f.exists());
        q.keep_bytes(&f, "tail", b"abc", "torn").unwrap();
        assert_eq!(fs::read(dir.path().join("quarantine/metastore.tail")).unwrap(), b"abc");
        assert_eq!(q.count(), 5);
    }
}
