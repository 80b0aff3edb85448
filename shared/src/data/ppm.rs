//! A strict reader for PPM images (Netpbm "portable pixmap"), the format of the official
//! GTSRB archives.
//!
//! Strict because a silently mis-read image poisons a training set without anyone noticing:
//! a truncated download, a wrong magic number or a payload that does not match the header
//! is an error naming the file and the problem, never a zero-padded or garbled image.
//!
//! Accepted: binary `P6` (the GTSRB form) and plain-text `P3`; comments (`#` to the end of
//! the line) anywhere in the header; any maxval from 1 to 65535 (two bytes per sample,
//! big-endian, above 255), scaled to 0..=255 with rounding. A P6 file must hold exactly the
//! payload its header announces: missing bytes (truncation) and trailing bytes are errors.

use std::path::Path;

use super::{DataError, Result};
use crate::image::RgbImage;

/// Reads a PPM file. Errors name `path`.
pub fn read_ppm(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_ppm(&bytes, path)
}

/// A PPM header: what the file declares, read without touching its pixel data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PpmHeader {
    pub width: usize,
    pub height: usize,
    pub maxval: usize,
    binary: bool,
    /// Where the header's last number ends.
    end: usize,
}

impl PpmHeader {
    /// Bytes of the decoded RGB image (`width * height * 3`, saturating).
    pub fn pixel_bytes(&self) -> u64 {
        (self.width as u64)
            .saturating_mul(self.height as u64)
            .saturating_mul(3)
    }
}

/// Reads a PPM header (`P6` or `P3`): magic, width, height, maxval. Errors name `path`.
pub fn read_header(bytes: &[u8], path: &Path) -> Result<PpmHeader> {
    let bad = |what: String| DataError::malformed(path, what);
    let binary = match bytes.get(..2) {
        Some(b"P6") => true,
        Some(b"P3") => false,
        Some(other) => {
            return Err(bad(format!(
                "not a PPM image: magic {:?}, expected \"P6\" (or \"P3\")",
                String::from_utf8_lossy(other)
            )))
        }
        None => {
            return Err(bad(format!(
                "not a PPM image: only {} byte(s)",
                bytes.len()
            )))
        }
    };
    let mut cur = Cursor { bytes, pos: 2 };
    let width = cur.header_number("width").map_err(&bad)?;
    let height = cur.header_number("height").map_err(&bad)?;
    let maxval = cur.header_number("maxval").map_err(&bad)?;
    if width == 0 || height == 0 {
        return Err(bad(format!(
            "bad dimensions {width}x{height}: both must be positive"
        )));
    }
    if !(1..=65535).contains(&maxval) {
        return Err(bad(format!("bad maxval {maxval}: must be 1..=65535")));
    }
    Ok(PpmHeader {
        width,
        height,
        maxval,
        binary,
        end: cur.pos,
    })
}

/// Parses PPM bytes (`P6` or `P3`); `path` only names the input in errors.
pub fn parse_ppm(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    parse_ppm_limited(bytes, path, usize::MAX)
}

