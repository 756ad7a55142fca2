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
//! payload (an OTLP Export*ServiceRequest, protobuf)
//! ```
//!
//! A dedicated thread owns the open file and does group commit: it takes every append waiting
//! in its queue, writes them with one `write`, makes them durable with one `fdatasync` (policy
//! `group`), and only then reports each append as durable. On open, a torn or corrupt tail (a
//! crash in the middle of a write) is cut off at the last whole record and set aside in a
//! `.corrupt` file; no acknowledged record can be in it, because acknowledgement follows the
//! fsync of the whole record.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::StoreError;
use crate::config::FsyncPolicy;
use crate::format;

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
}

/// Settings of one log.
#[derive(Clone, Debug)]
pub(crate) struct WalOptions {
    pub fsync: FsyncPolicy,
    pub fsync_interval: Duration,
    pub file_bytes: u64,
    /// Name of the writer thread.
    pub thread_name: String,
}

impl Wal {
    /// Opens (creating) the log in `dir`, returns the handle and every intact record whose seq is
    /// greater than `after_seq`, in order. Records up to `after_seq` are already in an index.
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
            let (records, good_len, bytes_total) = read_file(&path)?;
            if good_len < bytes_total {
                set_aside_tail(&path, good_len)?;
            }
            if good_len == 0 {
                continue;
            }
            let last_seq = records.last().map(|r| r.seq).unwrap_or(first_seq.saturating_sub(1));
            for r in records {
                if r.seq > after_seq {
                    next_seq = next_seq.max(r.seq + 1);
                    replay.push(r);
                } else {
                    next_seq = next_seq.max(r.seq + 1);
                }
            }
            files.push(FileInfo { path, first_seq, last_seq, bytes: good_len });
        }
        // An empty last file is recreated below under the same name.
        if files.last().is_some_and(|f: &FileInfo| f.first_seq == next_seq) {
            files.pop();
        }
        let shared = Arc::new(Shared { files: Mutex::new(files), dir: dir.to_path_buf() });
        let current = open_new_file(dir, next_seq)?;
        shared.files.lock().push(FileInfo {
            path: current.1.clone(),
            first_seq: next_seq,
            last_seq: next_seq - 1,
            bytes: format::HEADER_LEN as u64,
        });
        let wal = Wal { tx: spawn_writer(current.0, next_seq, opts, shared.clone())?, shared };
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
        let mut files = self.shared.files.lock();
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

    /// A handle that reads the log's size without keeping the writer thread alive.
    pub fn size(&self) -> WalSize {
        WalSize(self.shared.clone())
    }
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

/// Reads a whole file: the intact records, the byte length up to the last intact record and the
/// file's full length.
fn read_file(path: &Path) -> Result<(Vec<WalRecord>, u64, u64), StoreError> {
    let total = fs::metadata(path)?.len();
    let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
    if total < format::HEADER_LEN as u64 {
        // Crash while creating the file: nothing was ever acknowledged from it.
        return Ok((Vec::new(), 0, total));
    }
    format::read_header(&mut r, path, MAGIC, VERSION)?;
    let mut good = format::HEADER_LEN as u64;
    let mut records = Vec::new();
    let mut head = [0u8; RECORD_HEADER];
    loop {
        if good + RECORD_HEADER as u64 > total {
            break;
        }
        if r.read_exact(&mut head).is_err() {
            break;
        }
        let len = u32::from_le_bytes(head[0..4].try_into().expect("4")) as usize;
        let crc = u32::from_le_bytes(head[4..8].try_into().expect("4"));
        let seq = u64::from_le_bytes(head[8..16].try_into().expect("8"));
        if len > MAX_RECORD || good + (RECORD_HEADER + len) as u64 > total {
            break;
        }
        let mut payload = vec![0u8; len];
        if r.read_exact(&mut payload).is_err() {
            break;
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&head[8..16]);
        h.update(&payload);
        if h.finalize() != crc {
            break;
        }
        good += (RECORD_HEADER + len) as u64;
        records.push(WalRecord { seq, payload });
    }
    Ok((records, good, total))
}

