//! Reader of GTSRB in the official layout, as users download and unpack it:
//!
//! ```text
//! <root>/Final_Training/Images/000CC/GT-000CC.csv     one folder per class CC
//! <root>/Final_Training/Images/000CC/TTTTT_FFFFF.ppm  frame FFFFF of track TTTTT
//! <root>/Final_Test/Images/NNNNN.ppm
//! <root>/Final_Test/Images/GT-final_test.csv          (or <root>/Final_Test/, or <root>/)
//! ```
//!
//! Either part may be absent, not both. `<root>` may also be the folder that contains
//! `GTSRB/` (the archives unpack to `GTSRB/Final_...`).
//!
//! The test images archive ships `GT-final_test.test.csv` WITHOUT the ClassId column; the
//! labels come in a separate archive (GTSRB_Final_Test_GT.zip) as `GT-final_test.csv`
//! with the training CSVs' columns, which users put beside the images or one level up, so
//! all of those places are accepted.
//!
//! Annotations: semicolon-separated, CRLF (LF accepted), header exactly [`CSV_HEADER`].
//! Everything is validated (header, field count, numbers, ClassId against the folder, ROI
//! within the image, image size against the CSV, the PPM itself) because a silently
//! mislabelled or garbled image is worse than a loud error; with
//! [`GtsrbOptions::skip_bad`] the bad rows, images and files are listed in
//! [`GtsrbData::skipped`] instead.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{DataError, ImageSet, Result, DEFAULT_SIDE};
use crate::image::{decode, Resampler};
use crate::progress::Progress;

/// The header of every GTSRB annotation CSV.
pub const CSV_HEADER: &str = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId";

/// Name of the test ground-truth CSV.
pub const TEST_GT: &str = "GT-final_test.csv";

/// How to read the official layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GtsrbOptions {
    /// Side S of the resized square images (default 32, the side of the compact data).
    pub side: usize,
    /// Crop to the annotated ROI before resizing. Off by default: the compact data (and so
    /// the models trained on them) use the whole image, border included.
    pub roi: bool,
    /// Skip bad rows, images and annotation files (listing them in
    /// [`GtsrbData::skipped`]) instead of failing on the first.
    pub skip_bad: bool,
}

impl Default for GtsrbOptions {
    fn default() -> Self {
        GtsrbOptions {
            side: DEFAULT_SIDE,
            roi: false,
            skip_bad: false,
        }
    }
}

/// Something left out under [`GtsrbOptions::skip_bad`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Path relative to the root (an image, or an annotation CSV when all of it was skipped).
    pub file: String,
    /// The error that would otherwise have been returned.
    pub reason: String,
}

/// What was read: `train` from `Final_Training`, `test` from `Final_Test` (each `None` when
/// that part is absent).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GtsrbData {
    /// Training images, ordered by class folder, then CSV order. Tracks `CCCCC/TTTTT`.
    pub train: Option<ImageSet>,
    /// Test images in CSV order. Each is its own track `test/NNNNN` (the test set has no
    /// track structure).
    pub test: Option<ImageSet>,
    pub skipped: Vec<Skipped>,
}

/// One annotated image, validated as far as the CSV allows.
struct Entry {
    /// Absolute (root-joined) path of the image.
    path: PathBuf,
    /// Path relative to the root, with `/` separators.
    file: String,
    /// Annotation file and line, for error messages.
    csv: PathBuf,
    line: usize,
    width: usize,
    height: usize,
    roi: [usize; 4],
    class_id: u16,
    track: String,
}

