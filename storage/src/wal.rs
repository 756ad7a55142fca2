//! Write-ahead log: the only mutable state of the store that holds acknowledged data not yet in
//! an index or block.
//!
//! One log per signal, a directory of files named `{first_seq:020}.wal`. Each file starts with
//! the [`crate::format`] header (`OBXWAL\0\0`, version 1) followed by records:
//!
//! ```text
//! u32 LE  payload length
//! u32 LE  CRC32 over (seq bytes ++ payload)
//! u64 LE  seq
//! payload (an OTLP Export*ServiceRequest, protobuf; as received, when the store was given it)
//! ```
//!
//! A dedicated thread owns the open file and does group commit: it takes every append waiting
//! in its queue, writes them with one `write`, makes them durable with one `fdatasync` (policy
//! `group`), and only then reports each append as durable. A failed write or fsync refuses its
//! group and cuts it off the file again (see `writer_loop` for why an fsync is never retried);
//! a full disk refuses with [`StoreError::DiskFull`] and tells [`DiskSpace`].
//!
//! On open, a torn tail (a crash in the middle of a write) is cut off at the last whole record
//! and set aside in `quarantine/`; no acknowledged record can be in it, because acknowledgement
//! follows the fsync of the whole record. Damage in the middle of a file (a bad disk, not a
//! crash) is skipped over, see [`Wal::open`].

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::StoreError;
use crate::config::FsyncPolicy;
use crate::format;
use crate::quarantine::Quarantine;
use crate::space::DiskSpace;

const MAGIC: &[u8; 8] = b"OBXWAL\0\0";
const VERSION: u32 = 1;
const RECORD_HEADER: usize = 16;
/// A record larger than this is treated as corruption when reading.
const MAX_RECORD: usize = 1 << 30;

/// One record read back from the log.
pub(crate) struct WalRecord {
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// What the WAL thread does with each record once it is durable.
pub(crate) type OnDurable = Box<dyn FnOnce(Result<u64, StoreError>) + Send>;

/// Writes a record's payload into the log's buffer (runs on the WAL thread).
pub(crate) type Encode = Box<dyn FnOnce(&mut Vec<u8>) + Send>;

struct Append {
    encode: Encode,
    on_durable: OnDurable,
}

#[derive(Clone, Debug)]
struct FileInfo {
    path: PathBuf,
    first_seq: u64,
    /// Last seq written to the file (first_seq - 1 when empty).
    last_seq: u64,
    bytes: u64,
}

struct Shared {
    /// Closed files, oldest first, then the open one last.
    files: Mutex<Vec<FileInfo>>,
    dir: PathBuf,
    /// The writer thread, joined by [`WalSize::join_writer`].
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Handle to a signal's write-ahead log. Cloning shares the same log.
#[derive(Clone)]
pub(crate) struct Wal {
    tx: mpsc::Sender<Append>,
    shared: Arc<Shared>,
}

/// Reads the size of a log; outlives the [`Wal`] handles without holding the log open.
pub(crate) struct WalSize(Arc<Shared>);

impl WalSize {
    /// Bytes of log on disk.
    pub fn bytes(&self) -> u64 {
        self.0.files.lock().iter().map(|f| f.bytes).sum()
    }

