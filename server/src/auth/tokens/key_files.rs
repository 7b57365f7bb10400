//! Key files: read whole with a size cap, one trailing newline trimmed, stamped for reloads.

use std::io;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::secret_files;

/// Key material is small; a bigger file is a mistake and is not read whole.
const MAX_KEY_FILE_LEN: u64 = 64 * 1024;

pub(super) fn trim_one_newline(bytes: &mut Zeroizing<Vec<u8>>) {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
}

/// A file as it was when read (see [`secret_files::Stamp`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Stamp {
    pub(super) path: PathBuf,
    seen: secret_files::Stamp,
}

pub(super) fn stamp_of(path: &Path) -> (Stamp, io::Result<Zeroizing<Vec<u8>>>) {
    let read = read_key_file(path);
    let stamp = Stamp {
        path: path.to_owned(),
        seen: secret_files::Stamp::of(path, &read),
    };
    (stamp, read)
}

pub(super) fn read_key_file(path: &Path) -> io::Result<Zeroizing<Vec<u8>>> {
    secret_files::read_capped(path, MAX_KEY_FILE_LEN)
}

/// Reads files and remembers a stamp of each, including those that failed, so that a reload
/// after a failure notices when the missing or broken file appears or is fixed.
#[derive(Debug, Default)]
pub(super) struct StampingReader {
    pub(super) stamps: Vec<Stamp>,
}

impl StampingReader {
    pub(super) fn read(&mut self, path: &Path) -> io::Result<Zeroizing<Vec<u8>>> {
        let (stamp, read) = stamp_of(path);
        self.stamps.push(stamp);
        read
    }
}
