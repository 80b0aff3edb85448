//! `trainer ingest`: images from a source -> track-aware splits -> versioned dataset shards.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use shared::data::shards::{self, DatasetInfo, DatasetManifest, ResizeInfo, SourceInfo};
use shared::data::split::{split_by_track, SplitName, SplitSpec};
use shared::data::{compact, gtsrb, synthetic, ImageSet, DEFAULT_SIDE};

use shared::progress::Progress;

use crate::progress::Bar;

/// Where images come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// The official GTSRB layout: a folder holding Final_Training and/or Final_Test.
    Gtsrb(PathBuf),
    /// The compact u8 files (`<split>.images.u8.zst`, labels, meta CSV).
    Compact(PathBuf),
    /// The built-in synthetic sign generator.
    Synthetic,
}

impl FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, path) = s.split_once(':').unwrap_or((s, ""));
        match (kind, path) {
            ("synthetic", "") => Ok(Source::Synthetic),
            ("gtsrb", p) if !p.is_empty() => Ok(Source::Gtsrb(p.into())),
            ("u8", p) if !p.is_empty() => Ok(Source::Compact(p.into())),
            _ => Err(format!(
                "{s:?}: expected gtsrb:PATH (folder with Final_Training and/or Final_Test), \
                 u8:PATH (folder of the compact .u8.zst files) or synthetic"
            )),
        }
    }
}

impl IngestArgs {
    /// `gtsrb`, `u8` or `synthetic`.
    pub fn source_kind(&self) -> &'static str {
        self.source.kind()
    }
}

