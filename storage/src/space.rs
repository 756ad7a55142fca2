//! Free disk space: writes are refused with [`StoreError::DiskFull`] (retryable) while the data
//! directory's file system has less free space than the configured reserve, or after a write
//! failed with `ENOSPC`/`EDQUOT` until space is back, and admitted again by themselves when
//! space returns (no restart).
//!
//! The reserve (`storage.min_free_bytes`) leaves room for what must still be written while new
//! data is refused: index commits of data already acknowledged, tantivy merges, the metastore
//! rewrite, metric block flushes. Free space is read with `statvfs` at most every
//! [`CHECK_INTERVAL`], so admission costs an atomic load on the hot path.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::StoreError;

/// How often free space is read.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// After `ENOSPC`, writes resume only once at least this much (or the reserve, if larger) is
/// free again, so that a few freed kilobytes do not cause a stream of failing writes.
const RESUME_MARGIN: u64 = 1 << 20;

/// Whether an I/O error means the file system is full (`ENOSPC`, or `EDQUOT` for a quota).
pub(crate) fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

/// Whether a store error is a full disk, also when tantivy or the metrics store wrapped it.
pub(crate) fn is_disk_full_error(e: &StoreError) -> bool {
    match e {
        StoreError::DiskFull(_) => true,
        StoreError::Io(io) => is_disk_full(io),
        // tantivy keeps the io::Error only as text in its error chain.
        StoreError::Index(msg) => msg.contains("No space left on device") || msg.contains("Disk quota exceeded"),
        _ => false,
    }
}

/// Free space of the data directory's file system, and the admission decision built on it.
pub(crate) struct DiskSpace {
    dir: PathBuf,
    reserve: u64,
    started: Instant,
    /// Nanoseconds after `started` of the last check (`u64::MAX`: never).
    checked_at: AtomicU64,
    free: AtomicU64,
    /// A write failed with a full disk; cleared when a check finds room again.
    hit_enospc: AtomicBool,
    full: AtomicBool,
    /// How free space is read (replaced in tests).
    probe: fn(&Path) -> io::Result<u64>,
}

