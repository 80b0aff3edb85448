//! Reading the files of a bundle, and key files, the one way that cannot be fooled by what
//! sits at a path: each file is opened once, its type and size are checked on the open
//! descriptor (not on the path, which may change between a check and a read), and the read
//! is bounded. What was read is what the caller hashes and then parses.
//!
//! Inside a bundle, symbolic links are refused outright rather than followed: a bundle is
//! written by the exporter or the agent's downloader as plain files, and a link could point
//! outside what the signature covers, or be re-pointed after verification. Key files are
//! configured by the device's owner and may be links (to a mounted secret, say); their
//! target must still be a regular file.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::BundleError;

/// Whether the last component of a path may be a symbolic link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Links {
    /// Refuse a link (files inside a bundle).
    Refuse,
    /// Follow it; the target must be a regular file (key files).
    Follow,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn kind_of(t: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "named pipe (FIFO)";
        }
        if t.is_char_device() {
            return "character device";
        }
        if t.is_block_device() {
            return "block device";
        }
        if t.is_socket() {
            return "socket";
        }
    }
    if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symbolic link"
    } else {
        "special file"
    }
}

/// Opens `path` for reading without blocking (a FIFO would otherwise wait for a writer)
/// and without following a link when `links` is [`Links::Refuse`]; returns the file and
/// its size, checked on the descriptor to be a regular file.
fn open_regular(path: &Path, links: Links) -> Result<(File, u64), BundleError> {
    // The path's own type first: a clear message, and no open() of a device at all.
    let meta = match links {
        Links::Refuse => std::fs::symlink_metadata(path),
        Links::Follow => std::fs::metadata(path),
    }
    .map_err(io(path))?;
    if meta.file_type().is_symlink() {
        return Err(BundleError::Symlink {
            path: path.to_path_buf(),
        });
    }
    if !meta.is_file() {
        return Err(BundleError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(meta.file_type()),
        });
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
        if links == Links::Refuse {
            flags |= libc::O_NOFOLLOW;
        }
        opts.custom_flags(flags);
    }
    let file = opts.open(path).map_err(|e| {
        // the path became a link after the check above
        #[cfg(unix)]
        if e.raw_os_error() == Some(libc::ELOOP) {
            return BundleError::Symlink {
                path: path.to_path_buf(),
            };
        }
        BundleError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    })?;
    // ... and again on what was opened: the path may have been replaced in between.
    let meta = file.metadata().map_err(io(path))?;
    if !meta.is_file() {
        return Err(BundleError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(meta.file_type()),
        });
    }
    Ok((file, meta.len()))
}

/// Reads exactly `len` bytes from `file` (which `path` names), refusing a file that turns
/// out shorter or longer (it changed while being read).
fn read_exactly(mut file: File, path: &Path, len: u64) -> Result<Vec<u8>, BundleError> {
    let cap = usize::try_from(len).map_err(|_| BundleError::TooLarge {
        path: path.to_path_buf(),
        limit: usize::MAX as u64,
        found: len,
    })?;
    let mut buf = Vec::with_capacity(cap);
    (&mut file)
        .take(len.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(io(path))?;
    if buf.len() as u64 != len {
        return Err(BundleError::Size {
            path: path.to_path_buf(),
            expected: len,
            found: buf.len() as u64,
        });
    }
    Ok(buf)
}

/// The bytes of the regular file at `path`, at most `max` of them: a larger file is
/// refused before anything is read.
pub(crate) fn read_bounded(path: &Path, max: u64, links: Links) -> Result<Vec<u8>, BundleError> {
    let (file, len) = open_regular(path, links)?;
    if len > max {
        return Err(BundleError::TooLarge {
            path: path.to_path_buf(),
            limit: max,
            found: len,
        });
    }
    read_exactly(file, path, len)
}

/// The bytes of the bundle file at `path`, which the manifest says is `expected` bytes
/// long: a file of another size is refused before anything is read (a sparse 4 GB file
/// listed as 2 MB costs one `fstat`, not 4 GB of memory).
pub(crate) fn read_listed(path: &Path, expected: u64, max: u64) -> Result<Vec<u8>, BundleError> {
    if expected > max {
        return Err(BundleError::TooLarge {
            path: path.to_path_buf(),
            limit: max,
            found: expected,
        });
    }
    let (file, len) = open_regular(path, Links::Refuse)?;
    if len != expected {
        return Err(BundleError::Size {
            path: path.to_path_buf(),
            expected,
            found: len,
        });
    }
    read_exactly(file, path, len)
}