fn set_aside_tail(path: &Path, good_len: u64) -> Result<(), StoreError> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let start = (good_len as usize).min(data.len());
    let aside = path.with_extension(format!("wal.{good_len}.corrupt"));
    fs::write(&aside, &data[start..])?;
    let f = OpenOptions::new().write(true).open(path)?;
    if good_len == 0 {
        // Not even a header: the file was being created.
        drop(f);
        fs::remove_file(path)?;
    } else {
        f.set_len(good_len)?;
        f.sync_all()?;
    }
    tracing::warn!(
        path = %path.display(),
        bytes = data.len() - start,
        aside = %aside.display(),
        "write-ahead log had a torn or corrupt tail; set aside"
    );
    Ok(())
}

fn spawn_writer(
    file: File,
    next_seq: u64,
    opts: WalOptions,
    shared: Arc<Shared>,
) -> Result<mpsc::Sender<Append>, StoreError> {
    let (tx, rx) = mpsc::channel::<Append>();
    std::thread::Builder::new()
        .name(opts.thread_name.clone())
        .spawn(move || writer_loop(rx, file, next_seq, opts, shared))?;
    Ok(tx)
}

fn writer_loop(rx: mpsc::Receiver<Append>, mut file: File, mut next_seq: u64, opts: WalOptions, shared: Arc<Shared>) {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut group: Vec<(u64, OnDurable)> = Vec::new();
    let mut file_bytes = format::HEADER_LEN as u64;
    let mut unsynced = false;
    let mut last_sync = Instant::now();
    let mut failed: Option<String> = None;
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
                tracing::error!(error = %e, "write-ahead log fsync failed");
            }
            unsynced = false;
            last_sync = Instant::now();
        }
        let Some(first) = first else { continue };
        buf.clear();
        group.clear();
        let mut pending = Some(first);
        while let Some(a) = pending.take() {
            if let Some(reason) = &failed {
                (a.on_durable)(Err(StoreError::Unavailable(reason.clone())));
            } else {
                let seq = next_seq;
                next_seq += 1;
                encode_record(&mut buf, seq, a.encode);
                group.push((seq, a.on_durable));
            }
            if buf.len() < 16 << 20 {
                pending = rx.try_recv().ok();
            }
        }
        if group.is_empty() {
            continue;
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
                // The file's tail is now unknown: refuse everything until a new file is open.
                tracing::error!(error = %e, "write-ahead log write failed");
                let retry = StoreError::Unavailable(format!("write-ahead log write failed: {e}"));
                for (_, cb) in group.drain(..) {
                    cb(Err(StoreError::Unavailable(retry.to_string())));
                }
                match rotate(&shared, &mut file, next_seq) {
                    Ok(()) => file_bytes = format::HEADER_LEN as u64,
                    Err(e2) => failed = Some(format!("write-ahead log unavailable: {e2}")),
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
    // A failed write may have left a partial record in the old file; readers stop at it.
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
        let (wal, replay) = Wal::open(dir.path(), opts(), 0).unwrap();
        assert_eq!(replay.len(), 10);
        assert!(fs::read_dir(dir.path()).unwrap().any(|e| e.unwrap().path().to_string_lossy().ends_with(".corrupt")));
        assert_eq!(append_sync(&wal, vec![1]), 11);
    }

    #[test]
    fn flipped_bit_stops_replay_at_the_bad_record() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), opts(), 0).unwrap();
        for i in 0..5u8 {
            append_sync(&wal, vec![i; 10]);
        }
        drop(wal);
        std::thread::sleep(Duration::from_millis(50));
        let path = dir.path().join(format!("{:020}.wal", 1));
        let mut data = fs::read(&path).unwrap();
        let third = format::HEADER_LEN + 2 * (RECORD_HEADER + 10) + RECORD_HEADER + 3;
        data[third] ^= 0xff;
        fs::write(&path, data).unwrap();
        let (_, replay) = Wal::open(dir.path(), opts(), 0).unwrap();
        assert_eq!(replay.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
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
