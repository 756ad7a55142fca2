//! Durable per-SLO per-bucket (good, total) counts: one append-only file per SLO under
//! `<data_dir>/slo/counts/<slo>.counts`.
//!
//! Layout (little-endian):
//! ```text
//! magic "OBXSLOC\0" | u32 format version (1)
//! u64 bucket_ns | u32 time_scale | u32 key_len | key (UTF-8) | u32 CRC-32 of the header so far
//! records: i64 bucket | u64 good | u64 total | u32 CRC-32 of the 24 bytes before   (28 bytes)
//! ```
//! The key names what is counted (the SLI definition): a file whose bucket length, scale or key
//! differs is set aside (renamed `<slo>.counts.old-<unix s>`) and counting starts fresh, so
//! counts of another definition or time scale are never mixed in. A later record for a bucket
//! replaces an earlier one. On open, a torn or garbled tail (a short record, a CRC mismatch) is
//! cut off, which is what a crash mid-append leaves; [`Counts::sync`] (fsync) runs at each
//! evaluation. [`Counts::compact`] rewrites the file with one record per bucket inside the
//! retention (temporary file, fsync, atomic rename, fsync of the directory).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::SloError;

const MAGIC: &[u8; 8] = b"OBXSLOC\0";
const VERSION: u32 = 1;
const RECORD_LEN: usize = 28;
/// Longest definition key kept in a header.
const MAX_KEY: usize = 64 * 1024;

/// What a counts file is for; a file with another identity is set aside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Real nanoseconds per bucket.
    pub bucket_ns: u64,
    /// Time compression factor.
    pub time_scale: u32,
    /// Text naming what is counted (changes when the SLI definition does).
    pub key: String,
}

/// The counts of one SLO: in memory, backed by its file.
#[derive(Debug)]
pub struct Counts {
    path: PathBuf,
    file: File,
    identity: Identity,
    buckets: BTreeMap<i64, (u64, u64)>,
    /// Records in the file (for compaction).
    records: usize,
    /// Bytes appended since the last sync.
    dirty: bool,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SloError + '_ {
    move |source| SloError::Io { path: path.to_path_buf(), source }
}