/// [`parse_ppm`], refusing (before allocating) an image whose `width * height * 3` bytes
/// exceed `max_bytes`.
pub fn parse_ppm_limited(bytes: &[u8], path: &Path, max_bytes: usize) -> Result<RgbImage> {
    let bad = |what: String| DataError::malformed(path, what);
    let header = read_header(bytes, path)?;
    let PpmHeader {
        width,
        height,
        maxval,
        ..
    } = header;
    let magic = if header.binary {
        Magic::Binary
    } else {
        Magic::Plain
    };
    let mut cur = Cursor {
        bytes,
        pos: header.end,
    };
    let samples = width
        .checked_mul(height)
        .and_then(|n| n.checked_mul(3))
        .ok_or_else(|| bad(format!("bad dimensions {width}x{height}: too large")))?;
    if samples > max_bytes {
        return Err(bad(format!(
            "image of {width}x{height} pixels needs {samples} bytes, more than the limit of \
             {max_bytes}"
        )));
    }

    let data = match magic {
        Magic::Binary => {
            // Exactly one whitespace byte separates maxval from the raster.
            match bytes.get(cur.pos) {
                Some(b) if b.is_ascii_whitespace() => cur.pos += 1,
                Some(_) => {
                    return Err(bad(
                        "header: maxval must be followed by one whitespace".into()
                    ))
                }
                None => {
                    return Err(bad(format!(
                        "truncated: header ends before the pixel data ({width}x{height}, \
                         {samples} samples expected)"
                    )))
                }
            }
            let bytes_per_sample = if maxval < 256 { 1 } else { 2 };
            let expected = samples
                .checked_mul(bytes_per_sample)
                .ok_or_else(|| bad(format!("bad dimensions {width}x{height}: too large")))?;
            let payload = &bytes[cur.pos..];
            if payload.len() < expected {
                return Err(bad(format!(
                    "truncated: pixel data has {} bytes, header ({width}x{height}, maxval \
                     {maxval}) needs {expected}",
                    payload.len()
                )));
            }
            if payload.len() > expected {
                return Err(bad(format!(
                    "{} unexpected trailing bytes after the {width}x{height} pixel data",
                    payload.len() - expected
                )));
            }
            match (maxval, bytes_per_sample) {
                (255, _) => payload.to_vec(),
                (_, 1) => payload.iter().map(|&v| scale(v.into(), maxval)).collect(),
                _ => payload
                    .chunks_exact(2)
                    .map(|s| scale(u16::from_be_bytes([s[0], s[1]]).into(), maxval))
                    .collect(),
            }
        }
        Magic::Plain => {
            // Each sample needs at least one digit and one separator: refuse to allocate
            // for a header that promises more samples than the file can hold.
            if samples > bytes.len() / 2 + 1 {
                return Err(bad(format!(
                    "truncated: {} bytes cannot hold {samples} samples ({width}x{height})",
                    bytes.len()
                )));
            }
            let mut data = Vec::with_capacity(samples);
            for i in 0..samples {
                let v = cur.plain_sample().map_err(|what| {
                    bad(format!(
                        "sample {i} of {samples} ({width}x{height}): {what}"
                    ))
                })?;
                if v > maxval {
                    return Err(bad(format!("sample {i} is {v}, above maxval {maxval}")));
                }
                data.push(if maxval == 255 {
                    v as u8
                } else {
                    scale(v, maxval)
                });
            }
            cur.skip_space_and_comments();
            if cur.pos != bytes.len() {
                return Err(bad(format!(
                    "{} unexpected trailing bytes after the {width}x{height} pixel data",
                    bytes.len() - cur.pos
                )));
            }
            data
        }
    };
    Ok(RgbImage {
        width,
        height,
        data,
    })
}

enum Magic {
    Binary,
    Plain,
}