/// Reads the official GTSRB layout under `root` (see the module docs).
pub fn read_gtsrb(
    root: &Path,
    options: &GtsrbOptions,
    progress: &dyn Progress,
) -> Result<GtsrbData> {
    if options.side == 0 {
        return Err(DataError::Invalid(
            "GTSRB image side must be positive".into(),
        ));
    }
    let root = resolve_root(root)?;
    let mut skipped = Vec::new();
    progress.phase("reading GTSRB annotations");

    let train_entries = if root.join("Final_Training").is_dir() {
        Some(training_entries(&root, options, &mut skipped)?)
    } else {
        None
    };
    let test_entries = if root.join("Final_Test").is_dir() {
        test_entries(&root, options, &mut skipped)?
    } else {
        None
    };

    let total =
        train_entries.as_ref().map_or(0, Vec::len) + test_entries.as_ref().map_or(0, Vec::len);
    progress.set_total(total as u64);
    progress.phase("decoding and resizing GTSRB images");
    let train = train_entries
        .map(|e| load_images(&e, options, progress, &mut skipped))
        .transpose()?;
    let test = test_entries
        .map(|e| load_images(&e, options, progress, &mut skipped))
        .transpose()?;
    Ok(GtsrbData {
        train,
        test,
        skipped,
    })
}

/// `root` itself, or `root/GTSRB` when the user points at the folder the archives unpack in.
fn resolve_root(root: &Path) -> Result<PathBuf> {
    let has_parts = |p: &Path| p.join("Final_Training").is_dir() || p.join("Final_Test").is_dir();
    if has_parts(root) {
        return Ok(root.to_path_buf());
    }
    let nested = root.join("GTSRB");
    if has_parts(&nested) {
        return Ok(nested);
    }
    Err(DataError::Missing {
        path: root.to_path_buf(),
        what: "neither Final_Training nor Final_Test (the official GTSRB layout) is in this \
               folder or in its GTSRB/ subfolder"
            .into(),
    })
}

/// Records `err` as skipped (with `skip_bad`) or returns it.
fn skip_or_fail(
    err: DataError,
    file: String,
    options: &GtsrbOptions,
    skipped: &mut Vec<Skipped>,
) -> Result<()> {
    if options.skip_bad {
        skipped.push(Skipped {
            file,
            reason: err.to_string(),
        });
        Ok(())
    } else {
        Err(err)
    }
}

