//! Reader of the compact GTSRB files (`../shared/data/gtsrb`): per split
//! `<split>.images.u8.zst` (raw `N x 32 x 32 x 3` u8, HWC RGB), `<split>.labels.u8.zst`
//! (N class ids), `<split>.meta.csv` (origin, track, size, ROI and class of each image), and
//! one `signnames.csv` for the whole set.
//!
//! The three per-split files are cross-checked (counts, labels against `class_id`, row
//! indices) because a mismatch between them would shift every label by some offset and
//! train a model on garbage without any other symptom.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::{DataError, ImageSet, Result};

/// Side of the images in the compact files.
pub const COMPACT_SIDE: usize = 32;

/// Header of `<split>.meta.csv`.
const META_HEADER: [&str; 10] = [
    "index",
    "original_file",
    "track",
    "width",
    "height",
    "roi_x1",
    "roi_y1",
    "roi_x2",
    "roi_y2",
    "class_id",
];

/// One row of `<split>.meta.csv`: where an image came from in the official layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaRow {
    pub index: usize,
    /// Path in the official layout, e.g. `Final_Training/Images/00041/00004_00000.ppm`.
    pub original_file: String,
    /// `CCCCC/TTTTT` for training images; empty for official test images (no tracks).
    pub track: String,
    /// Size of the original image.
    pub width: usize,
    pub height: usize,
    /// Sign ROI in original pixels, `[x1, y1, x2, y2]` (see [`crate::image::RgbImage::crop`]
    /// for the meaning of the upper corner).
    pub roi: [usize; 4],
    pub class_id: u16,
}

fn split_file(dir: &Path, split: &str, suffix: &str) -> PathBuf {
    dir.join(format!("{split}.{suffix}"))
}

/// Names of the splits in `dir` that have all three files (images, labels, meta), sorted.
pub fn list_splits(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut splits = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let name = entry.file_name();
        let Some(split) = name.to_str().and_then(|n| n.strip_suffix(".images.u8.zst")) else {
            continue;
        };
        if split_file(dir, split, "labels.u8.zst").is_file()
            && split_file(dir, split, "meta.csv").is_file()
        {
            splits.push(split.to_string());
        }
    }
    splits.sort();
    Ok(splits)
}

/// Reads one split: images, labels, tracks (from the meta CSV) and files
/// (`original_file`). Official test images have no track: each becomes its own track
/// `test/NNNNN` (from its file name), as in [`super::gtsrb`].
pub fn read_split(dir: &Path, split: &str) -> Result<ImageSet> {
    let labels_path = split_file(dir, split, "labels.u8.zst");
    let labels = read_zst(&labels_path, None)?;
    let n = labels.len();

    let meta_path = split_file(dir, split, "meta.csv");
    let meta = read_meta(dir, split)?;
    if meta.len() != n {
        return Err(DataError::malformed(
            &meta_path,
            format!(
                "{} rows, but {} has {n} labels",
                meta.len(),
                labels_path.display()
            ),
        ));
    }
    for (i, (row, &label)) in meta.iter().zip(&labels).enumerate() {
        if row.class_id != u16::from(label) {
            return Err(DataError::malformed(
                &labels_path,
                format!(
                    "label {label} of image {i} disagrees with class_id {} in {}",
                    row.class_id,
                    meta_path.display()
                ),
            ));
        }
    }

    let images_path = split_file(dir, split, "images.u8.zst");
    let image_len = COMPACT_SIDE * COMPACT_SIDE * 3;
    let pixels = read_zst(&images_path, Some(n * image_len))?;
    if pixels.len() != n * image_len {
        return Err(DataError::malformed(
            &images_path,
            format!(
                "{} bytes decompressed, expected {} ({n} images of {COMPACT_SIDE}x{COMPACT_SIDE}x3 \
                 for the {n} labels in {})",
                pixels.len(),
                n * image_len,
                labels_path.display()
            ),
        ));
    }

    let mut tracks = Vec::with_capacity(n);
    let mut files = Vec::with_capacity(n);
    for row in meta {
        tracks.push(if row.track.is_empty() {
            test_track(&row.original_file, row.index)
        } else {
            row.track
        });
        files.push(row.original_file);
    }
    Ok(ImageSet {
        side: COMPACT_SIDE,
        pixels,
        labels: labels.into_iter().map(u16::from).collect(),
        tracks,
        files,
    })
}

