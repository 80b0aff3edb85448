//! Versioned dataset shards in an object store.
//!
//! An ingest writes one immutable dataset version:
//! ```text
//! <root>/<dataset_id>/manifest.json                 what, from where, how resized, hashes
//! <root>/<dataset_id>/<split>-<nnnnn>.safetensors   images u8 [n,S,S,3], labels u16 [n]
//! <root>/LATEST                                      id of the newest complete version
//! ```
//! `dataset_id` is derived from the content, so re-ingesting the same data gives the same
//! id and different data never overwrites a version someone may be training on. Shards are
//! written first, the manifest next and `LATEST` last: a crash leaves at worst an
//! unreferenced folder, never a manifest pointing at missing shards. Shards are safetensors
//! (tracks and files as JSON in its metadata), so any tool can read them.

use std::collections::{BTreeMap, HashMap};

use object_store::{ObjectStoreExt, PutPayload};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::split::{SplitName, SplitSpec};
use super::{DataError, ImageSet, Result};
use crate::store::Location;

pub const DATASET_FORMAT: &str = "edgecp.dataset";
pub const DATASET_FORMAT_VERSION: u32 = 1;
/// Images per shard: ~25 MB at 32x32, small enough for single-request uploads.
pub const DEFAULT_SHARD_IMAGES: usize = 8192;
const LATEST: &str = "LATEST";
const MANIFEST: &str = "manifest.json";
/// The safetensors metadata entry holding a shard's tracks and files (JSON).
pub const SHARD_METADATA_KEY: &str = "edgecp";

/// Where the images came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// `gtsrb`, `u8` or `synthetic`.
    pub kind: String,
    /// Path or description of the input.
    pub location: String,
    /// Source-specific settings (seed, counts, skipped files...).
    #[serde(default)]
    pub details: serde_json::Value,
}

/// How images were turned into S x S.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResizeInfo {
    pub side: usize,
    /// Cropped to the annotated region of interest before resizing.
    pub roi: bool,
    pub filter: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Object name relative to the dataset folder.
    pub path: String,
    pub count: usize,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitEntry {
    pub count: usize,
    pub tracks: usize,
    pub class_histogram: Vec<usize>,
    pub shards: Vec<ShardEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetManifest {
    pub format: String,
    pub format_version: u32,
    /// First 16 hex digits of the sha256 of this manifest with `dataset_id` empty and
    /// `created_unix` zero.
    pub dataset_id: String,
    pub created_unix: u64,
    pub source: SourceInfo,
    pub resize: ResizeInfo,
    /// How the source was split (absent when the source came split).
    pub split_spec: Option<SplitSpec>,
    pub class_names: Vec<String>,
    pub splits: BTreeMap<SplitName, SplitEntry>,
}

impl DatasetManifest {
    /// sha256 of the canonical manifest bytes (hex), used by runs to pin their data.
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(self.to_bytes()))
    }

    fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain structs, maps with string keys and numbers cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    fn content_id(&self) -> String {
        let mut anon = self.clone();
        anon.dataset_id.clear();
        anon.created_unix = 0;
        anon.sha256()[..16].to_string()
    }
}

/// What an ingest hands to [`write_dataset`] besides the images.
pub struct DatasetInfo {
    pub source: SourceInfo,
    pub resize: ResizeInfo,
    pub split_spec: Option<SplitSpec>,
    pub class_names: Vec<String>,
}

fn store_err(location: &impl std::fmt::Display) -> impl FnOnce(object_store::Error) -> DataError {
    let location = location.to_string();
    move |source| DataError::Store { location, source }
}