    /// Waits until the writer thread has written what was queued and stopped, which it does
    /// once every [`Wal`] handle is dropped; so the callbacks it runs are done, too.
    pub fn join_writer(&self) {
        let handle = self.0.thread.lock().take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    /// After [`WalSize::join_writer`]: deletes every closed file whose records all have seq <=
    /// `seq`, and when the last file's records are all <= `seq` too, empties it and names it for
    /// `seq + 1`, so a cleanly closed store keeps no log it will not replay. The emptied file is
    /// kept, not deleted: the next [`Wal::open`] (whose `after_seq` is at least `seq`) takes it
    /// over by name, which works on a full disk where creating a file would not. Emptied before
    /// renamed, so a crash between the two leaves an empty file under its old name, which the
    /// open deletes.
    pub fn empty_through_after_close(&self, seq: u64) -> Result<(), StoreError> {
        if self.0.thread.lock().is_some() {
            return Err(StoreError::Unavailable("write-ahead log writer still running".into()));
        }
        let mut files = self.0.files.lock();
        remove_closed_through(&mut files, seq)?;
        let Some(last) = files.last_mut().filter(|f| f.last_seq <= seq) else { return Ok(()) };
        if last.bytes > format::HEADER_LEN as u64 {
            let f = OpenOptions::new().write(true).open(&last.path)?;
            f.set_len(format::HEADER_LEN as u64)?;
            f.sync_all()?;
            last.bytes = format::HEADER_LEN as u64;
        }
        let path = self.0.dir.join(format!("{:020}.wal", seq + 1));
        if path != last.path {
            fs::rename(&last.path, &path)?;
            sync_dir(&self.0.dir)?;
            *last = FileInfo { path, first_seq: seq + 1, last_seq: seq, bytes: last.bytes };
        }
        Ok(())
    }
}

/// Settings of one log.
#[derive(Clone)]
pub(crate) struct WalOptions {
    pub fsync: FsyncPolicy,
    pub fsync_interval: Duration,
    pub file_bytes: u64,
    /// Name of the writer thread.
    pub thread_name: String,
    /// Told about full-disk errors, so that the store refuses writes until space returns.
    pub space: Option<Arc<DiskSpace>>,
    /// Where damaged files go.
    pub quarantine: Quarantine,
}

impl Wal {
    /// Opens (creating) the log in `dir`, returns the handle and every intact record whose seq is
    /// greater than `after_seq`, in order. Records up to `after_seq` are already in an index.
    ///
    /// Damage is repaired rather than refused, so the store always starts: a torn tail (a crash
    /// in the middle of a write; nothing in it was acknowledged) is cut off and its bytes set
    /// aside; a damaged record in the middle of a file, or a damaged file header, is skipped:
    /// the file is rewritten with its intact records (every record after the damage included,
    /// found again by its header, checksum and increasing seq) and the original is set aside in
    /// `quarantine/`. The records in the damaged range are lost and the log line names their
    /// seqs. A file written by a newer format version is refused, not repaired.
    pub fn open(dir: &Path, opts: WalOptions, after_seq: u64) -> Result<(Wal, Vec<WalRecord>), StoreError> {
        fs::create_dir_all(dir)?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("wal") {
                continue;
            }
            let Some(first) = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<u64>().ok()) else {
                continue;
            };
            names.push((first, path));
        }
        names.sort();

        let mut files = Vec::new();
        let mut replay = Vec::new();
        let mut next_seq = after_seq + 1;
        for (first_seq, path) in names {
            let data = fs::read(&path)?;
            if data.len() < format::HEADER_LEN {
                // Crash while creating the file: nothing was ever acknowledged from it.
                tracing::warn!(path = %path.display(), bytes = data.len(), "removing a write-ahead log file cut short at creation");
                fs::remove_file(&path)?;
                continue;
            }
            let scan = scan(&data, &path, first_seq)?;
            let good_len = repair(&path, &data, &scan, &opts.quarantine)?;
            let last_seq = scan.records.last().map(|r| r.seq).unwrap_or(first_seq.saturating_sub(1));
            for r in scan.records {
                next_seq = next_seq.max(r.seq + 1);
                if r.seq > after_seq {
                    replay.push(r);
                }
            }
            files.push(FileInfo { path, first_seq, last_seq, bytes: good_len });
        }
        // An empty last file is recreated below under the same name.
        if files.last().is_some_and(|f: &FileInfo| f.first_seq == next_seq) {
            files.pop();
        }
        let (file, file_bytes) = match open_new_file(dir, next_seq) {
            Ok((file, path)) => {
                files.push(FileInfo {
                    path,
                    first_seq: next_seq,
                    last_seq: next_seq - 1,
                    bytes: format::HEADER_LEN as u64,
                });
                (file, format::HEADER_LEN as u64)
            }
            // On a full disk, go on appending to the last file rather than fail to start.
            Err(StoreError::Io(e)) if crate::space::is_disk_full(&e) && !files.is_empty() => {
                let _ = fs::remove_file(dir.join(format!("{next_seq:020}.wal")));
                let last = files.last().expect("not empty");
                let mut file = OpenOptions::new().write(true).open(&last.path)?;
                file.seek(SeekFrom::Start(last.bytes))?;
                tracing::warn!(path = %last.path.display(), "disk full at open: appending to the last write-ahead log file");
                (file, last.bytes)
            }
            Err(e) => return Err(e),
        };
        let shared = Arc::new(Shared { files: Mutex::new(files), dir: dir.to_path_buf(), thread: Mutex::new(None) });
        let wal = Wal { tx: spawn_writer(file, file_bytes, next_seq, opts, shared.clone())?, shared };
        wal.truncate_through(after_seq)?;
        Ok((wal, replay))
    }