/// `v` in `0..=maxval` to `0..=255`, rounded to nearest.
fn scale(v: usize, maxval: usize) -> u8 {
    ((v * 255 + maxval / 2) / maxval).min(255) as u8
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn skip_space_and_comments(&mut self) {
        while let Some(&b) = self.bytes.get(self.pos) {
            if b.is_ascii_whitespace() {
                self.pos += 1;
            } else if b == b'#' {
                while let Some(&c) = self.bytes.get(self.pos) {
                    if c == b'\n' || c == b'\r' {
                        break;
                    }
                    self.pos += 1;
                }
            } else {
                break;
            }
        }
    }

    /// A header field: at least one whitespace (or comment) before it, then decimal digits.
    fn header_number(&mut self, field: &str) -> Result<usize, String> {
        let start = self.pos;
        self.skip_space_and_comments();
        if self.pos == start {
            return Err(match self.bytes.get(self.pos) {
                None => format!("truncated: header ends before the {field}"),
                Some(_) => format!("header: expected whitespace before the {field}"),
            });
        }
        self.digits()
            .map_err(|what| format!("header: bad {field}: {what}"))
    }

    fn plain_sample(&mut self) -> Result<usize, String> {
        self.skip_space_and_comments();
        self.digits()
    }

    fn digits(&mut self) -> Result<usize, String> {
        let start = self.pos;
        let mut value: usize = 0;
        while let Some(&b) = self.bytes.get(self.pos) {
            if !b.is_ascii_digit() {
                break;
            }
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(usize::from(b - b'0')))
                .filter(|&v| v <= u32::MAX as usize)
                .ok_or_else(|| "number too large".to_string())?;
            self.pos += 1;
        }
        if self.pos == start {
            return Err(match self.bytes.get(self.pos) {
                None => "truncated: file ends where a number was expected".to_string(),
                Some(&b) => format!("expected a decimal number, found {:?}", char::from(b)),
            });
        }
        if let Some(&b) = self.bytes.get(self.pos) {
            if !b.is_ascii_whitespace() && b != b'#' {
                return Err(format!("unexpected {:?} after a number", char::from(b)));
            }
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p6(w: usize, h: usize, maxval: usize, payload: &[u8]) -> Vec<u8> {
        let mut v = format!("P6\n{w} {h}\n{maxval}\n").into_bytes();
        v.extend_from_slice(payload);
        v
    }

    fn err(bytes: &[u8]) -> String {
        parse_ppm(bytes, Path::new("dir/x.ppm"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn reads_p6_with_comments() {
        let mut bytes = b"P6 # made by hand\n# another\n2 1\n#c\n255\n".to_vec();
        bytes.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        let img = parse_ppm(&bytes, Path::new("a.ppm")).unwrap();
        assert_eq!((img.width, img.height), (2, 1));
        assert_eq!(img.data, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn scales_small_and_16_bit_maxval() {
        let img = parse_ppm(&p6(1, 1, 15, &[0, 15, 7]), Path::new("a")).unwrap();
        assert_eq!(img.data, vec![0, 255, 119]);
        let img = parse_ppm(&p6(1, 1, 65535, &[0, 0, 255, 255, 128, 0]), Path::new("a")).unwrap();
        assert_eq!(img.data, vec![0, 255, 128]);
    }

    #[test]
    fn reads_p3() {
        let img = parse_ppm(b"P3\n2 1\n255\n1 2 3\n# c\n 4 5 6\n", Path::new("a")).unwrap();
        assert_eq!(img.data, vec![1, 2, 3, 4, 5, 6]);
        assert!(err(b"P3\n1 1\n255\n1 2\n").contains("truncated"));
        assert!(err(b"P3\n1 1\n255\n1 2 300\n").contains("above maxval"));
        assert!(err(b"P3\n1 1\n255\n1 2 3 4\n").contains("trailing"));
    }

    #[test]
    fn rejects_bad_input_naming_file_and_problem() {
        let e = err(&p6(2, 2, 255, &[0; 11]));
        assert!(e.contains("dir/x.ppm") && e.contains("truncated"), "{e}");
        let e = err(b"P5\n1 1\n255\n\0");
        assert!(e.contains("magic"), "{e}");
        let e = err(&p6(0, 2, 255, &[]));
        assert!(e.contains("bad dimensions"), "{e}");
        let e = err(b"P6\n-1 2\n255\n");
        assert!(e.contains("width"), "{e}");
        let e = err(b"P6\n1 1\n0\n\0\0\0");
        assert!(e.contains("maxval"), "{e}");
        let e = err(&p6(1, 1, 255, &[0; 4]));
        assert!(e.contains("trailing"), "{e}");
        let e = err(b"P6\n1 1");
        assert!(e.contains("truncated"), "{e}");
        let e = err(b"P6\n99999999999 1\n255\n");
        assert!(e.contains("too large"), "{e}");
        // 3e10 bytes of pixels: missing on a 64-bit device, more than a 32-bit address
        // space can hold on armv7 (found by the armv7 run under qemu)
        let e = err(b"P6\n100000 100000\n255\n");
        let want = if usize::BITS < 64 {
            "too large"
        } else {
            "truncated"
        };
        assert!(e.contains(want), "{e}");
        let e = err(b"P");
        assert!(e.contains("not a PPM"), "{e}");
    }

    #[test]
    fn the_limit_is_checked_before_allocating() {
        let img = p6(4, 3, 255, &[7; 36]);
        assert_eq!(
            parse_ppm_limited(&img, Path::new("a"), 36)
                .unwrap()
                .data
                .len(),
            36
        );
        let e = parse_ppm_limited(&img, Path::new("a"), 35)
            .unwrap_err()
            .to_string();
        assert!(e.contains("limit"), "{e}");
        // a header promising 3 GB in a 20-byte file: refused by the limit, nothing allocated
        let e = parse_ppm_limited(b"P3\n40000 30000\n255\n", Path::new("a"), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("limit"), "{e}");
        let h = read_header(b"P6\n40000 30000\n255\n", Path::new("a")).unwrap();
        assert_eq!(
            (h.width, h.height, h.pixel_bytes()),
            (40000, 30000, 3_600_000_000)
        );
    }

    #[test]
    fn read_ppm_names_missing_file() {
        let e = read_ppm(Path::new("/nonexistent/q.ppm"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/q.ppm"), "{e}");
    }
}
