//! The GTSRB readers against the real data in `../shared/data` (env `EDGECP_DATA`) and
//! against small fixtures in both official layouts, written to temporary folders.

mod common;
use common::data_dir;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use shared::data::compact;
use shared::data::gtsrb::{read_gtsrb, GtsrbData, GtsrbOptions, CSV_HEADER};
use shared::data::{DataError, NUM_CLASSES};

fn subset_root() -> PathBuf {
    data_dir().join("gtsrb-official-subset").join("GTSRB")
}

/// THE KEY FIGURE: the official images, read and resized by us, reproduce the compact
/// 32x32 images made from the same files with Pillow 4.0.0's antialiased bilinear.
#[test]
fn official_subset_reproduces_compact_images() {
    let data = data_dir();
    let t = Instant::now();
    let read = read_gtsrb(&subset_root(), &GtsrbOptions::default(), &()).unwrap();
    let elapsed = t.elapsed();
    assert!(read.skipped.is_empty() && read.test.is_none());
    let ours = read.train.unwrap();
    assert_eq!(ours.len(), 3870);
    assert_eq!(ours.side, 32);
    println!("ingested {} official images in {elapsed:.2?}", ours.len());

    let dir = data.join("gtsrb");
    let splits: Vec<_> = ["train", "valid"]
        .iter()
        .map(|s| compact::read_split(&dir, s).unwrap())
        .collect();
    let mut index = HashMap::new();
    for (s, set) in splits.iter().enumerate() {
        for (i, f) in set.files.iter().enumerate() {
            index.insert(f.as_str(), (s, i));
        }
    }

    let (mut total_abs, mut total_n, mut matched) = (0u64, 0u64, 0usize);
    let (mut worst, mut worst_file) = (0f64, String::new());
    let (mut exact, mut max_pixel_diff) = (0usize, 0u8);
    for i in 0..ours.len() {
        let Some(&(s, j)) = index.get(ours.files[i].as_str()) else {
            continue;
        };
        matched += 1;
        let theirs = &splits[s];
        assert_eq!(ours.labels[i], theirs.labels[j], "{}", ours.files[i]);
        assert_eq!(ours.tracks[i], theirs.tracks[j], "{}", ours.files[i]);
        let abs: u64 = ours
            .image(i)
            .iter()
            .zip(theirs.image(j))
            .map(|(&a, &b)| {
                max_pixel_diff = max_pixel_diff.max(a.abs_diff(b));
                u64::from(a.abs_diff(b))
            })
            .sum();
        exact += usize::from(abs == 0);
        total_abs += abs;
        total_n += ours.image_len() as u64;
        let mad = abs as f64 / ours.image_len() as f64;
        if mad > worst {
            (worst, worst_file) = (mad, ours.files[i].clone());
        }
    }
    let mad = total_abs as f64 / total_n as f64;
    println!(
        "official subset vs compact: {matched} images matched, MAD {mad:.4} grey levels, \
         max per-image MAD {worst:.4} ({worst_file}), largest pixel difference {max_pixel_diff}, \
         {exact} images bit-exact"
    );
    assert_eq!(
        matched, 3870,
        "every subset image must be found in train/valid meta"
    );
    assert!(mad <= 1.0, "MAD {mad} above 1 grey level");
}

#[test]
fn compact_splits_are_consistent_and_track_disjoint() {
    let dir = data_dir().join("gtsrb");
    assert_eq!(compact::list_splits(&dir).unwrap(), vec!["train", "valid"]);
    let train = compact::read_split(&dir, "train").unwrap();
    let valid = compact::read_split(&dir, "valid").unwrap();
    assert_eq!((train.len(), valid.len()), (34_799, 4_410));
    for set in [&train, &valid] {
        assert_eq!(set.side, 32);
        assert_eq!(set.pixels.len(), set.len() * 32 * 32 * 3);
        assert!(set.labels.iter().all(|&l| (l as usize) < NUM_CLASSES));
        assert!(set
            .files
            .iter()
            .all(|f| f.starts_with("Final_Training/Images/")));
    }
    let train_tracks: HashSet<_> = train.tracks.iter().collect();
    let valid_tracks: HashSet<_> = valid.tracks.iter().collect();
    assert_eq!((train_tracks.len(), valid_tracks.len()), (1_160, 147));
    assert!(train_tracks.is_disjoint(&valid_tracks));
    assert_eq!(train.tracks[0], "00041/00004");
    assert_eq!(
        train.files[0],
        "Final_Training/Images/00041/00004_00000.ppm"
    );

    let names = compact::read_class_names(&dir).unwrap();
    assert_eq!(names.len(), NUM_CLASSES);
    assert_eq!(names[14], "Stop");
}