fn statvfs_free(dir: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

impl DiskSpace {
    /// Watches the file system holding `dir`, keeping `reserve` bytes free.
    pub fn new(dir: &Path, reserve: u64) -> DiskSpace {
        Self::with_probe(dir, reserve, statvfs_free)
    }

    fn with_probe(dir: &Path, reserve: u64, probe: fn(&Path) -> io::Result<u64>) -> DiskSpace {
        DiskSpace {
            dir: dir.to_path_buf(),
            reserve,
            started: Instant::now(),
            checked_at: AtomicU64::new(u64::MAX),
            free: AtomicU64::new(u64::MAX),
            hit_enospc: AtomicBool::new(false),
            full: AtomicBool::new(false),
            probe,
        }
    }

    /// Ok when a write may go ahead; [`StoreError::DiskFull`] otherwise.
    pub fn admit(&self) -> Result<(), StoreError> {
        self.refresh(false);
        if self.full.load(Ordering::Acquire) { Err(self.error()) } else { Ok(()) }
    }

    /// The refusal, with the figures behind it.
    pub fn error(&self) -> StoreError {
        let free = self.free.load(Ordering::Relaxed);
        StoreError::DiskFull(if self.hit_enospc.load(Ordering::Relaxed) {
            "no space left on the data directory's file system".into()
        } else {
            format!("{} MiB free, below the reserve of {} MiB (storage.min_free_bytes)", free >> 20, self.reserve >> 20)
        })
    }

    /// Records an I/O error of a write; returns whether it was a full disk (then writes are
    /// refused until a check finds room).
    pub fn note(&self, e: &io::Error) -> bool {
        if !is_disk_full(e) {
            return false;
        }
        self.note_full();
        true
    }

    /// Records that a write failed because the disk is full.
    pub fn note_full(&self) {
        if !self.hit_enospc.swap(true, Ordering::AcqRel) {
            tracing::error!(dir = %self.dir.display(), "disk full: refusing writes until space is freed");
        }
        self.full.store(true, Ordering::Release);
        // Force the next admission to look again.
        self.checked_at.store(u64::MAX, Ordering::Release);
    }

    /// After a failure whose error does not say why (tantivy reports a killed writer, not the
    /// `ENOSPC` that killed it): reads free space now and counts the disk as full when almost
    /// nothing is left.
    pub fn suspect(&self) {
        self.refresh(true);
        if self.free.load(Ordering::Relaxed) < self.reserve.max(RESUME_MARGIN) {
            self.note_full();
        }
    }

    /// Whether writes are refused right now (as of the last check).
    pub fn is_full(&self) -> bool {
        self.refresh(false);
        self.full.load(Ordering::Acquire)
    }

    /// Bytes free at the last check.
    #[cfg(test)]
    pub fn free_bytes(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// Reads free space when the last reading is older than [`CHECK_INTERVAL`] (or `force`).
    fn refresh(&self, force: bool) {
        let now = self.started.elapsed().as_nanos() as u64;
        let last = self.checked_at.load(Ordering::Acquire);
        let due = force || last == u64::MAX || now.saturating_sub(last) >= CHECK_INTERVAL.as_nanos() as u64;
        // One caller refreshes; the others use the previous reading.
        if !due || self.checked_at.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return;
        }
        let free = match (self.probe)(&self.dir) {
            Ok(free) => free,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read free disk space");
                return;
            }
        };
        self.free.store(free, Ordering::Relaxed);
        let enospc = self.hit_enospc.load(Ordering::Acquire);
        let needed = if enospc { self.reserve.max(RESUME_MARGIN) } else { self.reserve };
        let full = free < needed;
        let was = self.full.swap(full, Ordering::AcqRel);
        if !full && enospc {
            self.hit_enospc.store(false, Ordering::Release);
        }
        match (was, full) {
            (false, true) => tracing::error!(
                dir = %self.dir.display(),
                free_mib = free >> 20,
                reserve_mib = self.reserve >> 20,
                "disk almost full: refusing writes until space is freed"
            ),
            (true, false) => {
                tracing::info!(dir = %self.dir.display(), free_mib = free >> 20, "disk space is back: accepting writes")
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    static FREE: AtomicU64 = AtomicU64::new(0);

    fn fake(_: &Path) -> io::Result<u64> {
        Ok(FREE.load(Ordering::SeqCst))
    }

    fn wait_check() {
        std::thread::sleep(CHECK_INTERVAL + Duration::from_millis(20));
    }

    #[test]
    fn refuses_below_the_reserve_and_after_enospc_until_space_returns() {
        FREE.store(100 << 20, Ordering::SeqCst);
        let space = DiskSpace::with_probe(Path::new("/"), 10 << 20, fake);
        assert!(space.admit().is_ok());

        FREE.store(5 << 20, Ordering::SeqCst);
        wait_check();
        let err = space.admit().unwrap_err();
        assert!(err.is_retryable());
        assert!(err.to_string().contains("5 MiB free, below the reserve of 10 MiB"), "{err}");

        FREE.store(50 << 20, Ordering::SeqCst);
        wait_check();
        assert!(space.admit().is_ok(), "resumes by itself");

        // ENOSPC refuses at once, whatever the last reading said.
        assert!(space.note(&io::Error::from(io::ErrorKind::StorageFull)));
        assert!(!space.note(&io::Error::from(io::ErrorKind::PermissionDenied)));
        FREE.store(0, Ordering::SeqCst);
        assert!(matches!(space.admit(), Err(StoreError::DiskFull(_))));
        FREE.store(50 << 20, Ordering::SeqCst);
        wait_check();
        assert!(space.admit().is_ok());
    }

    #[test]
    fn without_a_reserve_only_enospc_refuses_and_a_margin_is_needed_to_resume() {
        static FREE0: AtomicU64 = AtomicU64::new(4096);
        fn fake0(_: &Path) -> io::Result<u64> {
            Ok(FREE0.load(Ordering::SeqCst))
        }
        let space = DiskSpace::with_probe(Path::new("/"), 0, fake0);
        assert!(space.admit().is_ok(), "4 KiB free and no reserve: admitted");
        space.note_full();
        wait_check();
        assert!(space.admit().is_err(), "4 KiB free after ENOSPC: still refused");
        FREE0.store(2 << 20, Ordering::SeqCst);
        wait_check();
        assert!(space.admit().is_ok());
    }

    #[test]
    fn reads_the_real_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let space = DiskSpace::new(dir.path(), 0);
        assert!(space.admit().is_ok());
        assert!(space.free_bytes() > 0 && space.free_bytes() != u64::MAX);
    }

    #[test]
    fn recognises_disk_full_errors() {
        assert!(is_disk_full_error(&StoreError::Io(io::Error::from_raw_os_error(libc::ENOSPC))));
        assert!(is_disk_full_error(&StoreError::Io(io::Error::from_raw_os_error(libc::EDQUOT))));
        assert!(is_disk_full_error(&StoreError::Index("IoError: No space left on device (os error 28)".into())));
        assert!(!is_disk_full_error(&StoreError::Io(io::Error::from_raw_os_error(libc::EIO))));
    }
}