    /// Queues one record whose payload `encode` writes (on the WAL thread, so callers do not pay
    /// for serialisation). `on_durable` runs on the WAL thread, in seq order, once the record is
    /// durable under the fsync policy (or failed). It must be quick.
    pub fn append(&self, encode: Encode, on_durable: OnDurable) {
        if let Err(mpsc::SendError(a)) = self.tx.send(Append { encode, on_durable }) {
            (a.on_durable)(Err(StoreError::Unavailable("write-ahead log is closed".into())));
        }
    }

    /// Deletes closed files whose records all have seq <= `seq` (they are in an index now).
    pub fn truncate_through(&self, seq: u64) -> Result<(), StoreError> {
        remove_closed_through(&mut self.shared.files.lock(), seq)
    }

    /// Reads back the acknowledged records with `after < seq <= through`, in order, from the
    /// files on disk (while the writer goes on appending). An index that lost uncommitted
    /// documents (a failed commit) rebuilds them from here: the log is truncated only through
    /// the last successful commit, so they are all still in it.
    pub fn read_range(&self, after: u64, through: u64) -> Result<Vec<WalRecord>, StoreError> {
        let paths: Vec<(PathBuf, u64)> = self
            .shared
            .files
            .lock()
            .iter()
            .filter(|f| f.last_seq > after && f.first_seq <= through)
            .map(|f| (f.path.clone(), f.first_seq))
            .collect();
        let mut out = Vec::new();
        for (path, first_seq) in paths {
            let data = fs::read(&path)?;
            // Only acknowledged (whole, fsynced) records are asked for: the scan's tail is the
            // group being written right now.
            for r in scan(&data, &path, first_seq)?.records {
                if r.seq > after && r.seq <= through {
                    out.push(r);
                }
            }
        }
        // The record `through` was acknowledged, so it must be there.
        if through > after && out.last().map(|r| r.seq) != Some(through) {
            return Err(StoreError::Unavailable(format!(
                "write-ahead log lacks acknowledged record {through} (read {} records after {after})",
                out.len()
            )));
        }
        Ok(out)
    }

    /// A handle that reads the log's size without keeping the writer thread alive.
    pub fn size(&self) -> WalSize {
        WalSize(self.shared.clone())
    }
}

/// Deletes the files before the last (which is being written, or emptied at close) whose records
/// all have seq <= `seq`, oldest first, and drops them from `files`.
fn remove_closed_through(files: &mut Vec<FileInfo>, seq: u64) -> Result<(), StoreError> {
    while files.len() > 1 && files[0].last_seq <= seq {
        let f = files.remove(0);
        match fs::remove_file(&f.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                files.insert(0, f);
                return Err(e.into());
            }
        }
    }
    Ok(())
}

fn open_new_file(dir: &Path, first_seq: u64) -> Result<(File, PathBuf), StoreError> {
    let path = dir.join(format!("{first_seq:020}.wal"));
    let mut f = OpenOptions::new().create(true).write(true).truncate(true).open(&path)?;
    format::write_header(&mut f, MAGIC, VERSION)?;
    f.sync_all()?;
    sync_dir(dir)?;
    Ok((f, path))
}

pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What a file holds: its intact records, where they are, and what is damaged.
struct Scan {
    records: Vec<WalRecord>,
    /// Byte ranges of the intact records, in file order.
    good: Vec<(usize, usize)>,
    /// Damaged ranges followed by intact records (or a damaged header): acknowledged data lost.
    damaged: Vec<(usize, usize)>,
    /// Start of a torn tail: from here to the end no intact record follows.
    tail: Option<usize>,
}

/// Parses the record at `pos` when it is intact and its seq lies in `(after, after + 2^32]`.
fn record_at(data: &[u8], pos: usize, after: u64) -> Option<(WalRecord, usize)> {
    let head = data.get(pos..pos + RECORD_HEADER)?;
    let len = u32::from_le_bytes(head[0..4].try_into().expect("4")) as usize;
    let crc = u32::from_le_bytes(head[4..8].try_into().expect("4"));
    let seq = u64::from_le_bytes(head[8..16].try_into().expect("8"));
    if len > MAX_RECORD || seq <= after || seq - after > 1 << 32 {
        return None;
    }
    let payload = data.get(pos + RECORD_HEADER..pos + RECORD_HEADER + len)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&head[8..16]);
    h.update(payload);
    (h.finalize() == crc).then(|| (WalRecord { seq, payload: payload.to_vec() }, pos + RECORD_HEADER + len))
}

/// Reads a whole file. Past a damaged record, the next intact record is looked for byte by
/// byte: its header, CRC32 and a seq above the last good one all have to match, which damage
/// or stale bytes pass by chance about once in 2^32 tries.
fn scan(data: &[u8], path: &Path, first_seq: u64) -> Result<Scan, StoreError> {
    let mut out = Scan { records: Vec::new(), good: Vec::new(), damaged: Vec::new(), tail: None };
    if let Some(v) = format::newer_version(data, MAGIC, VERSION) {
        return Err(format::newer_error(path, v, VERSION));
    }
    if format::check_header(data, path, MAGIC, VERSION).is_err() {
        out.damaged.push((0, format::HEADER_LEN));
    }
    let mut pos = format::HEADER_LEN;
    let mut last = first_seq.saturating_sub(1);
    while pos < data.len() {
        if let Some((r, end)) = record_at(data, pos, last) {
            last = r.seq;
            out.good.push((pos, end));
            out.records.push(r);
            pos = end;
            continue;
        }
        match (pos + 1..data.len()).find(|&p| record_at(data, p, last).is_some()) {
            Some(next) => {
                out.damaged.push((pos, next));
                pos = next;
            }
            None => {
                out.tail = Some(pos);
                break;
            }
        }
    }
    Ok(out)
}

/// Makes the file hold exactly its intact records (see [`Wal::open`]); returns its new length.
fn repair(path: &Path, data: &[u8], scan: &Scan, quarantine: &Quarantine) -> Result<u64, StoreError> {
    if scan.damaged.is_empty() {
        let Some(tail) = scan.tail else { return Ok(data.len() as u64) };
        if let Err(e) = quarantine.keep_bytes(
            path,
            &format!("tail-at-{tail}"),
            &data[tail..],
            "torn write-ahead log tail (a crash during a write; nothing in it was acknowledged)",
        ) {
            // A full disk must not keep the store from starting: the tail holds nothing acknowledged.
            tracing::warn!(path = %path.display(), error = %e, bytes = data.len() - tail, "cannot keep a copy of a torn write-ahead log tail; cutting it off without one");
        }
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(tail as u64)?;
        f.sync_all()?;
        return Ok(tail as u64);
    }
    // Seqs lost: the gaps between the intact records around each damaged range.
    let mut lost = Vec::new();
    for &(start, end) in &scan.damaged {
        let before = scan.good.iter().rposition(|g| g.1 <= start).map(|i| scan.records[i].seq);
        let after = scan.good.iter().position(|g| g.0 >= end).map(|i| scan.records[i].seq);
        lost.push(match (before, after) {
            _ if start == 0 => "nothing (the file header, rewritten)".to_string(),
            (Some(b), Some(a)) if a == b + 2 => format!("record {}", b + 1),
            (Some(b), Some(a)) if a > b + 2 => format!("records {}..={}", b + 1, a - 1),
            (None, Some(a)) => format!("records before {a}"),
            _ => "no whole record".to_string(),
        });
    }
    match rewrite(path, data, scan, quarantine, &lost) {
        Ok(len) => Ok(len),
        Err(e) => {
            // On a full disk the repair waits: the intact records replay anyway, new records go
            // to a new file, and the next start tries again.
            tracing::error!(
                path = %path.display(),
                error = %e,
                lost = %lost.join(", "),
                "damaged write-ahead log file cannot be repaired now; replaying its intact records"
            );
            Ok(data.len() as u64)
        }
    }
}

