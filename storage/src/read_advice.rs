//! Point reads that fetch what they read and no more, whatever the device's readahead.
//!
//! tantivy maps its files, and a page fault in a mapped file makes the kernel read the
//! device's whole readahead window around the page (`read_ahead_kb`: 128 KiB by default, 8 MiB
//! on some virtual disks). A trace by id reads a few documents at random places: on a cold
//! page cache at 8 MiB readahead it read ~3 MiB per query and its p99 went from 4 to 25-50 ms.
//! Scans (postings, fast-field columns over many documents) want that readahead, so advice is
//! given per use, not per device:
//! - docstore files (`.store`) are mapped `MADV_RANDOM` (no readaround), and as tantivy asks
//!   for each block's byte range before reading it, exactly that range is asked for
//!   (`MADV_WILLNEED`): one read per block instead of a fault per 4 KiB page. A large range (a
//!   merge copying a whole docstore) gets the normal advice back, so it is read ahead as before.
//! - fast-field files keep the normal advice for scans; reads of a few documents' values open
//!   the same file under another name ([`point_reads`]), which [`ReadAdvice`] maps a second
//!   time, `MADV_RANDOM`, so that each value read faults in its page alone.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tantivy::Directory;
use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    DirectoryLock, FileHandle, Lock, MmapDirectory, OwnedBytes, WatchCallback, WatchHandle, WritePtr,
};

/// Ranges of a docstore up to this size are asked for (`MADV_WILLNEED`) when read; larger ones
/// are left to the kernel's readahead. A compressed block is at most the block size (256 KiB).
const WILL_NEED_MAX: usize = 1 << 20;

/// Suffix of the name under which [`ReadAdvice`] maps a file for point reads.
const POINT_READS: &str = "~point-reads";

/// The name under which a directory wrapped in [`ReadAdvice`] maps `file` for point reads (a
/// few values at random places); other directories do not know that name.
pub(crate) fn point_reads(file: &str) -> PathBuf {
    PathBuf::from(format!("{file}{POINT_READS}"))
}

/// A directory whose files are read as the module doc says; everything else is the wrapped
/// directory's. `twin` maps the files named by [`point_reads`]: a directory of its own over
/// the same path, so that its mappings (and their advice) are not the wrapped directory's.
#[derive(Clone, Debug)]
pub(crate) struct ReadAdvice<D> {
    inner: D,
    twin: MmapDirectory,
}

impl<D> ReadAdvice<D> {
    /// Wraps `inner`, the directory at `path`.
    pub fn new(inner: D, path: &Path) -> Result<ReadAdvice<D>, tantivy::directory::error::OpenDirectoryError> {
        Ok(ReadAdvice { inner, twin: MmapDirectory::open(path)? })
    }
}

impl<D: Directory + Clone> Directory for ReadAdvice<D> {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        if let Some(file) = path.to_str().and_then(|p| p.strip_suffix(POINT_READS)) {
            let handle = self.twin.get_file_handle(Path::new(file))?;
            return Ok(Arc::new(Advised::new(handle, path, false)?));
        }
        let handle = self.inner.get_file_handle(path)?;
        if path.extension().is_some_and(|e| e == "store") {
            return Ok(Arc::new(Advised::new(handle, path, true)?));
        }
        Ok(handle)
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        match path.to_str().and_then(|p| p.strip_suffix(POINT_READS)) {
            Some(file) => self.inner.exists(Path::new(file)),
            None => self.inner.exists(path),
        }
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        self.inner.delete(path)
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        self.inner.open_write(path)
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        self.inner.atomic_read(path)
    }

    fn atomic_write(&self, path: &Path, data: &[u8]) -> std::io::Result<()> {
        self.inner.atomic_write(path, data)
    }

    fn sync_directory(&self) -> std::io::Result<()> {
        self.inner.sync_directory()
    }

    fn acquire_lock(&self, lock: &Lock) -> Result<DirectoryLock, LockError> {
        self.inner.acquire_lock(lock)
    }

    fn watch(&self, cb: WatchCallback) -> tantivy::Result<WatchHandle> {
        self.inner.watch(cb)
    }
}

/// A mapped file advised `MADV_RANDOM`; with `ranges`, each range read is asked for first.
#[derive(Debug)]
struct Advised {
    bytes: OwnedBytes,
    ranges: bool,
}

