//! Split leakage on the real GTSRB meta data: no track (physical sign) in two splits, and
//! every class calibrated, for the splits `trainer ingest` makes from the compact files.

mod common;

use std::collections::HashSet;

use shared::data::compact;
use shared::data::split::{split_indices, SplitSpec};
use shared::data::NUM_CLASSES;

fn compact_dir() -> std::path::PathBuf {
    common::data_dir().join("gtsrb")
}

#[test]
fn no_track_straddles_splits_on_the_real_meta_csv() {
    let dir = compact_dir();
    let train = compact::read_split(&dir, "train").unwrap();
    let valid = compact::read_split(&dir, "valid").unwrap();
    for seed in [0, 1, 42] {
        let spec = SplitSpec {
            calibration: 0.15,
            validation: 0.15,
            seed,
        };
        let s = split_indices(&train, &spec).unwrap();
        let tracks = |idx: &[usize]| -> HashSet<&str> {
            idx.iter().map(|&i| train.tracks[i].as_str()).collect()
        };
        let (a, b, c) = (
            tracks(&s.train),
            tracks(&s.calibration),
            tracks(&s.validation),
        );
        assert!(
            a.is_disjoint(&b),
            "seed {seed}: train/calibration share a track"
        );
        assert!(
            a.is_disjoint(&c),
            "seed {seed}: train/validation share a track"
        );
        assert!(
            b.is_disjoint(&c),
            "seed {seed}: calibration/validation share a track"
        );
        assert_eq!(
            s.train.len() + s.calibration.len() + s.validation.len(),
            train.len()
        );
        // Stratified: every class in every split, and the calibration share near 15%.
        for idx in [&s.train, &s.calibration, &s.validation] {
            let classes: HashSet<u16> = idx.iter().map(|&i| train.labels[i]).collect();
            assert_eq!(classes.len(), NUM_CLASSES, "seed {seed}");
        }
        let share = s.calibration.len() as f64 / train.len() as f64;
        assert!(
            (0.12..0.18).contains(&share),
            "seed {seed}: calibration share {share}"
        );
    }
    // The compact valid split (used as validation by `ingest --source u8:`) shares no
    // track with train either.
    let t: HashSet<&str> = train.tracks.iter().map(String::as_str).collect();
    assert!(valid.tracks.iter().all(|v| !t.contains(v.as_str())));
    // Frames of a track are consecutive files TTTTT_FFFFF of one class folder.
    for (track, file) in train.tracks.iter().zip(&train.files) {
        let (class, t) = track.split_once('/').unwrap();
        assert!(
            file.contains(&format!("/{class}/{t}_")),
            "{file} is not in track {track}"
        );
    }
}