/// Keeps the damaged file in quarantine and replaces it with its intact records.
fn rewrite(path: &Path, data: &[u8], scan: &Scan, quarantine: &Quarantine, lost: &[String]) -> Result<u64, StoreError> {
    quarantine.link_aside(
        path,
        &format!("damaged write-ahead log ranges {:?}", scan.damaged),
        &format!("{} (kept: {} intact records)", lost.join(", "), scan.records.len()),
    )?;
    let mut repaired = Vec::with_capacity(data.len());
    format::write_header(&mut repaired, MAGIC, VERSION)?;
    for &(start, end) in &scan.good {
        repaired.extend_from_slice(&data[start..end]);
    }
    let tmp = path.with_extension("wal.tmp");
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&repaired)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e.into());
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(repaired.len() as u64)
}

fn spawn_writer(
    file: File,
    file_bytes: u64,
    next_seq: u64,
    opts: WalOptions,
    shared: Arc<Shared>,
) -> Result<mpsc::Sender<Append>, StoreError> {
    let (tx, rx) = mpsc::channel::<Append>();
    let thread_shared = shared.clone();
    let handle = std::thread::Builder::new()
        .name(opts.thread_name.clone())
        .spawn(move || writer_loop(rx, file, file_bytes, next_seq, opts, thread_shared))?;
    *shared.thread.lock() = Some(handle);
    Ok(tx)
}

/// The error a refused append gets: a full disk says so (retryable either way).
fn write_error(opts: &WalOptions, e: &std::io::Error) -> impl Fn() -> StoreError + use<> {
    let full = opts.space.as_ref().is_some_and(|s| s.note(e)) || crate::space::is_disk_full(e);
    let message = e.to_string();
    move || {
        if full {
            StoreError::DiskFull("no space left for the write-ahead log".into())
        } else {
            StoreError::Unavailable(format!("write-ahead log write failed: {message}"))
        }
    }
}

/// Cuts the file back to `len` (the end of the last acknowledged record) and makes the cut
/// durable, so that the file ends with a whole record again.
fn cut_back(file: &mut File, len: u64) -> std::io::Result<()> {
    file.set_len(len)?;
    file.seek(SeekFrom::Start(len))?;
    file.sync_all()
}