impl Source {
    fn kind(&self) -> &'static str {
        match self {
            Source::Gtsrb(_) => "gtsrb",
            Source::Compact(_) => "u8",
            Source::Synthetic => "synthetic",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct IngestArgs {
    /// gtsrb:PATH | u8:PATH | synthetic. PATH for gtsrb is the `GTSRB` folder of the
    /// official archives (holding Final_Training and/or Final_Test).
    #[arg(long, env = "EDGECP_SOURCE")]
    pub source: Source,
    /// Output directory or object-store URL; each ingest adds a version folder named by
    /// its content id and updates LATEST.
    #[arg(long, env = "EDGECP_DATASETS")]
    pub out: String,
    /// Side S of the square images after resizing (bilinear, antialiased).
    #[arg(long, default_value_t = DEFAULT_SIDE)]
    pub side: usize,
    /// Crop official GTSRB images to their annotated region of interest before resizing.
    #[arg(long)]
    pub roi: bool,
    /// Count and report malformed images or CSV rows instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
    /// Fraction of images (whole tracks) for calibration.
    #[arg(long, default_value_t = 0.15)]
    pub calibration: f64,
    /// Fraction of images (whole tracks) for validation (the compact source brings its own).
    #[arg(long, default_value_t = 0.15)]
    pub validation: f64,
    /// Seed of the track split and of the synthetic generator.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Synthetic source: tracks (physical signs) per class.
    #[arg(long, default_value_t = 12)]
    pub synthetic_tracks: usize,
    /// Synthetic source: frames per track.
    #[arg(long, default_value_t = 10)]
    pub synthetic_frames: usize,
    /// Images per shard file.
    #[arg(long, default_value_t = shards::DEFAULT_SHARD_IMAGES)]
    pub shard_images: usize,
    /// Print a JSON summary on stdout (last line) instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct SplitSummary {
    count: usize,
    tracks: usize,
    class_histogram: Vec<usize>,
}

#[derive(Serialize)]
pub struct IngestSummary {
    pub dataset_id: String,
    pub location: String,
    source: String,
    side: usize,
    roi: bool,
    splits: std::collections::BTreeMap<SplitName, SplitSummary>,
    skipped: Vec<serde_json::Value>,
    seconds: f64,
}

/// What a source produced before writing.
struct Loaded {
    splits: Vec<(SplitName, ImageSet)>,
    class_names: Vec<String>,
    split_spec: Option<SplitSpec>,
    details: serde_json::Value,
    skipped: Vec<serde_json::Value>,
}

fn load(args: &IngestArgs, bar: &Bar) -> Result<Loaded> {
    let spec = SplitSpec {
        calibration: args.calibration,
        validation: args.validation,
        seed: args.seed,
    };
    match &args.source {
        Source::Synthetic => {
            let sspec = synthetic::SyntheticSpec {
                side: args.side,
                tracks_per_class: args.synthetic_tracks,
                frames_per_track: args.synthetic_frames,
                seed: args.seed,
            };
            bar.phase("generating");
            let set = synthetic::generate(&sspec, bar).context("generating synthetic signs")?;
            let s = split_by_track(&set, &spec).context("splitting synthetic signs by track")?;
            Ok(Loaded {
                splits: vec![
                    (SplitName::Train, s.train),
                    (SplitName::Calibration, s.calibration),
                    (SplitName::Validation, s.validation),
                ],
                class_names: synthetic::class_names(),
                split_spec: Some(spec),
                details: serde_json::json!({
                    "seed": args.seed,
                    "tracks_per_class": args.synthetic_tracks,
                    "frames_per_track": args.synthetic_frames,
                }),
                skipped: vec![],
            })
        }
        Source::Gtsrb(root) => {
            let opts = gtsrb::GtsrbOptions {
                side: args.side,
                roi: args.roi,
                skip_bad: args.skip_bad,
            };
            bar.phase("reading");
            let data = gtsrb::read_gtsrb(root, &opts, bar)
                .with_context(|| format!("reading GTSRB official layout at {}", root.display()))?;
            let mut splits = Vec::new();
            let mut split_spec = None;
            if let Some(train) = &data.train {
                let s =
                    split_by_track(train, &spec).context("splitting Final_Training by track")?;
                splits.push((SplitName::Train, s.train));
                splits.push((SplitName::Calibration, s.calibration));
                splits.push((SplitName::Validation, s.validation));
                split_spec = Some(spec);
            }
            if let Some(test) = data.test {
                splits.push((SplitName::Test, test));
            }
            let skipped = data
                .skipped
                .iter()
                .map(|s| serde_json::json!({"file": s.file, "reason": s.reason}))
                .collect();
            Ok(Loaded {
                splits,
                class_names: shared::data::gtsrb_class_names(),
                split_spec,
                details: serde_json::json!({ "skipped": data.skipped.len() }),
                skipped,
            })
        }
        Source::Compact(dir) => {
            if args.side != DEFAULT_SIDE || args.roi {
                bail!(
                    "the compact u8 files hold whole images already resized to {DEFAULT_SIDE}x{DEFAULT_SIDE}: \
                     --side must be {DEFAULT_SIDE} and --roi is not available (use gtsrb:PATH for other settings)"
                );
            }
            bar.phase("reading");
            let train = compact::read_split(dir, "train")
                .with_context(|| format!("reading the compact train split in {}", dir.display()))?;
            let valid = compact::read_split(dir, "valid")
                .with_context(|| format!("reading the compact valid split in {}", dir.display()))?;
            // The compact valid split is already track-disjoint from train: it is the
            // validation split, and calibration tracks are drawn from train.
            let cal_spec = SplitSpec {
                calibration: args.calibration,
                validation: 0.0,
                seed: args.seed,
            };
            let s = split_by_track(&train, &cal_spec)
                .context("drawing calibration tracks from train")?;
            let class_names = compact::read_class_names(dir)
                .with_context(|| format!("reading signnames.csv in {}", dir.display()))?;
            Ok(Loaded {
                splits: vec![
                    (SplitName::Train, s.train),
                    (SplitName::Calibration, s.calibration),
                    (SplitName::Validation, valid),
                ],
                class_names,
                split_spec: Some(cal_spec),
                details: serde_json::json!({ "validation": "the compact valid split" }),
                skipped: vec![],
            })
        }
    }
}

/// Ingests and writes the dataset; returns the summary (also used by `demo`).
pub fn ingest(args: &IngestArgs) -> Result<(IngestSummary, DatasetManifest)> {
    let start = Instant::now();
    let bar = Bar::new(args.json);
    let loaded = load(args, &bar)?;
    bar.finish();
    if loaded.splits.iter().all(|(_, s)| s.is_empty()) {
        bail!("{:?} produced no images", args.source);
    }
    let root =
        shared::store::open(&args.out).with_context(|| format!("opening output {}", args.out))?;
    let info = DatasetInfo {
        source: SourceInfo {
            kind: args.source.kind().to_string(),
            location: match &args.source {
                Source::Gtsrb(p) | Source::Compact(p) => p.display().to_string(),
                Source::Synthetic => "built-in generator".to_string(),
            },
            details: loaded.details,
        },
        resize: ResizeInfo {
            side: args.side,
            roi: args.roi,
            filter: "bilinear, antialiased (Pillow-style support scaling), whole image unless roi"
                .into(),
        },
        split_spec: loaded.split_spec,
        class_names: loaded.class_names,
    };
    let refs: Vec<(SplitName, &ImageSet)> = loaded.splits.iter().map(|(n, s)| (*n, s)).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let manifest = rt
        .block_on(shards::write_dataset(&root, info, &refs, args.shard_images))
        .with_context(|| format!("writing dataset to {}", args.out))?;
    let summary = IngestSummary {
        dataset_id: manifest.dataset_id.clone(),
        location: format!("{}/{}", args.out.trim_end_matches('/'), manifest.dataset_id),
        source: args.source.kind().to_string(),
        side: args.side,
        roi: args.roi,
        splits: manifest
            .splits
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    SplitSummary {
                        count: v.count,
                        tracks: v.tracks,
                        class_histogram: v.class_histogram.clone(),
                    },
                )
            })
            .collect(),
        skipped: loaded.skipped,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok((summary, manifest))
}

pub fn run(args: &IngestArgs) -> Result<()> {
    let (summary, _) = ingest(args)?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
        return Ok(());
    }
    println!(
        "dataset {} written to {} in {:.1}s",
        summary.dataset_id, summary.location, summary.seconds
    );
    println!("{:<12} {:>8} {:>8}", "split", "images", "tracks");
    for (name, s) in &summary.splits {
        println!("{:<12} {:>8} {:>8}", name.as_str(), s.count, s.tracks);
    }
    if !summary.skipped.is_empty() {
        println!("skipped {} bad inputs:", summary.skipped.len());
        for s in &summary.skipped {
            println!("  {s}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_syntax() {
        assert_eq!("synthetic".parse::<Source>(), Ok(Source::Synthetic));
        assert_eq!("u8:/d".parse::<Source>(), Ok(Source::Compact("/d".into())));
        assert_eq!(
            "gtsrb:a:b".parse::<Source>(),
            Ok(Source::Gtsrb("a:b".into()))
        );
        for bad in ["gtsrb", "gtsrb:", "png:/x", "synthetic:3", ""] {
            let err = bad.parse::<Source>().unwrap_err();
            assert!(err.contains("expected gtsrb:PATH"), "{bad}: {err}");
        }
    }
}