#[test]
fn roi_crop_differs_from_whole_image_on_real_data() {
    let root = subset_root();
    let whole = read_gtsrb(&root, &GtsrbOptions::default(), &())
        .unwrap()
        .train
        .unwrap();
    let roi = GtsrbOptions {
        roi: true,
        ..Default::default()
    };
    let cropped = read_gtsrb(&root, &roi, &()).unwrap().train.unwrap();
    assert_eq!(whole.files, cropped.files);
    assert_eq!(whole.labels, cropped.labels);
    let differ = (0..whole.len())
        .filter(|&i| whole.image(i) != cropped.image(i))
        .count();
    assert_eq!(
        differ,
        whole.len(),
        "every ROI crop should change the resized image"
    );
}

// ---- fixtures in the official layout ----

/// A `w x h` P6 image: `border` colour outside the half-open ROI box, `inside` within it.
fn ppm(w: usize, h: usize, roi: [usize; 4], border: [u8; 3], inside: [u8; 3]) -> Vec<u8> {
    let mut v = format!("P6\n# fixture\n{w} {h}\n255\n").into_bytes();
    for y in 0..h {
        for x in 0..w {
            let within = x >= roi[0] && x < roi[2] && y >= roi[1] && y < roi[3];
            v.extend_from_slice(if within { &inside } else { &border });
        }
    }
    v
}

const RED: [u8; 3] = [200, 10, 10];

fn colour_of(class: u16) -> [u8; 3] {
    [class as u8 * 40, 100, 50]
}

fn crlf(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\r\n")).collect()
}

/// Final_Training with classes 0, 1, 2 (class 2 folder named 00002 etc.), 2 tracks x 2
/// frames each; Final_Test with 3 images and GT-final_test.csv in `test_gt_dir`
/// (relative to the root).
fn write_fixture(root: &Path, test_gt_dir: &str) {
    for class in 0u16..3 {
        let folder = root.join(format!("Final_Training/Images/{class:05}"));
        std::fs::create_dir_all(&folder).unwrap();
        let mut rows = vec![CSV_HEADER.to_string()];
        for track in 0..2 {
            for frame in 0..2 {
                let (w, h) = (30 + frame, 34 + track);
                let roi = [5, 6, w - 5, h - 5];
                let name = format!("{track:05}_{frame:05}.ppm");
                std::fs::write(folder.join(&name), ppm(w, h, roi, RED, colour_of(class))).unwrap();
                rows.push(format!(
                    "{name};{w};{h};{};{};{};{};{class}",
                    roi[0], roi[1], roi[2], roi[3]
                ));
            }
        }
        std::fs::write(folder.join(format!("GT-{class:05}.csv")), crlf(&rows)).unwrap();
    }
    let images = root.join("Final_Test/Images");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(root.join(test_gt_dir)).unwrap();
    let mut rows = vec![CSV_HEADER.to_string()];
    for (n, class) in [2u16, 0, 1].into_iter().enumerate() {
        let name = format!("{n:05}.ppm");
        std::fs::write(
            images.join(&name),
            ppm(40, 41, [6, 5, 34, 36], RED, colour_of(class)),
        )
        .unwrap();
        rows.push(format!("{name};40;41;6;5;34;36;{class}"));
    }
    std::fs::write(
        root.join(test_gt_dir).join("GT-final_test.csv"),
        crlf(&rows),
    )
    .unwrap();
    // The test images archive's own annotation file (no ClassId) must not be mistaken for
    // the ground truth.
    std::fs::write(
        images.join("GT-final_test.test.csv"),
        "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2\r\n",
    )
    .unwrap();
}