fn rel(root: &Path, path: &Path) -> String {
    let p = path.strip_prefix(root).unwrap_or(path);
    p.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn training_entries(
    root: &Path,
    options: &GtsrbOptions,
    skipped: &mut Vec<Skipped>,
) -> Result<Vec<Entry>> {
    let images = root.join("Final_Training").join("Images");
    if !images.is_dir() {
        return Err(DataError::Missing {
            path: images,
            what: "the training images folder (Final_Training/Images/000CC/)".into(),
        });
    }
    // Class folders are named by their class id (00000..00042); anything else (a readme,
    // an unpacking leftover such as __MACOSX) is not part of the layout and is ignored.
    let mut classes = Vec::new();
    for entry in std::fs::read_dir(&images).map_err(|e| DataError::io(&images, e))? {
        let entry = entry.map_err(|e| DataError::io(&images, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) && entry.path().is_dir() {
            if let Ok(class) = name.parse::<u16>() {
                classes.push((class, name));
            }
        }
    }
    if classes.is_empty() {
        return Err(DataError::Missing {
            path: images,
            what: "class folders (000CC/ with GT-000CC.csv)".into(),
        });
    }
    classes.sort();

    let mut entries = Vec::new();
    for (class, name) in classes {
        let folder = images.join(&name);
        let csv = folder.join(format!("GT-{name}.csv"));
        let rows = match read_annotations(&csv) {
            Ok(rows) => rows,
            Err(e) => {
                skip_or_fail(e, rel(root, &csv), options, skipped)?;
                continue;
            }
        };
        let mut seen = HashSet::new();
        for row in rows {
            let (line, fields) = match row {
                Ok(r) => r,
                Err((line, e)) => {
                    skip_or_fail(e, format!("{}:{line}", rel(root, &csv)), options, skipped)?;
                    continue;
                }
            };
            let path = folder.join(&fields.filename);
            let file = rel(root, &path);
            let checked = check_row(&csv, line, &fields, &mut seen).and_then(|()| {
                if fields.class_id != class {
                    return Err(row_error(
                        &csv,
                        line,
                        format!("ClassId {} does not match its class folder {name}", fields.class_id),
                    ));
                }
                // TTTTT_FFFFF.ppm: frames of one physical sign share the track prefix.
                match fields.filename.split_once('_') {
                    Some((track, _)) if !track.is_empty() => Ok(format!("{name}/{track}")),
                    _ => Err(row_error(
                        &csv,
                        line,
                        format!(
                            "file name {:?} is not of the form TTTTT_FFFFF.ppm, so its track is unknown",
                            fields.filename
                        ),
                    )),
                }
            });
            match checked {
                Ok(track) => entries.push(entry(path, file, &csv, line, &fields, track)),
                Err(e) => skip_or_fail(e, file, options, skipped)?,
            }
        }
    }
    Ok(entries)
}

fn test_entries(
    root: &Path,
    options: &GtsrbOptions,
    skipped: &mut Vec<Skipped>,
) -> Result<Option<Vec<Entry>>> {
    let images = root.join("Final_Test").join("Images");
    if !images.is_dir() {
        let err = DataError::Missing {
            path: images,
            what: "the test images folder (Final_Test/Images/NNNNN.ppm)".into(),
        };
        skip_or_fail(err, "Final_Test/Images".into(), options, skipped)?;
        return Ok(None);
    }
    let candidates = [
        images.join(TEST_GT),
        root.join("Final_Test").join(TEST_GT),
        root.join(TEST_GT),
    ];
    let Some(csv) = candidates.iter().find(|p| p.is_file()).cloned() else {
        let err = DataError::Missing {
            path: candidates[0].clone(),
            what: format!(
                "the test ground truth {TEST_GT} (from GTSRB_Final_Test_GT.zip; the images \
                 archive's GT-final_test.test.csv has no ClassId), looked for in \
                 Final_Test/Images, Final_Test and the root"
            ),
        };
        skip_or_fail(
            err,
            format!("Final_Test/Images/{TEST_GT}"),
            options,
            skipped,
        )?;
        return Ok(None);
    };
    let rows = match read_annotations(&csv) {
        Ok(rows) => rows,
        Err(e) => {
            skip_or_fail(e, rel(root, &csv), options, skipped)?;
            return Ok(None);
        }
    };
    let mut seen = HashSet::new();
    let mut entries = Vec::new();
    for row in rows {
        let (line, fields) = match row {
            Ok(r) => r,
            Err((line, e)) => {
                skip_or_fail(e, format!("{}:{line}", rel(root, &csv)), options, skipped)?;
                continue;
            }
        };
        let path = images.join(&fields.filename);
        let file = rel(root, &path);
        match check_row(&csv, line, &fields, &mut seen) {
            Ok(()) => {
                let stem = Path::new(&fields.filename)
                    .file_stem()
                    .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
                let track = format!("test/{stem}");
                entries.push(entry(path, file, &csv, line, &fields, track));
            }
            Err(e) => skip_or_fail(e, file, options, skipped)?,
        }
    }
    Ok(Some(entries))
}

fn entry(path: PathBuf, file: String, csv: &Path, line: usize, f: &Fields, track: String) -> Entry {
    Entry {
        path,
        file,
        csv: csv.to_path_buf(),
        line,
        width: f.width,
        height: f.height,
        roi: f.roi,
        class_id: f.class_id,
        track,
    }
}

/// The fields of one annotation row.
struct Fields {
    filename: String,
    width: usize,
    height: usize,
    roi: [usize; 4],
    class_id: u16,
}

fn row_error(csv: &Path, line: usize, what: String) -> DataError {
    DataError::malformed(csv, format!("line {line}: {what}"))
}

type Row = std::result::Result<(usize, Fields), (usize, DataError)>;

/// Reads an annotation CSV. A missing file, bad encoding or wrong header fails the whole
/// file; each data row is parsed on its own (1-based line numbers), so that `skip_bad` can
/// drop single rows.
fn read_annotations(csv: &Path) -> Result<Vec<Row>> {
    let bytes = match std::fs::read(csv) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DataError::Missing {
                path: csv.to_path_buf(),
                what: "the annotation CSV of this folder".into(),
            })
        }
        Err(e) => return Err(DataError::io(csv, e)),
    };
    let text = String::from_utf8(bytes).map_err(|_| DataError::malformed(csv, "not UTF-8 text"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let header = lines.next().unwrap_or("");
    if header != CSV_HEADER {
        return Err(DataError::malformed(
            csv,
            format!("wrong header {header:?}, expected {CSV_HEADER:?}"),
        ));
    }
    Ok(lines
        .enumerate()
        .map(|(i, l)| (i + 2, l))
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(line, l)| {
            parse_row(csv, line, l)
                .map(|f| (line, f))
                .map_err(|e| (line, e))
        })
        .collect())
}