impl Advised {
    fn new(handle: Arc<dyn FileHandle>, path: &Path, ranges: bool) -> Result<Advised, OpenReadError> {
        let bytes = handle.read_bytes(0..handle.len()).map_err(|e| OpenReadError::wrap_io_error(e, path.into()))?;
        advise(bytes.as_slice(), libc::MADV_RANDOM);
        Ok(Advised { bytes, ranges })
    }
}

impl tantivy::HasLen for Advised {
    fn len(&self) -> usize {
        self.bytes.len()
    }
}

impl FileHandle for Advised {
    fn read_bytes(&self, range: Range<usize>) -> std::io::Result<OwnedBytes> {
        let bytes = self.bytes.slice(range);
        if self.ranges {
            let advice = if bytes.len() <= WILL_NEED_MAX { libc::MADV_WILLNEED } else { libc::MADV_NORMAL };
            advise(bytes.as_slice(), advice);
        }
        Ok(bytes)
    }
}

fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *PAGE.get_or_init(|| usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1))
}

/// Advises the kernel about the pages holding `bytes`. Advice only: a failure (bytes that are
/// not a mapping, as an empty file's) changes nothing and is ignored.
fn advise(bytes: &[u8], advice: libc::c_int) {
    if bytes.is_empty() {
        return;
    }
    let page = page_size();
    let start = bytes.as_ptr() as usize;
    let aligned = start - start % page;
    let len = start + bytes.len() - aligned;
    // SAFETY: the range covers only pages of `bytes`, which is alive; the advice given here
    // (random, will-need, normal) changes how the kernel reads ahead, never the contents.
    unsafe {
        libc::madvise(aligned as *mut libc::c_void, len, advice);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `VmFlags` of the mapping holding `addr`, from `/proc/self/smaps`.
    fn vm_flags(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((lo, hi)) = range.split_once('-')
                && let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            {
                inside = (lo..hi).contains(&addr);
                continue;
            }
            if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.trim().to_string();
            }
        }
        panic!("no mapping holds {addr:#x}")
    }

    /// Whether the mapping holding `bytes` is advised `MADV_RANDOM` (`rr` in smaps).
    fn random(bytes: &OwnedBytes) -> bool {
        vm_flags(bytes.as_slice().as_ptr() as usize).split(' ').any(|f| f == "rr")
    }

    #[test]
    fn docstores_and_point_reads_are_mapped_without_readaround_and_scans_keep_it() {
        let tmp = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..3 * WILL_NEED_MAX).map(|i| (i % 251) as u8).collect();
        std::fs::write(tmp.path().join("seg.store"), &content).unwrap();
        std::fs::write(tmp.path().join("seg.fast"), &content).unwrap();
        let mmap = MmapDirectory::open(tmp.path()).unwrap();
        let dir = ReadAdvice::new(mmap, tmp.path()).unwrap();

        let store = dir.get_file_handle(Path::new("seg.store")).unwrap();
        let block = store.read_bytes(4096..70_000).unwrap();
        assert_eq!(block.as_slice(), &content[4096..70_000]);
        assert!(random(&block), "a docstore block: no readaround");
        let whole = store.read_bytes(0..content.len()).unwrap();
        assert_eq!(whole.as_slice(), &content[..]);
        assert!(!random(&whole), "a whole docstore (a merge): readahead");

        // The fast-field file: normal for scans; under its point-reads name, the same bytes in
        // a mapping of their own, without readaround.
        let scans = dir.get_file_handle(Path::new("seg.fast")).unwrap().read_bytes(0..content.len()).unwrap();
        assert!(!random(&scans), "other files keep the normal advice");
        let name = point_reads("seg.fast");
        assert!(dir.exists(&name).unwrap());
        let points = dir.get_file_handle(&name).unwrap().read_bytes(0..content.len()).unwrap();
        assert_eq!(points.as_slice(), &content[..]);
        assert!(random(&points), "point reads: no readaround");
        assert!(!random(&scans), "point reads leave the scans' mapping alone");
        assert!(!dir.exists(&point_reads("absent.fast")).unwrap());

        // An empty file has no mapping to advise.
        std::fs::write(tmp.path().join("empty.store"), b"").unwrap();
        assert_eq!(dir.get_file_handle(Path::new("empty.store")).unwrap().len(), 0);
    }
}