fn encode_shard(
    set: &ImageSet,
    range: std::ops::Range<usize>,
    split: SplitName,
) -> Result<Vec<u8>> {
    let n = range.len();
    let s = set.side;
    let pixels = &set.pixels[range.start * set.image_len()..range.end * set.image_len()];
    let labels: Vec<u8> = set.labels[range.clone()]
        .iter()
        .flat_map(|l| l.to_le_bytes())
        .collect();
    let invalid =
        |e: safetensors::SafeTensorError| DataError::Invalid(format!("encoding shard: {e}"));
    let images = TensorView::new(Dtype::U8, vec![n, s, s, 3], pixels).map_err(invalid)?;
    let labels = TensorView::new(Dtype::U16, vec![n], &labels).map_err(invalid)?;
    // One metadata entry: safetensors keeps metadata in a HashMap, whose order would
    // make the bytes (and so the content id) differ between identical ingests.
    let meta = serde_json::json!({
        "format": format!("{DATASET_FORMAT}.shard/{DATASET_FORMAT_VERSION}"),
        "split": split.as_str(),
        "tracks": &set.tracks[range.clone()],
        "files": &set.files[range],
    });
    let meta = HashMap::from([(SHARD_METADATA_KEY.to_string(), meta.to_string())]);
    safetensors::serialize([("images", images), ("labels", labels)], Some(meta)).map_err(invalid)
}

fn decode_shard(bytes: &[u8], name: &str, out: &mut ImageSet) -> Result<usize> {
    let bad = |what: String| DataError::Integrity {
        path: name.to_string(),
        what,
    };
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(format!("unreadable header: {e}")))?;
    let images = st
        .tensor("images")
        .map_err(|e| bad(format!("images: {e}")))?;
    let labels = st
        .tensor("labels")
        .map_err(|e| bad(format!("labels: {e}")))?;
    let shape = images.shape();
    if images.dtype() != Dtype::U8
        || shape.len() != 4
        || shape[1] != out.side
        || shape[2] != out.side
        || shape[3] != 3
    {
        return Err(bad(format!(
            "images are {:?} {:?}, expected U8 [n, {s}, {s}, 3]",
            images.dtype(),
            shape,
            s = out.side
        )));
    }
    let n = shape[0];
    if labels.dtype() != Dtype::U16 || labels.shape() != [n] {
        return Err(bad(format!(
            "labels are {:?} {:?}, expected U16 [{n}]",
            labels.dtype(),
            labels.shape()
        )));
    }
    let text = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(SHARD_METADATA_KEY))
        .ok_or_else(|| bad(format!("metadata has no {SHARD_METADATA_KEY:?} entry")))?;
    let fields: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| bad(format!("metadata {SHARD_METADATA_KEY:?}: {e}")))?;
    let field = |key: &str| -> Result<Vec<String>> {
        let v: Vec<String> = serde_json::from_value(fields[key].clone())
            .map_err(|e| bad(format!("metadata field {key:?}: {e}")))?;
        if v.len() != n {
            return Err(bad(format!(
                "metadata {key:?} has {} entries for {n} images",
                v.len()
            )));
        }
        Ok(v)
    };
    let tracks = field("tracks")?;
    let files = field("files")?;
    out.pixels.extend_from_slice(images.data());
    out.labels.extend(
        labels
            .data()
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]])),
    );
    out.tracks.extend(tracks);
    out.files.extend(files);
    Ok(n)
}

/// Writes `splits` as a new dataset version under `root` and points `LATEST` at it.
pub async fn write_dataset(
    root: &Location,
    info: DatasetInfo,
    splits: &[(SplitName, &ImageSet)],
    shard_images: usize,
) -> Result<DatasetManifest> {
    if shard_images == 0 {
        return Err(DataError::Invalid(
            "shard size must be at least one image".into(),
        ));
    }
    let n_classes = info.class_names.len();
    let mut entries = BTreeMap::new();
    let mut blobs = Vec::new();
    for &(name, set) in splits {
        if set.side != info.resize.side {
            return Err(DataError::Invalid(format!(
                "split {name} has side {} but the dataset side is {}",
                set.side, info.resize.side
            )));
        }
        let mut shards = Vec::new();
        for (k, start) in (0..set.len()).step_by(shard_images).enumerate() {
            let end = (start + shard_images).min(set.len());
            let bytes = encode_shard(set, start..end, name)?;
            let path = format!("{name}-{k:05}.safetensors");
            shards.push(ShardEntry {
                path: path.clone(),
                count: end - start,
                bytes: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(&bytes)),
            });
            blobs.push((path, bytes));
        }
        let tracks: std::collections::BTreeSet<&String> = set.tracks.iter().collect();
        entries.insert(
            name,
            SplitEntry {
                count: set.len(),
                tracks: tracks.len(),
                class_histogram: set.class_histogram(n_classes),
                shards,
            },
        );
    }
    let mut manifest = DatasetManifest {
        format: DATASET_FORMAT.to_string(),
        format_version: DATASET_FORMAT_VERSION,
        dataset_id: String::new(),
        created_unix: 0,
        source: info.source,
        resize: info.resize,
        split_spec: info.split_spec,
        class_names: info.class_names,
        splits: entries,
    };
    manifest.dataset_id = manifest.content_id();
    manifest.created_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);

    let dir = root.sub(&manifest.dataset_id);
    for (path, bytes) in blobs {
        let loc = dir.child(&path);
        dir.store
            .put(&loc, PutPayload::from(bytes))
            .await
            .map_err(store_err(&loc))?;
    }
    let loc = dir.child(MANIFEST);
    dir.store
        .put(&loc, PutPayload::from(manifest.to_bytes()))
        .await
        .map_err(store_err(&loc))?;
    let loc = root.child(LATEST);
    root.store
        .put(
            &loc,
            PutPayload::from(manifest.dataset_id.clone().into_bytes()),
        )
        .await
        .map_err(store_err(&loc))?;
    Ok(manifest)
}