fn fixture(test_gt_dir: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path(), test_gt_dir);
    dir
}

fn read(root: &Path, skip_bad: bool) -> Result<GtsrbData, DataError> {
    let options = GtsrbOptions {
        skip_bad,
        ..Default::default()
    };
    read_gtsrb(root, &options, &())
}

#[test]
fn fixture_reads_both_official_layouts() {
    for gt_dir in ["Final_Test/Images", "Final_Test"] {
        let dir = fixture(gt_dir);
        let data = read(dir.path(), false).unwrap();
        assert!(data.skipped.is_empty());
        let train = data.train.unwrap();
        assert_eq!(train.len(), 12);
        assert_eq!(train.labels, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]);
        assert_eq!(train.tracks[0], "00000/00000");
        assert_eq!(train.tracks[6], "00001/00001");
        assert_eq!(
            train.files[5],
            "Final_Training/Images/00001/00000_00001.ppm"
        );
        let test = data.test.unwrap();
        assert_eq!(test.labels, [2, 0, 1]);
        assert_eq!(test.tracks, ["test/00000", "test/00001", "test/00002"]);
        assert_eq!(test.files[1], "Final_Test/Images/00001.ppm");
        assert_eq!(test.side, 32);
    }
    // Pointing at the folder that contains GTSRB/ works too.
    let dir = tempfile::tempdir().unwrap();
    write_fixture(&dir.path().join("GTSRB"), "Final_Test/Images");
    assert_eq!(read(dir.path(), false).unwrap().train.unwrap().len(), 12);
}

#[test]
fn fixture_roi_crop_keeps_only_the_sign() {
    let dir = fixture("Final_Test/Images");
    let options = GtsrbOptions {
        roi: true,
        side: 16,
        ..Default::default()
    };
    let data = read_gtsrb(dir.path(), &options, &()).unwrap();
    let whole = read(dir.path(), false).unwrap();
    for (set, plain) in [
        (data.train.unwrap(), whole.train.unwrap()),
        (data.test.unwrap(), whole.test.unwrap()),
    ] {
        assert_eq!(set.side, 16);
        for i in 0..set.len() {
            // The crop is exactly the half-open ROI: not one border pixel leaks in.
            let colour = colour_of(set.labels[i]);
            assert!(
                set.image(i).chunks(3).all(|p| p == colour),
                "{}",
                set.files[i]
            );
            // Without the crop, the red border shows in the corner.
            assert_eq!(&plain.image(i)[..3], &RED, "{}", plain.files[i]);
        }
    }
}