fn parse_row(csv: &Path, line: usize, text: &str) -> Result<Fields> {
    let fields: Vec<&str> = text.split(';').collect();
    if fields.len() != 8 {
        return Err(row_error(
            csv,
            line,
            format!(
                "{} fields, expected 8 ({CSV_HEADER}): {text:?}",
                fields.len()
            ),
        ));
    }
    let names: Vec<&str> = CSV_HEADER.split(';').collect();
    let num = |i: usize| -> Result<usize> {
        fields[i].trim().parse::<usize>().map_err(|_| {
            row_error(
                csv,
                line,
                format!("{} {:?} is not a non-negative integer", names[i], fields[i]),
            )
        })
    };
    let filename = fields[0].trim().to_string();
    let class_id = u16::try_from(num(7)?)
        .map_err(|_| row_error(csv, line, format!("ClassId {:?} is too large", fields[7])))?;
    Ok(Fields {
        width: num(1)?,
        height: num(2)?,
        roi: [num(3)?, num(4)?, num(5)?, num(6)?],
        class_id,
        filename,
    })
}

/// Checks that do not need the image: a plain file name (no path tricks), listed once, a
/// non-empty ROI inside the image.
fn check_row(csv: &Path, line: usize, f: &Fields, seen: &mut HashSet<String>) -> Result<()> {
    let name = &f.filename;
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\']) {
        return Err(row_error(
            csv,
            line,
            format!("bad file name {name:?}: must be a plain file name"),
        ));
    }
    if !seen.insert(name.clone()) {
        return Err(row_error(csv, line, format!("{name} is listed twice")));
    }
    if f.width == 0 || f.height == 0 {
        return Err(row_error(
            csv,
            line,
            format!("{name}: bad size {}x{}", f.width, f.height),
        ));
    }
    let [x1, y1, x2, y2] = f.roi;
    // The ROI's upper corner is exclusive; see `RgbImage::crop`.
    if x1 >= x2 || y1 >= y2 || x2 > f.width || y2 > f.height {
        return Err(row_error(
            csv,
            line,
            format!(
                "{name}: ROI ({x1},{y1})-({x2},{y2}) is empty or outside the {}x{} image",
                f.width, f.height
            ),
        ));
    }
    Ok(())
}

/// Decodes, checks, optionally crops and resizes all entries in parallel, in their order.
fn load_images(
    entries: &[Entry],
    options: &GtsrbOptions,
    progress: &dyn Progress,
    skipped: &mut Vec<Skipped>,
) -> Result<ImageSet> {
    let len = options.side * options.side * 3;
    let mut pixels = vec![0u8; entries.len() * len];
    let results: Vec<Result<()>> = pixels
        .par_chunks_mut(len)
        .zip(entries.par_iter())
        .map_init(Resampler::new, |resampler, (out, e)| {
            let r = load_one(e, options, resampler, out);
            progress.inc(1);
            r
        })
        .collect();

    let mut set = ImageSet::new(options.side);
    if results.iter().all(Result::is_ok) {
        set.pixels = pixels;
        set.labels = entries.iter().map(|e| e.class_id).collect();
        set.tracks = entries.iter().map(|e| e.track.clone()).collect();
        set.files = entries.iter().map(|e| e.file.clone()).collect();
        return Ok(set);
    }
    for ((result, e), img) in results
        .into_iter()
        .zip(entries)
        .zip(pixels.chunks_exact(len))
    {
        match result {
            Ok(()) => set.push(img, e.class_id, e.track.clone(), e.file.clone()),
            Err(err) => skip_or_fail(err, e.file.clone(), options, skipped)?,
        }
    }
    Ok(set)
}