/// `test/NNNNN` for `Final_Test/Images/NNNNN.ppm`: the convention of [`super::gtsrb`] for
/// images without a track.
fn test_track(original_file: &str, index: usize) -> String {
    let stem = Path::new(original_file)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("");
    if stem.is_empty() {
        format!("test/{index:05}")
    } else {
        format!("test/{stem}")
    }
}

/// Reads `<split>.meta.csv`, checking its header and that `index` counts 0, 1, 2, ...
pub fn read_meta(dir: &Path, split: &str) -> Result<Vec<MetaRow>> {
    let path = split_file(dir, split, "meta.csv");
    let mut reader = csv_reader(&path)?;
    let header = reader.headers().map_err(|e| csv_error(&path, e))?.clone();
    if header.iter().ne(META_HEADER) {
        return Err(DataError::malformed(
            &path,
            format!(
                "header is {:?}, expected {:?}",
                header.iter().collect::<Vec<_>>().join(","),
                META_HEADER.join(",")
            ),
        ));
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(&path, e))?;
        let line = record.position().map_or(0, |p| p.line());
        let bad = |what: String| DataError::malformed(&path, format!("line {line}: {what}"));
        let num = |i: usize| -> Result<usize> {
            record[i].parse::<usize>().map_err(|_| {
                bad(format!(
                    "{} {:?} is not a non-negative integer",
                    META_HEADER[i], &record[i]
                ))
            })
        };
        let row = MetaRow {
            index: num(0)?,
            original_file: record[1].to_string(),
            track: record[2].to_string(),
            width: num(3)?,
            height: num(4)?,
            roi: [num(5)?, num(6)?, num(7)?, num(8)?],
            class_id: u16::try_from(num(9)?)
                .map_err(|_| bad(format!("class_id {:?} too large", &record[9])))?,
        };
        if row.index != rows.len() {
            return Err(bad(format!(
                "index {} out of sequence, expected {}",
                row.index,
                rows.len()
            )));
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Class names from `signnames.csv` (`ClassId,SignName`), indexed by class id; the ids must
/// be 0, 1, 2, ... in order.
pub fn read_class_names(dir: &Path) -> Result<Vec<String>> {
    let path = dir.join("signnames.csv");
    let mut reader = csv_reader(&path)?;
    let header = reader.headers().map_err(|e| csv_error(&path, e))?.clone();
    if header.len() != 2 || !header[0].eq_ignore_ascii_case("ClassId") {
        return Err(DataError::malformed(
            &path,
            format!(
                "header is {:?}, expected \"ClassId,SignName\"",
                header.iter().collect::<Vec<_>>().join(",")
            ),
        ));
    }
    let mut names = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(&path, e))?;
        let line = record.position().map_or(0, |p| p.line());
        if record[0].parse::<usize>().ok() != Some(names.len()) {
            return Err(DataError::malformed(
                &path,
                format!(
                    "line {line}: class id {:?}, expected {}",
                    &record[0],
                    names.len()
                ),
            ));
        }
        names.push(record[1].to_string());
    }
    Ok(names)
}

fn csv_reader(path: &Path) -> Result<csv::Reader<File>> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    // Flexible = false: a row with the wrong number of fields is an error.
    Ok(csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(file))
}

fn csv_error(path: &Path, e: csv::Error) -> DataError {
    DataError::malformed(path, format!("bad CSV: {e}"))
}

