//! File headers: every file the store writes itself starts with an 8-byte magic and a
//! little-endian `u32` format version, so a future version can recognise and migrate it.
//! (tantivy's own index files carry tantivy's own version footer.)

use std::io::{self, Read, Write};
use std::path::Path;

use crate::StoreError;

/// Length of a header in bytes.
pub const HEADER_LEN: usize = 12;

/// Writes `magic` and `version`.
pub fn write_header(w: &mut impl Write, magic: &[u8; 8], version: u32) -> io::Result<()> {
    w.write_all(magic)?;
    w.write_all(&version.to_le_bytes())
}

/// Reads and checks a header, returning the version. Fails when the magic differs or the
/// version is newer than `max_version`.
pub fn read_header(r: &mut impl Read, path: &Path, magic: &[u8; 8], max_version: u32) -> Result<u32, StoreError> {
    let mut buf = [0u8; HEADER_LEN];
    r.read_exact(&mut buf).map_err(|e| StoreError::corrupt(path, format!("short header: {e}")))?;
    check_header(&buf, path, magic, max_version)
}

/// Checks a header already in memory.
pub fn check_header(buf: &[u8], path: &Path, magic: &[u8; 8], max_version: u32) -> Result<u32, StoreError> {
    if buf.len() < HEADER_LEN {
        return Err(StoreError::corrupt(path, "short header"));
    }
    if &buf[..8] != magic {
        return Err(StoreError::corrupt(path, "bad magic number"));
    }
    let version = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
    if version == 0 || version > max_version {
        return Err(StoreError::corrupt(path, format!("unsupported format version {version}")));
    }
    Ok(version)
}

/// Versions above this are taken for damage, not for a newer format: formats change rarely.
const PLAUSIBLE_VERSIONS: u32 = 1 << 16;

/// `Some(version)` when `buf` starts with `magic` and a version newer than `max_version` (but
/// plausible): a file of a newer obsbox, to be refused rather than repaired or set aside.
pub fn newer_version(buf: &[u8], magic: &[u8; 8], max_version: u32) -> Option<u32> {
    if buf.len() < HEADER_LEN || &buf[..8] != magic {
        return None;
    }
    let version = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
    (version > max_version && version < PLAUSIBLE_VERSIONS).then_some(version)
}

/// The refusal of a file written by a newer obsbox.
pub fn newer_error(path: &Path, version: u32, max_version: u32) -> StoreError {
    StoreError::Incompatible(format!(
        "{}: format version {version} was written by a newer obsbox (this one reads up to {max_version}); upgrade obsbox",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_version_is_told_apart_from_damage() {
        let mut buf = Vec::new();
        write_header(&mut buf, b"OBXTEST\0", 3).unwrap();
        assert_eq!(newer_version(&buf, b"OBXTEST\0", 2), Some(3));
        assert_eq!(newer_version(&buf, b"OBXTEST\0", 3), None);
        assert_eq!(newer_version(&buf, b"OBXOTHR\0", 2), None);
        buf[8..12].copy_from_slice(b"garb");
        assert_eq!(newer_version(&buf, b"OBXTEST\0", 2), None, "an implausible version is damage");
    }
}
