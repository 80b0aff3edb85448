//! Labelled image data: the sources a user has (official GTSRB layout, the compact u8
//! files, a synthetic generator), track-aware splits and versioned shards in an object store.
//!
//! Every source produces an [`ImageSet`]: equally sized RGB images (HWC, u8) with a class
//! label, a track (the physical sign the frame shows) and the file it came from.

pub mod compact;
pub mod gtsrb;
pub mod ppm;
pub mod shards;
pub mod split;
pub mod synthetic;

use std::path::PathBuf;

/// Number of classes in GTSRB (and in the synthetic generator).
pub const NUM_CLASSES: usize = 43;
/// Default image side after resizing: the side of the compact data.
pub const DEFAULT_SIDE: usize = 32;

/// The 43 GTSRB class names (signnames.csv order); the synthetic classes follow them.
pub const GTSRB_CLASS_NAMES: [&str; NUM_CLASSES] = [
    "Speed limit (20km/h)",
    "Speed limit (30km/h)",
    "Speed limit (50km/h)",
    "Speed limit (60km/h)",
    "Speed limit (70km/h)",
    "Speed limit (80km/h)",
    "End of speed limit (80km/h)",
    "Speed limit (100km/h)",
    "Speed limit (120km/h)",
    "No passing",
    "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection",
    "Priority road",
    "Yield",
    "Stop",
    "No vehicles",
    "Vehicles over 3.5 metric tons prohibited",
    "No entry",
    "General caution",
    "Dangerous curve to the left",
    "Dangerous curve to the right",
    "Double curve",
    "Bumpy road",
    "Slippery road",
    "Road narrows on the right",
    "Road work",
    "Traffic signals",
    "Pedestrians",
    "Children crossing",
    "Bicycles crossing",
    "Beware of ice/snow",
    "Wild animals crossing",
    "End of all speed and passing limits",
    "Turn right ahead",
    "Turn left ahead",
    "Ahead only",
    "Go straight or right",
    "Go straight or left",
    "Keep right",
    "Keep left",
    "Roundabout mandatory",
    "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
];

/// The GTSRB class names, as owned strings.
pub fn gtsrb_class_names() -> Vec<String> {
    GTSRB_CLASS_NAMES.iter().map(|s| s.to_string()).collect()
}

/// Errors while reading, splitting or storing image data. Every variant names the input.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file exists but its content is not what was expected.
    #[error("{path}: {what}")]
    Malformed { path: PathBuf, what: String },
    /// A file or folder the layout requires is absent.
    #[error("{path}: missing ({what})")]
    Missing { path: PathBuf, what: String },
    /// Stored content does not match its recorded hash or size.
    #[error("{path}: integrity check failed: {what}")]
    Integrity { path: String, what: String },
    #[error("object store {location}: {source}")]
    Store {
        location: String,
        #[source]
        source: object_store::Error,
    },
    /// Arguments that cannot work (for example an empty split request).
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn malformed(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        DataError::Malformed {
            path: path.into(),
            what: what.into(),
        }
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Equally sized RGB images with labels, tracks and origins, stored contiguously.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageSet {
    /// Side length S of every (square) image.
    pub side: usize,
    /// `len() * S * S * 3` bytes, row-major HWC, RGB.
    pub pixels: Vec<u8>,
    /// Class id per image.
    pub labels: Vec<u16>,
    /// Track per image (`CCCCC/TTTTT` for GTSRB training images): frames of one physical
    /// sign share a track and never straddle splits.
    pub tracks: Vec<String>,
    /// Where each image came from (path in the official layout, or a synthetic id).
    pub files: Vec<String>,
}

impl ImageSet {
    pub fn new(side: usize) -> Self {
        ImageSet {
            side,
            ..Default::default()
        }
    }

    /// Bytes per image.
    pub fn image_len(&self) -> usize {
        self.side * self.side * 3
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The pixels of image `i` (HWC, RGB).
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Appends one image; `pixels` must hold exactly `S*S*3` bytes.
    pub fn push(&mut self, pixels: &[u8], label: u16, track: String, file: String) {
        assert_eq!(
            pixels.len(),
            self.image_len(),
            "image size does not match the set's side"
        );
        self.pixels.extend_from_slice(pixels);
        self.labels.push(label);
        self.tracks.push(track);
        self.files.push(file);
    }

    /// Appends all images of `other` (same side).
    pub fn extend(&mut self, other: &ImageSet) {
        assert_eq!(self.side, other.side, "cannot mix image sides");
        self.pixels.extend_from_slice(&other.pixels);
        self.labels.extend_from_slice(&other.labels);
        self.tracks.extend_from_slice(&other.tracks);
        self.files.extend_from_slice(&other.files);
    }

    /// A new set holding the images at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> ImageSet {
        let mut out = ImageSet::new(self.side);
        out.pixels.reserve(indices.len() * self.image_len());
        for &i in indices {
            out.push(
                self.image(i),
                self.labels[i],
                self.tracks[i].clone(),
                self.files[i].clone(),
            );
        }
        out
    }

    /// Number of images per class id, over `0..n_classes` (larger ids are counted too:
    /// the histogram grows to fit them).
    pub fn class_histogram(&self, n_classes: usize) -> Vec<usize> {
        let mut h = vec![0usize; n_classes];
        for &l in &self.labels {
            let l = l as usize;
            if l >= h.len() {
                h.resize(l + 1, 0);
            }
            h[l] += 1;
        }
        h
    }
}