// On a failed write or fsync the group is refused and cut off the file, and nothing is ever
// retried and then trusted for the same pages: after a failed fsync Linux may have dropped the
// dirty pages and report the next fsync as successful ("fsyncgate"), so a retried fsync proves
// nothing. Records acknowledged before were made durable by earlier successful fsyncs and stay.
// When the cut itself fails, the file's tail is unknown: the next group starts a new file (the
// reader stops at the damage in the old one, which holds nothing acknowledged past it).
fn writer_loop(
    rx: mpsc::Receiver<Append>,
    mut file: File,
    mut file_bytes: u64,
    mut next_seq: u64,
    opts: WalOptions,
    shared: Arc<Shared>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut group: Vec<(u64, OnDurable)> = Vec::new();
    let mut unsynced = false;
    let mut last_sync = Instant::now();
    // Why the open file cannot take more records (a cut-back failed).
    let mut broken: Option<String> = None;
    loop {
        // Wait for work; with the interval policy, wake up to fsync in time.
        let first = if unsynced {
            let wait = opts.fsync_interval.saturating_sub(last_sync.elapsed());
            match rx.recv_timeout(wait) {
                Ok(a) => Some(a),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(a) => Some(a),
                Err(_) => break,
            }
        };
        if unsynced && last_sync.elapsed() >= opts.fsync_interval {
            if let Err(e) = file.sync_data() {
                // Records acknowledged since the last fsync survive a process crash (they are
                // in the page cache) but maybe not a power loss; nothing can un-acknowledge them.
                if let Some(space) = &opts.space {
                    space.note(&e);
                }
                tracing::error!(error = %e, "write-ahead log background fsync failed; records acknowledged in the last interval may not survive a power loss");
            }
            unsynced = false;
            last_sync = Instant::now();
        }
        let Some(first) = first else { continue };
        if let Some(reason) = &broken {
            match rotate(&shared, &mut file, next_seq) {
                Ok(()) => {
                    tracing::info!(previous = %reason, "write-ahead log continues in a new file");
                    file_bytes = format::HEADER_LEN as u64;
                    broken = None;
                }
                Err(e) => {
                    let error: Box<dyn Fn() -> StoreError> = match &e {
                        StoreError::Io(io) => Box::new(write_error(&opts, io)),
                        other => {
                            let text = other.to_string();
                            Box::new(move || StoreError::Unavailable(format!("write-ahead log unavailable: {text}")))
                        }
                    };
                    (first.on_durable)(Err(error()));
                    while let Ok(a) = rx.try_recv() {
                        (a.on_durable)(Err(error()));
                    }
                    continue;
                }
            }
        }
        buf.clear();
        group.clear();
        let group_first = next_seq;
        let mut pending = Some(first);
        while let Some(a) = pending.take() {
            let seq = next_seq;
            next_seq += 1;
            encode_record(&mut buf, seq, a.encode);
            group.push((seq, a.on_durable));
            if buf.len() < 16 << 20 {
                pending = rx.try_recv().ok();
            }
        }
        let result = file.write_all(&buf).and_then(|()| match opts.fsync {
            FsyncPolicy::Group => file.sync_data(),
            FsyncPolicy::Interval => {
                unsynced = true;
                Ok(())
            }
        });
        match result {
            Ok(()) => {
                file_bytes += buf.len() as u64;
                let last = group.last().map(|g| g.0).unwrap_or(0);
                if let Some(cur) = shared.files.lock().last_mut() {
                    cur.last_seq = last;
                    cur.bytes = file_bytes;
                }
                for (seq, cb) in group.drain(..) {
                    cb(Ok(seq));
                }
            }
            Err(e) => {
                let error = write_error(&opts, &e);
                if !matches!(error(), StoreError::DiskFull(_)) {
                    tracing::error!(error = %e, "write-ahead log write failed");
                }
                for (_, cb) in group.drain(..) {
                    cb(Err(error()));
                }
                match cut_back(&mut file, file_bytes) {
                    // The refused records are gone from the file: their seqs are free again.
                    Ok(()) => next_seq = group_first,
                    Err(e2) => {
                        tracing::error!(error = %e2, "cannot cut the write-ahead log back after a failed write; starting a new file");
                        broken = Some(format!("cut-back failed: {e2}"));
                    }
                }
                continue;
            }
        }
        if file_bytes >= opts.file_bytes {
            match rotate(&shared, &mut file, next_seq) {
                Ok(()) => file_bytes = format::HEADER_LEN as u64,
                Err(e) => tracing::error!(error = %e, "write-ahead log rotation failed"),
            }
        }
    }
    let _ = file.sync_data();
}

/// Closes the current file and starts a new one whose first record is `next_seq`.
fn rotate(shared: &Shared, file: &mut File, next_seq: u64) -> Result<(), StoreError> {
    let _ = file.sync_data();
    let (f, path) = open_new_file(&shared.dir, next_seq)?;
    *file = f;
    let mut files = shared.files.lock();
    files.push(FileInfo { path, first_seq: next_seq, last_seq: next_seq - 1, bytes: format::HEADER_LEN as u64 });
    Ok(())
}