fn header(id: &Identity) -> Vec<u8> {
    let mut h = Vec::with_capacity(32 + id.key.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&id.bucket_ns.to_le_bytes());
    h.extend_from_slice(&id.time_scale.to_le_bytes());
    h.extend_from_slice(&(id.key.len() as u32).to_le_bytes());
    h.extend_from_slice(id.key.as_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// Parses a header: its identity and length, or why it is unreadable.
fn parse_header(buf: &[u8]) -> Result<(Identity, usize), String> {
    let u32_at = |i: usize| buf.get(i..i + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    if buf.len() < 12 || &buf[..8] != MAGIC {
        return Err("bad magic number".into());
    }
    let version = u32_at(8).unwrap_or(0);
    if version != VERSION {
        return Err(format!("unsupported format version {version}"));
    }
    let short = || "short header".to_string();
    let bucket_ns = u64::from_le_bytes(buf.get(12..20).ok_or_else(short)?.try_into().expect("8 bytes"));
    let time_scale = u32_at(20).ok_or_else(short)?;
    let key_len = u32_at(24).ok_or_else(short)? as usize;
    if key_len > MAX_KEY {
        return Err("header key too long".into());
    }
    let key = buf.get(28..28 + key_len).ok_or_else(short)?;
    let crc = u32_at(28 + key_len).ok_or_else(short)?;
    if crc32fast::hash(&buf[..28 + key_len]) != crc {
        return Err("header checksum mismatch".into());
    }
    let key = String::from_utf8(key.to_vec()).map_err(|_| "header key is not UTF-8".to_string())?;
    Ok((Identity { bucket_ns, time_scale, key }, 32 + key_len))
}

fn record(bucket: i64, good: u64, total: u64) -> [u8; RECORD_LEN] {
    let mut r = [0u8; RECORD_LEN];
    r[..8].copy_from_slice(&bucket.to_le_bytes());
    r[8..16].copy_from_slice(&good.to_le_bytes());
    r[16..24].copy_from_slice(&total.to_le_bytes());
    let crc = crc32fast::hash(&r[..24]);
    r[24..].copy_from_slice(&crc.to_le_bytes());
    r
}

fn sync_dir(dir: &Path) -> Result<(), SloError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl Counts {
    /// Opens (or creates) the counts file of `slo` in `dir`. A file of another identity, or
    /// one whose header is unreadable, is renamed aside and a fresh file started; a torn tail
    /// is cut off.
    pub fn open(dir: &Path, slo: &str, identity: Identity) -> Result<Counts, SloError> {
        // The name becomes a file name: only what OpenSLO allows in `metadata.name`.
        if slo.is_empty() || !slo.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(SloError::InvalidConfig {
                key: "metadata.name",
                reason: format!("{slo:?} is not a valid SLO name"),
            });
        }
        fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join(format!("{slo}.counts"));
        let mut buckets = BTreeMap::new();
        let mut records = 0;
        if path.exists() {
            let mut buf = Vec::new();
            File::open(&path).and_then(|mut f| f.read_to_end(&mut buf)).map_err(io(&path))?;
            match parse_header(&buf) {
                Ok((id, start)) if id == identity => {
                    let mut at = start;
                    while let Some(r) = buf.get(at..at + RECORD_LEN) {
                        if crc32fast::hash(&r[..24]).to_le_bytes() != r[24..] {
                            break;
                        }
                        let n = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().expect("8 bytes"));
                        buckets.insert(n(0) as i64, (n(8), n(16)));
                        records += 1;
                        at += RECORD_LEN;
                    }
                    if at < buf.len() {
                        tracing::warn!(path = %path.display(), cut = buf.len() - at, "slo counts: cutting a torn tail");
                        let f = OpenOptions::new().write(true).open(&path).map_err(io(&path))?;
                        f.set_len(at as u64).and_then(|()| f.sync_all()).map_err(io(&path))?;
                    }
                    let file = OpenOptions::new().append(true).open(&path).map_err(io(&path))?;
                    return Ok(Counts { path, file, identity, buckets, records, dirty: false });
                }
                other => {
                    let why = match other {
                        Ok(_) => "written for another definition or time scale".to_string(),
                        Err(e) => e,
                    };
                    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                    let aside = dir.join(format!("{slo}.counts.old-{now}"));
                    tracing::warn!(path = %path.display(), aside = %aside.display(), reason = %why, "slo counts: setting the file aside and counting afresh");
                    fs::rename(&path, &aside).map_err(io(&path))?;
                }
            }
        }
        let tmp = dir.join(format!("{slo}.counts.tmp"));
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&header(&identity)).and_then(|()| f.sync_all()).map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(dir)?;
        let file = OpenOptions::new().append(true).open(&path).map_err(io(&path))?;
        buckets.clear();
        Ok(Counts { path, file, identity, buckets, records: 0, dirty: false })
    }

    /// The identity the file was opened with.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The newest bucket recorded.
    pub fn last_bucket(&self) -> Option<i64> {
        self.buckets.last_key_value().map(|(b, _)| *b)
    }

    /// (good, total) of a bucket; (0, 0) when not recorded.
    pub fn get(&self, bucket: i64) -> (u64, u64) {
        self.buckets.get(&bucket).copied().unwrap_or((0, 0))
    }

    /// The recorded buckets in `from..to`, oldest first.
    pub fn range(&self, from: i64, to: i64) -> impl Iterator<Item = (i64, (u64, u64))> + '_ {
        self.buckets.range(from..to.max(from)).map(|(b, c)| (*b, *c))
    }

    /// Records a bucket's counts (appended, durable at the next [`Counts::sync`]). Unchanged
    /// values are not appended, except that a bucket never recorded is recorded even when
    /// empty (so the newest counted bucket survives a restart).
    pub fn set(&mut self, bucket: i64, good: u64, total: u64) -> Result<(), SloError> {
        if self.buckets.get(&bucket) == Some(&(good, total)) {
            return Ok(());
        }
        self.file.write_all(&record(bucket, good, total)).map_err(io(&self.path))?;
        self.buckets.insert(bucket, (good, total));
        self.records += 1;
        self.dirty = true;
        Ok(())
    }

    /// Makes every `set` so far durable (fsync).
    pub fn sync(&mut self) -> Result<(), SloError> {
        if self.dirty {
            self.file.sync_data().map_err(io(&self.path))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Drops buckets before `keep_from`; when the file holds more than twice the records it
    /// needs (plus slack), rewrites it with one record per kept bucket, atomically.
    pub fn compact(&mut self, keep_from: i64) -> Result<(), SloError> {
        self.buckets = self.buckets.split_off(&keep_from);
        if self.records <= 2 * self.buckets.len() + 1024 {
            return Ok(());
        }
        self.rewrite()
    }

    fn rewrite(&mut self) -> Result<(), SloError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = self.path.with_extension("counts.tmp");
        let mut data = header(&self.identity);
        for (b, (g, t)) in &self.buckets {
            data.extend_from_slice(&record(*b, *g, *t));
        }
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&data).and_then(|()| f.sync_all()).map_err(io(&tmp))?;
        fs::rename(&tmp, &self.path).map_err(io(&self.path))?;
        sync_dir(dir)?;
        self.file = OpenOptions::new().append(true).open(&self.path).map_err(io(&self.path))?;
        self.records = self.buckets.len();
        self.dirty = false;
        Ok(())
    }

    #[cfg(test)]
    fn file_len(&self) -> u64 {
        fs::metadata(&self.path).map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(key: &str) -> Identity {
        Identity { bucket_ns: 60_000_000_000, time_scale: 1, key: key.into() }
    }

    #[test]
    fn names_that_are_not_file_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "../x", "a/b", "A"] {
            assert!(Counts::open(dir.path(), bad, id("k")).is_err(), "{bad}");
        }
    }

    #[test]
    fn counts_survive_reopen_and_later_records_win() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Counts::open(dir.path(), "checkout", id("k")).unwrap();
        assert!(c.last_bucket().is_none());
        c.set(10, 5, 7).unwrap();
        c.set(11, 0, 0).unwrap();
        c.set(10, 6, 8).unwrap();
        c.sync().unwrap();
        drop(c);
        let c = Counts::open(dir.path(), "checkout", id("k")).unwrap();
        assert_eq!(c.get(10), (6, 8));
        assert_eq!(c.last_bucket(), Some(11));
        assert_eq!(c.range(0, 100).count(), 2);
    }

    #[test]
    fn a_torn_or_garbled_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Counts::open(dir.path(), "a", id("k")).unwrap();
        for b in 0..10 {
            c.set(b, b as u64, 10).unwrap();
        }
        c.sync().unwrap();
        let path = dir.path().join("a.counts");
        let full = fs::metadata(&path).unwrap().len();
        drop(c);
        // A crash mid-append: half a record.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(full - RECORD_LEN as u64 / 2).unwrap();
        drop(f);
        let mut c = Counts::open(dir.path(), "a", id("k")).unwrap();
        assert_eq!(c.last_bucket(), Some(8));
        assert_eq!(fs::metadata(&path).unwrap().len(), full - RECORD_LEN as u64, "tail cut on disk");
        c.set(9, 9, 10).unwrap();
        c.sync().unwrap();
        drop(c);
        // Garbage over the last two records: cut back to bucket 7.
        let mut bytes = fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - RECORD_LEN - 5] ^= 0xff;
        bytes.extend_from_slice(b"junk");
        fs::write(&path, &bytes).unwrap();
        let c = Counts::open(dir.path(), "a", id("k")).unwrap();
        assert_eq!(c.last_bucket(), Some(7));
        assert_eq!(c.get(7), (7, 10));
    }

    #[test]
    fn another_identity_or_a_bad_header_starts_fresh_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Counts::open(dir.path(), "a", id("k")).unwrap();
        c.set(1, 1, 1).unwrap();
        c.sync().unwrap();
        drop(c);
        let scaled = Identity { bucket_ns: 1_000_000_000, time_scale: 60, key: "k".into() };
        let mut c = Counts::open(dir.path(), "a", scaled.clone()).unwrap();
        assert!(c.last_bucket().is_none());
        c.set(2, 1, 1).unwrap();
        c.sync().unwrap();
        let aside: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("a.counts.old-"))
            .collect();
        assert_eq!(aside.len(), 1);
        drop(c);
        fs::write(dir.path().join("b.counts"), b"not a counts file").unwrap();
        let c = Counts::open(dir.path(), "b", id("k")).unwrap();
        assert!(c.last_bucket().is_none());
        assert_eq!(Counts::open(dir.path(), "a", scaled).unwrap().last_bucket(), Some(2), "same identity reopens");
    }

    #[test]
    fn compaction_keeps_the_newest_value_per_bucket_inside_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Counts::open(dir.path(), "a", id("k")).unwrap();
        for round in 0..3u64 {
            for b in 0..1000 {
                c.set(b, round, 10).unwrap();
            }
        }
        c.sync().unwrap();
        c.compact(500).unwrap();
        assert_eq!(c.file_len(), (32 + 1 + 500 * RECORD_LEN) as u64);
        c.set(1000, 1, 1).unwrap();
        c.sync().unwrap();
        drop(c);
        let c = Counts::open(dir.path(), "a", id("k")).unwrap();
        assert_eq!(c.range(0, 2000).count(), 501);
        assert_eq!(c.get(499), (0, 0));
        assert_eq!(c.get(500), (2, 10));
        assert_eq!(c.get(1000), (1, 1));
    }
}
