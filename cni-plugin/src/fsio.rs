//! Reading small files that someone else may have replaced by anything: only regular files
//! (symlinks followed to one), opened without blocking (a FIFO or a device never stalls the
//! plugin), and never more than a limit.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read as _},
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    path::Path,
};

/// Why a file could not be read.
#[derive(Debug)]
pub enum ReadError {
    NotFound,
    /// Not a regular file: what it is instead ("a FIFO", "a directory", ...).
    NotRegular(&'static str),
    /// Larger than the limit (bytes).
    TooLarge(u64),
    Io(io::Error),
}

/// What a file type is, in words, for messages.
pub fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// Opens `opts` on `path` only if it is a regular file: checked on the path first (so a device
/// is never opened) and again on the open descriptor (so a swap in between is caught). The open
/// is non-blocking, so a FIFO swapped in between does not stall either.
pub fn open_regular(path: &Path, opts: &mut OpenOptions) -> Result<File, ReadError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ReadError::NotFound,
        _ => ReadError::Io(e),
    })?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(kind_of(meta.file_type())));
    }
    let f = opts
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ReadError::NotFound,
            _ => ReadError::Io(e),
        })?;
    let meta = f.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(kind_of(meta.file_type())));
    }
    Ok(f)
}

/// The contents of the regular file `path`, at most `limit` bytes.
pub fn read_small(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let f = open_regular(path, OpenOptions::new().read(true))?;
    let mut buf = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(ReadError::Io)?;
    if buf.len() as u64 > limit {
        return Err(ReadError::TooLarge(limit));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        std::fs::write(&f, b"10.0.0.0/24\n").expect("write");
        assert_eq!(read_small(&f, 64).expect("read"), b"10.0.0.0/24\n");
        assert!(matches!(read_small(&f, 4), Err(ReadError::TooLarge(4))));
        assert!(matches!(
            read_small(&dir.path().join("missing"), 64),
            Err(ReadError::NotFound)
        ));
        assert!(matches!(
            read_small(dir.path(), 64),
            Err(ReadError::NotRegular("a directory"))
        ));
        // A FIFO with no writer: refused at once, never opened for a blocking read.
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        assert!(matches!(
            read_small(&fifo, 64),
            Err(ReadError::NotRegular("a FIFO"))
        ));
        assert!(matches!(
            read_small(Path::new("/dev/zero"), 64),
            Err(ReadError::NotRegular("a character device"))
        ));
        // A symlink to a regular file is followed.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&f, &link).expect("symlink");
        assert!(read_small(&link, 64).is_ok());
    }
}