/// A dataset version opened for reading.
pub struct Dataset {
    pub manifest: DatasetManifest,
    /// The version's folder.
    pub dir: Location,
}

async fn get(loc: &Location, name: &str) -> Result<Option<bytes::Bytes>> {
    let path = loc.child(name);
    match loc.store.get(&path).await {
        Ok(r) => Ok(Some(r.bytes().await.map_err(store_err(&path))?)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(store_err(&path)(e)),
    }
}

/// Opens a dataset version: `location` is either a version folder (holding manifest.json)
/// or a root whose `LATEST` names one.
pub async fn open_dataset(location: &Location) -> Result<Dataset> {
    let dir = if get(location, MANIFEST).await?.is_some() {
        location.clone()
    } else {
        let latest = get(location, LATEST)
            .await?
            .ok_or_else(|| DataError::Missing {
                path: location.display.clone().into(),
                what: "neither manifest.json nor LATEST: not a dataset written by `trainer ingest`"
                    .into(),
            })?;
        let id = String::from_utf8_lossy(&latest).trim().to_string();
        location.sub(&id)
    };
    let bytes = get(&dir, MANIFEST)
        .await?
        .ok_or_else(|| DataError::Missing {
            path: format!("{}/{MANIFEST}", dir.display).into(),
            what: "manifest of the version named by LATEST".into(),
        })?;
    let where_ = format!("{}/{MANIFEST}", dir.display);
    let manifest: DatasetManifest = serde_json::from_slice(&bytes)
        .map_err(|e| DataError::malformed(&where_, format!("not a dataset manifest: {e}")))?;
    if manifest.format != DATASET_FORMAT || manifest.format_version != DATASET_FORMAT_VERSION {
        return Err(DataError::malformed(
            &where_,
            format!(
                "format {} version {}, this build reads {DATASET_FORMAT} version {DATASET_FORMAT_VERSION}",
                manifest.format, manifest.format_version
            ),
        ));
    }
    Ok(Dataset { manifest, dir })
}

impl Dataset {
    /// Reads one split, verifying every shard's size and sha256 against the manifest.
    pub async fn read_split(&self, split: SplitName) -> Result<ImageSet> {
        let entry = self.manifest.splits.get(&split).ok_or_else(|| {
            DataError::Invalid(format!(
                "dataset {} has no {split} split (it has: {})",
                self.manifest.dataset_id,
                self.manifest
                    .splits
                    .keys()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let mut out = ImageSet::new(self.manifest.resize.side);
        for shard in &entry.shards {
            let name = format!("{}/{}", self.dir.display, shard.path);
            let bytes = get(&self.dir, &shard.path)
                .await?
                .ok_or_else(|| DataError::Missing {
                    path: name.clone().into(),
                    what: "shard listed in the manifest".into(),
                })?;
            if bytes.len() as u64 != shard.bytes {
                return Err(DataError::Integrity {
                    path: name,
                    what: format!("{} bytes, manifest says {}", bytes.len(), shard.bytes),
                });
            }
            let sha = hex::encode(Sha256::digest(&bytes));
            if sha != shard.sha256 {
                return Err(DataError::Integrity {
                    path: name,
                    what: format!("sha256 {sha}, manifest says {}", shard.sha256),
                });
            }
            let n = decode_shard(&bytes, &name, &mut out)?;
            if n != shard.count {
                return Err(DataError::Integrity {
                    path: name,
                    what: format!("{n} images, manifest says {}", shard.count),
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize, side: usize) -> ImageSet {
        let mut s = ImageSet::new(side);
        for i in 0..n {
            let px: Vec<u8> = (0..side * side * 3).map(|k| (i * 7 + k) as u8).collect();
            s.push(
                &px,
                (i % 3) as u16,
                format!("{:05}/{:05}", i % 3, i / 6),
                format!("f{i}.ppm"),
            );
        }
        s
    }

    fn info(side: usize) -> DatasetInfo {
        DatasetInfo {
            source: SourceInfo {
                kind: "test".into(),
                location: "memory".into(),
                details: serde_json::json!({}),
            },
            resize: ResizeInfo {
                side,
                roi: false,
                filter: "none".into(),
            },
            split_spec: None,
            class_names: vec!["a".into(), "b".into(), "c".into()],
        }
    }

    #[tokio::test]
    async fn round_trip_through_latest_with_several_shards() {
        let tmp = tempfile::tempdir().unwrap();
        let root = crate::store::open(tmp.path().to_str().unwrap()).unwrap();
        let (a, b) = (toy(25, 4), toy(3, 4));
        let m = write_dataset(
            &root,
            info(4),
            &[(SplitName::Train, &a), (SplitName::Validation, &b)],
            10,
        )
        .await
        .unwrap();
        assert_eq!(m.splits[&SplitName::Train].shards.len(), 3);
        assert_eq!(m.splits[&SplitName::Train].class_histogram, vec![9, 8, 8]);
        let ds = open_dataset(&root).await.unwrap();
        assert_eq!(ds.manifest, m);
        assert_eq!(ds.read_split(SplitName::Train).await.unwrap(), a);
        assert_eq!(ds.read_split(SplitName::Validation).await.unwrap(), b);
        assert!(ds.read_split(SplitName::Test).await.is_err());
        // Same content, same id: a re-ingest is idempotent.
        let again = write_dataset(
            &root,
            info(4),
            &[(SplitName::Train, &a), (SplitName::Validation, &b)],
            10,
        )
        .await
        .unwrap();
        assert_eq!(again.dataset_id, m.dataset_id);
        for shard in &m.splits[&SplitName::Train].shards {
            let bytes = std::fs::read(tmp.path().join(&m.dataset_id).join(&shard.path)).unwrap();
            assert_eq!(hex::encode(Sha256::digest(&bytes)), shard.sha256);
        }
        // Encoding is byte-for-byte deterministic (the content id depends on it).
        for _ in 0..8 {
            assert_eq!(
                encode_shard(&a, 0..25, SplitName::Train).unwrap(),
                encode_shard(&a, 0..25, SplitName::Train).unwrap()
            );
        }
    }

    #[tokio::test]
    async fn a_flipped_byte_is_reported_with_the_shard_name() {
        let tmp = tempfile::tempdir().unwrap();
        let root = crate::store::open(tmp.path().to_str().unwrap()).unwrap();
        let m = write_dataset(&root, info(4), &[(SplitName::Train, &toy(5, 4))], 100)
            .await
            .unwrap();
        let shard = tmp
            .path()
            .join(&m.dataset_id)
            .join("train-00000.safetensors");
        let mut bytes = std::fs::read(&shard).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&shard, bytes).unwrap();
        let ds = open_dataset(&root).await.unwrap();
        let err = ds
            .read_split(SplitName::Train)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("train-00000.safetensors") && err.contains("sha256"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn not_a_dataset_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let root = crate::store::open(tmp.path().to_str().unwrap()).unwrap();
        let err = open_dataset(&root).await.err().unwrap().to_string();
        assert!(err.contains("not a dataset"), "{err}");
    }
}
