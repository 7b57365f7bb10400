//! Small files that may hold secrets (keys, passwords, certificates): read whole, with a size
//! cap, into buffers wiped on drop; and stamped, so a poller can tell that a file changed.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Reads `path` whole if it is a regular file of at most `max` bytes.
pub fn read_capped(path: &Path, max: u64) -> io::Result<Zeroizing<Vec<u8>>> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    // A FIFO or a device could block or never end.
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let too_large = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        )
    };
    if meta.len() > max {
        return Err(too_large());
    }
    // Room for the whole file up front, so the buffer is not reallocated (leaving copies).
    let mut buf = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
    // The file may grow after the check.
    file.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(too_large());
    }
    Ok(buf)
}

/// What a file looked like when read: a reload happens when any of this changes. A failed read
/// is stamped too, so a poller notices when a missing or broken file appears or is fixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stamp {
    /// The file was read.
    Read {
        /// Its modification time, where the file system keeps one.
        modified: Option<SystemTime>,
        /// Its length.
        len: u64,
        /// Its content's digest: a rewrite within the time stamp's resolution still shows.
        sha256: [u8; 32],
    },
    /// Reading failed this way.
    Failed(io::ErrorKind),
}

impl Stamp {
    /// The stamp of `path` as `read` (the outcome of reading it just now) found it.
    pub fn of(path: &Path, read: &io::Result<Zeroizing<Vec<u8>>>) -> Self {
        match read {
            Ok(bytes) => Self::Read {
                modified: std::fs::metadata(path).and_then(|m| m.modified()).ok(),
                len: bytes.len() as u64,
                sha256: Sha256::digest(bytes.as_slice()).into(),
            },
            Err(e) => Self::Failed(e.kind()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reads_within_the_cap_and_refuses_beyond_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_capped(&path, 10).unwrap().as_slice(), b"0123456789");
        let e = read_capped(&path, 9).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            read_capped(dir.path(), 10).unwrap_err().kind(),
            io::ErrorKind::InvalidInput,
            "a directory is not read"
        );
    }

    #[test]
    fn stamps_change_with_the_content_and_record_failures() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let stamp = |p: &Path| Stamp::of(p, &read_capped(p, 64));
        assert_eq!(stamp(&path), Stamp::Failed(io::ErrorKind::NotFound));
        std::fs::write(&path, b"first").unwrap();
        let first = stamp(&path);
        assert_eq!(first, stamp(&path), "unchanged file, same stamp");
        // Same length, possibly the same modification time: the digest still differs.
        std::fs::write(&path, b"secon").unwrap();
        assert_ne!(first, stamp(&path));
    }
}