fn encode_record(buf: &mut Vec<u8>, seq: u64, encode: Encode) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 8]);
    buf.extend_from_slice(&seq.to_le_bytes());
    encode(buf);
    let len = (buf.len() - start - RECORD_HEADER) as u32;
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    fn opts() -> WalOptions {
        WalOptions {
            fsync: FsyncPolicy::Group,
            fsync_interval: Duration::from_millis(10),
            file_bytes: 1 << 20,
            thread_name: "wal-test".into(),
            space: None,
            quarantine: Quarantine::default(),
        }
    }

    fn bytes(payload: Vec<u8>) -> Encode {
        Box::new(move |buf| buf.extend_from_slice(&payload))
    }

    fn append_sync(wal: &Wal, payload: Vec<u8>) -> u64 {
        let (tx, rx) = channel();
        wal.append(bytes(payload), Box::new(move |r| tx.send(r).unwrap()));
        rx.recv().unwrap().unwrap()
    }

    #[test]
    fn records_survive_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, replay) = Wal::open(dir.path(), opts(), 0).unwrap();
        assert!(replay.is_empty());
        let seqs: Vec<u64> = (0..100u32).map(|i| append_sync(&wal, i.to_le_bytes().to_vec())).collect();
        assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
        drop(wal);
        let (wal, replay) = Wal::open(dir.path(), opts(), 40).unwrap();
        assert_eq!(replay.len(), 60);
        assert_eq!(replay[0].seq, 41);
        assert_eq!(replay[0].payload, 40u32.to_le_bytes());
        assert_eq!(append_sync(&wal, vec![1]), 101);
    }

    #[test]
    fn torn_tail_is_cut_and_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), opts(), 0).unwrap();
        for i in 0..10u8 {
            append_sync(&wal, vec![i; 100]);
        }
        drop(wal);
        std::thread::sleep(Duration::from_millis(50));
        let path = dir.path().join(format!("{:020}.wal", 1));
        // A crash in the middle of a record, then garbage.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        let o = opts();
        let (wal, replay) = Wal::open(dir.path(), o.clone(), 0).unwrap();
        assert_eq!(replay.len(), 10);
        let aside = dir.path().join(format!("quarantine/{:020}.wal.tail-at-{}", 1, fs::metadata(&path).unwrap().len()));
        assert_eq!(fs::read(aside).unwrap(), [200, 0, 0, 0, 1, 2, 3]);
        assert_eq!(o.quarantine.count(), 1);
        assert_eq!(append_sync(&wal, vec![1]), 11);
    }

    fn write_five(dir: &Path) -> PathBuf {
        let (wal, _) = Wal::open(dir, opts(), 0).unwrap();
        for i in 0..5u8 {
            append_sync(&wal, vec![i; 10]);
        }
        drop(wal);
        std::thread::sleep(Duration::from_millis(50));
        dir.join(format!("{:020}.wal", 1))
    }

    #[test]
    fn a_flipped_bit_loses_only_the_damaged_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_five(dir.path());
        let mut data = fs::read(&path).unwrap();
        let original = data.clone();
        let third = format::HEADER_LEN + 2 * (RECORD_HEADER + 10) + RECORD_HEADER + 3;
        data[third] ^= 0xff;
        fs::write(&path, &data).unwrap();
        let o = opts();
        let (wal, replay) = Wal::open(dir.path(), o.clone(), 0).unwrap();
        assert_eq!(replay.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 4, 5]);
        assert_eq!(replay[3].payload, vec![4u8; 10]);
        assert_eq!(o.quarantine.count(), 1);
        assert_eq!(fs::read(dir.path().join(format!("quarantine/{:020}.wal", 1))).unwrap(), data, "original kept");
        assert_eq!(fs::read(&path).unwrap().len(), original.len() - RECORD_HEADER - 10, "file repaired");
        assert_eq!(append_sync(&wal, vec![9]), 6);
        drop(wal);
        std::thread::sleep(Duration::from_millis(50));
        let o = opts();
        let (_, replay) = Wal::open(dir.path(), o.clone(), 0).unwrap();
        assert_eq!(replay.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 4, 5, 6]);
        assert_eq!(o.quarantine.count(), 0, "the repair holds");
    }

    #[test]
    fn a_damaged_length_field_is_skipped_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_five(dir.path());
        let mut data = fs::read(&path).unwrap();
        // Record 2's length says 4 GiB: nothing tells where record 3 starts but its own header.
        let second = format::HEADER_LEN + RECORD_HEADER + 10;
        data[second + 3] = 0xff;
        fs::write(&path, &data).unwrap();
        let (_, replay) = Wal::open(dir.path(), opts(), 0).unwrap();
        assert_eq!(replay.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 3, 4, 5]);
    }

    #[test]
    fn a_garbage_header_is_rewritten_and_the_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_five(dir.path());
        let mut data = fs::read(&path).unwrap();
        data[..format::HEADER_LEN].copy_from_slice(b"garbage!");
        fs::write(&path, &data).unwrap();
        let o = opts();
        let (_, replay) = Wal::open(dir.path(), o.clone(), 0).unwrap();
        assert_eq!(replay.len(), 5);
        assert_eq!(o.quarantine.count(), 1);
        assert_eq!(&fs::read(&path).unwrap()[..8], MAGIC);
    }

    #[test]
    fn a_file_cut_inside_its_header_is_dropped_and_a_newer_version_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_five(dir.path());
        let mut data = fs::read(&path).unwrap();
        let later = dir.path().join(format!("{:020}.wal", 6));
        fs::write(&later, &data[..5]).unwrap();
        let (_, replay) = Wal::open(dir.path(), opts(), 0).unwrap();
        assert_eq!(replay.len(), 5);
        std::thread::sleep(Duration::from_millis(50));
        data[8] = 99;
        fs::write(&path, &data).unwrap();
        let err = Wal::open(dir.path(), opts(), 0).err().expect("refused");
        assert!(err.to_string().contains("format version 99 was written by a newer obsbox"), "{err}");
    }

    #[test]
    fn read_range_returns_acknowledged_records_while_appending() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), opts(), 0).unwrap();
        for i in 0..30u32 {
            append_sync(&wal, vec![i as u8; 50_000]);
        }
        let got = wal.read_range(10, 25).unwrap();
        assert_eq!(got.iter().map(|r| r.seq).collect::<Vec<_>>(), (11..=25).collect::<Vec<_>>());
        assert_eq!(got[0].payload, vec![10u8; 50_000]);
        assert!(wal.read_range(25, 31).is_err(), "record 31 was never acknowledged");
    }

    #[test]
    fn rotation_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), opts(), 0).unwrap();
        for _ in 0..40 {
            append_sync(&wal, vec![7; 100_000]);
        }
        let files = || fs::read_dir(dir.path()).unwrap().count();
        assert!(files() > 2, "rotated at 1 MiB");
        wal.truncate_through(40).unwrap();
        assert_eq!(files(), 1, "only the open file is left");
        drop(wal);
        std::thread::sleep(Duration::from_millis(50));
        let (_, replay) = Wal::open(dir.path(), opts(), 40).unwrap();
        assert!(replay.is_empty());
    }

    #[test]
    fn group_commit_acknowledges_concurrent_appends() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), opts(), 0).unwrap();
        let (tx, rx) = channel();
        for i in 0..1000u32 {
            let tx = tx.clone();
            wal.append(bytes(i.to_le_bytes().to_vec()), Box::new(move |r| tx.send(r.unwrap()).unwrap()));
        }
        let mut got: Vec<u64> = (0..1000).map(|_| rx.recv().unwrap()).collect();
        let sorted = {
            let mut s = got.clone();
            s.sort();
            s
        };
        assert_eq!(got, sorted, "acknowledged in seq order");
        got.dedup();
        assert_eq!(got.len(), 1000);
    }
}
