//! The few file-system facts a download needs: free space, "the disk is full", durable
//! directory entries, and names safe to use as one folder.

use std::io;
use std::path::Path;

/// Bytes an unprivileged process may still write on the file system holding `path`
/// (`f_bavail * f_frsize`: root's reserved blocks are not ours to fill).
pub fn available_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: statvfs only writes into the struct we hand it; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // the field types differ between targets (u32 on 32-bit ARM, u64 elsewhere)
    #[allow(clippy::unnecessary_cast)]
    let (avail, frsize) = (st.f_bavail as u64, st.f_frsize as u64);
    Ok(avail.saturating_mul(frsize))
}

/// Whether a write failed because the file system (or the user's quota) is full.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Makes the entries of directory `dir` (created, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A name that is one plain path component: 1-128 ASCII letters, digits, `.`, `_`, `-`,
/// not starting with `.` (so never `.` or `..`, and never a hidden staging folder).
pub fn safe_component(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn available_bytes_of_a_real_folder_is_positive_and_missing_paths_fail() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_bytes(dir.path()).unwrap() > 0);
        let e = available_bytes(&dir.path().join("missing")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn no_space_is_recognised_and_other_errors_are_not() {
        assert!(is_no_space(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(is_no_space(&io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(!is_no_space(&io::Error::from_raw_os_error(libc::EIO)));
        assert!(!is_no_space(&io::Error::other("x")));
    }

    #[test]
    fn only_plain_single_components_are_safe() {
        for ok in ["gtsrb-v1", "a", "m.2_x"] {
            assert!(safe_component(ok), "{ok}");
        }
        let long = "a".repeat(129);
        for bad in [
            "",
            ".",
            "..",
            ".staging-1",
            "a/b",
            "../x",
            "a\\b",
            "a b",
            "é",
            &long,
        ] {
            assert!(!safe_component(bad), "{bad:?}");
        }
    }
}