/// Decompresses a zstd file as a stream. With `expected`, reads at most one byte more than
/// that (enough to detect excess without decompressing an arbitrarily large file).
fn read_zst(path: &Path, expected: Option<usize>) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let decoder = zstd::stream::read::Decoder::with_buffer(BufReader::new(file))
        .map_err(|e| DataError::malformed(path, format!("zstd: {e}")))?;
    let mut out = Vec::with_capacity(expected.map_or(0, |n| n + 1));
    let result = match expected {
        Some(n) => decoder.take(n as u64 + 1).read_to_end(&mut out),
        None => {
            let mut d = decoder;
            d.read_to_end(&mut out)
        }
    };
    result.map_err(|e| DataError::malformed(path, format!("zstd decompression failed: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_split(dir: &Path, labels: &[u8], meta_rows: &[String], image_bytes: usize) {
        let zst = |name: &str, data: &[u8]| {
            let mut enc =
                zstd::stream::write::Encoder::new(File::create(dir.join(name)).unwrap(), 3)
                    .unwrap();
            enc.write_all(data).unwrap();
            enc.finish().unwrap();
        };
        zst("s.labels.u8.zst", labels);
        zst("s.images.u8.zst", &vec![7u8; image_bytes]);
        let mut csv = META_HEADER.join(",") + "\n";
        for r in meta_rows {
            csv += r;
            csv += "\n";
        }
        std::fs::write(dir.join("s.meta.csv"), csv).unwrap();
    }

    fn row(i: usize, class: u8, track: &str) -> String {
        format!("{i},Final_Test/Images/{i:05}.ppm,{track},30,30,5,5,25,25,{class}")
    }

    #[test]
    fn reads_and_cross_checks_a_split() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_split(
            d,
            &[3, 4],
            &[row(0, 3, "00003/00000"), row(1, 4, "")],
            2 * 3072,
        );
        assert_eq!(list_splits(d).unwrap(), vec!["s".to_string()]);
        let set = read_split(d, "s").unwrap();
        assert_eq!(set.labels, vec![3, 4]);
        assert_eq!(
            set.tracks,
            vec!["00003/00000".to_string(), "test/00001".to_string()]
        );
        assert_eq!(set.files[1], "Final_Test/Images/00001.ppm");

        write_split(d, &[3, 5], &[row(0, 3, "a"), row(1, 4, "b")], 2 * 3072);
        let e = read_split(d, "s").unwrap_err().to_string();
        assert!(
            e.contains("s.labels.u8.zst") && e.contains("disagrees"),
            "{e}"
        );

        write_split(d, &[3, 4], &[row(0, 3, "a"), row(1, 4, "b")], 3 * 3072);
        let e = read_split(d, "s").unwrap_err().to_string();
        assert!(
            e.contains("s.images.u8.zst") && e.contains("expected 6144"),
            "{e}"
        );

        write_split(d, &[3, 4], &[row(0, 3, "a")], 2 * 3072);
        let e = read_split(d, "s").unwrap_err().to_string();
        assert!(e.contains("s.meta.csv") && e.contains("1 rows"), "{e}");

        write_split(
            d,
            &[3, 4],
            &[row(0, 3, "a"), "1,x,y,30,30,5,5,25".into()],
            2 * 3072,
        );
        let e = read_split(d, "s").unwrap_err().to_string();
        assert!(e.contains("s.meta.csv") && e.contains("bad CSV"), "{e}");

        write_split(
            d,
            &[3, 4],
            &[row(0, 3, "a"), row(1, 4, "b").replace(",30,", ",3x,")],
            2 * 3072,
        );
        let e = read_split(d, "s").unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("width"), "{e}");

        let e = read_split(d, "nope").unwrap_err().to_string();
        assert!(e.contains("nope.labels.u8.zst"), "{e}");
    }

    #[test]
    fn class_names_must_be_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("signnames.csv"),
            "ClassId,SignName\n0,Stop\n1,\"Yield, now\"\n",
        )
        .unwrap();
        assert_eq!(
            read_class_names(dir.path()).unwrap(),
            vec!["Stop", "Yield, now"]
        );
        std::fs::write(
            dir.path().join("signnames.csv"),
            "ClassId,SignName\n0,Stop\n2,Yield\n",
        )
        .unwrap();
        let e = read_class_names(dir.path()).unwrap_err().to_string();
        assert!(e.contains("signnames.csv") && e.contains("line 3"), "{e}");
    }
}