fn load_one(
    e: &Entry,
    options: &GtsrbOptions,
    resampler: &mut Resampler,
    out: &mut [u8],
) -> Result<()> {
    let bytes = match std::fs::read(&e.path) {
        Ok(b) => b,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(DataError::Missing {
                path: e.path.clone(),
                what: format!("image listed in {} line {}", e.csv.display(), e.line),
            })
        }
        Err(err) => return Err(DataError::io(&e.path, err)),
    };
    let img = decode(&bytes, &e.path.to_string_lossy())?;
    if (img.width, img.height) != (e.width, e.height) {
        return Err(DataError::malformed(
            &e.path,
            format!(
                "image is {}x{} but {} line {} says {}x{}",
                img.width,
                img.height,
                e.csv.display(),
                e.line,
                e.width,
                e.height
            ),
        ));
    }
    let [x1, y1, x2, y2] = e.roi;
    let img = if options.roi {
        img.crop(x1, y1, x2, y2).ok_or_else(|| {
            DataError::malformed(
                &e.path,
                format!("ROI ({x1},{y1})-({x2},{y2}) outside the image"),
            )
        })?
    } else {
        img
    };
    resampler.resize_into(&img, options.side, options.side, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str) -> Vec<std::result::Result<(usize, String), String>> {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("GT-00000.csv");
        std::fs::write(&csv, text).unwrap();
        let mut seen = HashSet::new();
        read_annotations(&csv)
            .unwrap()
            .into_iter()
            .map(|r| match r {
                Ok((line, f)) => check_row(&csv, line, &f, &mut seen)
                    .map(|()| (line, f.filename))
                    .map_err(|e| e.to_string()),
                Err((_, e)) => Err(e.to_string()),
            })
            .collect()
    }

    #[test]
    fn annotations_accept_bom_lf_and_blank_lines() {
        let text =
            format!("\u{feff}{CSV_HEADER}\na.ppm;30;30;5;5;25;25;0\n\nb.ppm;30;30;5;5;25;25;0\n\n");
        let r = rows(&text);
        assert_eq!(r, vec![Ok((2, "a.ppm".into())), Ok((4, "b.ppm".into()))]);
    }

    #[test]
    fn annotation_rows_are_checked_one_by_one() {
        let text = format!(
            "{CSV_HEADER}\r\n../x.ppm;30;30;5;5;25;25;0\r\na.ppm;30;30;5;5;25;25;0\r\n\
             a.ppm;30;30;5;5;25;25;0\r\nb.ppm;30;30;25;5;25;25;0\r\nc.ppm;30;30;5;5;25;25;-1\r\n"
        );
        let r = rows(&text);
        assert!(
            r[0].as_ref().unwrap_err().contains("line 2: bad file name"),
            "{r:?}"
        );
        assert_eq!(r[1], Ok((3, "a.ppm".into())));
        assert!(
            r[2].as_ref()
                .unwrap_err()
                .contains("line 4: a.ppm is listed twice"),
            "{r:?}"
        );
        assert!(
            r[3].as_ref()
                .unwrap_err()
                .contains("ROI (25,5)-(25,25) is empty"),
            "{r:?}"
        );
        assert!(
            r[4].as_ref().unwrap_err().contains("ClassId \"-1\""),
            "{r:?}"
        );
    }

    #[test]
    fn zero_side_is_refused() {
        let options = GtsrbOptions {
            side: 0,
            ..Default::default()
        };
        let e = read_gtsrb(Path::new("."), &options, &()).unwrap_err();
        assert!(matches!(e, DataError::Invalid(_)), "{e}");
    }
}