/// Each kind of damage: (what to do to a fresh fixture, the file the error must name, a
/// phrase it must contain, how many items skip_bad then drops).
#[test]
fn fixture_damage_is_reported_and_skippable() {
    type Damage = fn(&Path);
    let cases: Vec<(&str, Damage, &str, &str, usize)> = vec![
        (
            "malformed row",
            |r| {
                edit(&r.join("Final_Training/Images/00001/GT-00001.csv"), |s| {
                    s.replacen(";30;34;", ";30;3x;", 1)
                })
            },
            "GT-00001.csv",
            "line 2: Height \"3x\" is not a non-negative integer",
            1,
        ),
        (
            "wrong column count",
            |r| {
                edit(&r.join("Final_Training/Images/00001/GT-00001.csv"), |s| {
                    s.replacen(";1\r\n", "\r\n", 1)
                })
            },
            "GT-00001.csv",
            "7 fields, expected 8",
            1,
        ),
        (
            "wrong header",
            |r| {
                edit(&r.join("Final_Training/Images/00002/GT-00002.csv"), |s| {
                    s.replace("Roi.X1;", "Roi.x1;")
                })
            },
            "GT-00002.csv",
            "wrong header",
            1,
        ),
        (
            "missing image",
            |r| {
                std::fs::remove_file(r.join("Final_Training/Images/00000/00001_00000.ppm")).unwrap()
            },
            "00001_00000.ppm",
            "missing (image listed in",
            1,
        ),
        (
            "truncated ppm",
            |r| {
                let p = r.join("Final_Test/Images/00002.ppm");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() - 100]).unwrap();
            },
            "00002.ppm",
            "truncated",
            1,
        ),
        (
            "class mismatch",
            |r| {
                edit(&r.join("Final_Training/Images/00002/GT-00002.csv"), |s| {
                    s.replacen(";2\r\n", ";1\r\n", 1)
                })
            },
            "GT-00002.csv",
            "ClassId 1 does not match its class folder 00002",
            1,
        ),
        (
            "size mismatch",
            |r| {
                edit(&r.join("Final_Test/Images/GT-final_test.csv"), |s| {
                    s.replacen(";40;41;", ";40;42;", 1)
                })
            },
            "00000.ppm",
            "image is 40x41 but",
            1,
        ),
        (
            "roi outside",
            |r| {
                edit(&r.join("Final_Test/Images/GT-final_test.csv"), |s| {
                    s.replacen(";34;36;", ";41;36;", 1)
                })
            },
            "GT-final_test.csv",
            "outside the 40x41 image",
            1,
        ),
        (
            "bad magic",
            |r| {
                std::fs::write(
                    r.join("Final_Training/Images/00000/00000_00000.ppm"),
                    b"P5\n1 1\n255\n\0",
                )
                .unwrap()
            },
            "00000_00000.ppm",
            "magic",
            1,
        ),
        (
            "missing annotation file",
            |r| std::fs::remove_file(r.join("Final_Training/Images/00001/GT-00001.csv")).unwrap(),
            "GT-00001.csv",
            "missing",
            1,
        ),
        (
            "missing test ground truth",
            |r| std::fs::remove_file(r.join("Final_Test/Images/GT-final_test.csv")).unwrap(),
            "GT-final_test.csv",
            "GT-final_test.test.csv has no ClassId",
            1,
        ),
    ];
    for (name, damage, file, phrase, n_skipped) in cases {
        let dir = fixture("Final_Test/Images");
        damage(dir.path());
        let err = read(dir.path(), false).expect_err(name).to_string();
        assert!(err.contains(file) && err.contains(phrase), "{name}: {err}");

        let data =
            read(dir.path(), true).unwrap_or_else(|e| panic!("{name}: skip_bad failed: {e}"));
        assert_eq!(data.skipped.len(), n_skipped, "{name}: {:?}", data.skipped);
        assert!(
            data.skipped[0].reason.contains(phrase),
            "{name}: {:?}",
            data.skipped
        );
        let kept =
            data.train.as_ref().map_or(0, |s| s.len()) + data.test.as_ref().map_or(0, |s| s.len());
        let lost_whole_file = matches!(name, "wrong header" | "missing annotation file");
        let lost_test = name == "missing test ground truth";
        let expected = 15
            - if lost_whole_file {
                4
            } else if lost_test {
                3
            } else {
                1
            };
        assert_eq!(kept, expected, "{name}");
    }
}

#[test]
fn no_layout_is_an_error_naming_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let err = read(dir.path(), true).unwrap_err().to_string();
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    assert!(
        err.contains("neither Final_Training nor Final_Test"),
        "{err}"
    );
}

fn edit(path: &Path, f: impl Fn(&str) -> String) {
    let s = std::fs::read_to_string(path).unwrap();
    let t = f(&s);
    assert_ne!(s, t, "fixture edit of {} changed nothing", path.display());
    std::fs::write(path, t).unwrap();
}

/// Our built-in class-name table (used for the official layout, which has no names) is
/// the one the compact data ship in signnames.csv.
#[test]
fn built_in_class_names_match_signnames_csv() {
    let names = compact::read_class_names(&data_dir().join("gtsrb")).unwrap();
    assert_eq!(names, shared::data::gtsrb_class_names());
}
