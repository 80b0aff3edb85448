//! `trainer demo`: the offline path end to end, with no data and no services.
//!
//! Until the trainer issue lands a trained siamese network, the embedding is a fixed,
//! untrained one (4x4 average-pooled pixels, mean-centred and L2-normalised): the point
//! here is the pipeline around it (ingest -> splits by track -> calibrate -> evaluate) and
//! a conformal guarantee that holds even for a weak embedding: the error rate tracks
//! epsilon, and a weak model shows up as larger prediction sets, not as broken promises.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use shared::data::shards::open_dataset;
use shared::data::split::SplitName;
use shared::data::ImageSet;
use shared::icp::{NcmKind, PValueMode};

use crate::evaluate::{evaluate, Embedded, Evaluation, IcpSettings};
use crate::ingest::{self, IngestArgs, Source};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum NcmArg {
    /// d(x, own centroid) / d(x, nearest other centroid)
    NearestCentroid,
    /// number of the k nearest training embeddings of another class
    Knn,
    /// d(nearest of own class) / d(nearest of another class)
    NnRatio,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// synthetic | u8:DIR | gtsrb:DIR
    #[arg(long, default_value = "synthetic")]
    pub data: Source,
    /// Folder for the dataset, report and artifacts.
    #[arg(long, default_value = "runs/demo", env = "EDGECP_DEMO_OUT")]
    pub out: PathBuf,
    /// Nonconformity measure.
    #[arg(long, value_enum, default_value_t = NcmArg::NearestCentroid)]
    pub ncm: NcmArg,
    /// k of the k-NN measure.
    #[arg(long, default_value_t = 40)]
    pub k: usize,
    /// Class-conditional (Mondrian) calibration: bounds the error rate per class.
    #[arg(long)]
    pub mondrian: bool,
    /// Seed of the synthetic data and the splits.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object (the last line) instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct DemoReport {
    seconds: f64,
    dataset_id: String,
    embedding: &'static str,
    /// nearest-centroid accuracy on the validation split
    nc_accuracy: f64,
    icp: Vec<shared::icp::EpsilonRow>,
    artifacts: Vec<String>,
    evaluation: Evaluation,
}

/// The interim embedding: 4x4 average pooling of the centred image, L2-normalised.
fn pixel_embedding(set: &ImageSet) -> (Vec<f32>, usize) {
    let s = set.side;
    let p = s / 4;
    let dim = p * p * 3;
    let mut out = vec![0f32; set.len() * dim];
    for (i, row) in out.chunks_exact_mut(dim).enumerate() {
        let img = set.image(i);
        for y in 0..p * 4 {
            for x in 0..p * 4 {
                for c in 0..3 {
                    row[((y / 4) * p + x / 4) * 3 + c] += f32::from(img[(y * s + x) * 3 + c]);
                }
            }
        }
        let mean = row.iter().sum::<f32>() / dim as f32;
        row.iter_mut().for_each(|v| *v -= mean);
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
        row.iter_mut().for_each(|v| *v /= norm);
    }
    (out, dim)
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let start = Instant::now();
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating output folder {}", args.out.display()))?;
    let datasets = args.out.join("datasets");
    let ingest_args = IngestArgs {
        source: args.data.clone(),
        out: datasets.display().to_string(),
        side: shared::data::DEFAULT_SIDE,
        roi: false,
        skip_bad: false,
        calibration: 0.15,
        validation: 0.15,
        seed: args.seed,
        synthetic_tracks: 12,
        synthetic_frames: 10,
        shard_images: shared::data::shards::DEFAULT_SHARD_IMAGES,
        json: args.json,
    };
    let (summary, _) = ingest::ingest(&ingest_args)?;
    tracing::info!(dataset = %summary.dataset_id, "dataset written to {}", summary.location);

    // Read back through the verified shard reader, as training will.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let root = shared::store::open(&datasets.display().to_string())?;
    let (train, cal, val) = rt.block_on(async {
        let ds = open_dataset(&root).await?;
        anyhow::Ok((
            ds.read_split(SplitName::Train).await?,
            ds.read_split(SplitName::Calibration).await?,
            ds.read_split(SplitName::Validation).await?,
        ))
    })?;

    let (train_e, dim) = pixel_embedding(&train);
    let (cal_e, _) = pixel_embedding(&cal);
    let (val_e, _) = pixel_embedding(&val);
    let kind = match args.ncm {
        NcmArg::NearestCentroid => NcmKind::NearestCentroid,
        NcmArg::Knn => NcmKind::Knn { k: args.k },
        NcmArg::NnRatio => NcmKind::NearestNeighbourRatio,
    };
    let reference_path = args.out.join("reference.safetensors");
    let eval = evaluate(
        &Embedded::of(&train_e, &train),
        &Embedded::of(&cal_e, &cal),
        &Embedded::of(&val_e, &val),
        dim,
        shared::data::NUM_CLASSES,
        IcpSettings {
            ncm: kind,
            mondrian: args.mondrian,
            p_values: PValueMode::Standard,
        },
        Some(&reference_path),
    )?;

    let report_path = args.out.join("report.json");
    let report = DemoReport {
        seconds: start.elapsed().as_secs_f64(),
        dataset_id: summary.dataset_id.clone(),
        embedding: "untrained: 4x4 average-pooled pixels, centred, L2-normalised (the trainer issue replaces it)",
        nc_accuracy: eval.nc_accuracy,
        icp: eval.icp.clone(),
        artifacts: vec![
            summary.location.clone(),
            reference_path.display().to_string(),
            report_path.display().to_string(),
        ],
        evaluation: eval.clone(),
    };
    std::fs::write(&report_path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", report_path.display()))?;

    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "images: {} train / {} calibration / {} validation (split by track), dataset {}",
        train.len(),
        cal.len(),
        val.len(),
        summary.dataset_id
    );
    println!("embedding: {}", report.embedding);
    println!(
        "validation: nearest-centroid accuracy {:.3}, k-NN accuracy {:.3}, silhouette {:.3}",
        eval.nc_accuracy, eval.knn_accuracy, eval.validation_silhouette
    );
    println!(
        "ICP ({}{}) on validation:",
        kind.name(),
        if args.mondrian { ", Mondrian" } else { "" }
    );
    println!(
        "{:>8} {:>10} {:>9} {:>7} {:>9} {:>8}",
        "epsilon", "error", "mean |set|", "empty", "singleton", "multiple"
    );
    for eps in [0.01, 0.02, 0.05, 0.10, 0.15, 0.2] {
        if let Some(r) = eval.full.at(eps) {
            println!(
                "{:>8.3} {:>10.4} {:>9.2} {:>7.3} {:>9.3} {:>8.3}",
                r.epsilon, r.error_rate, r.mean_set_size, r.empty, r.singleton, r.multiple
            );
        }
    }
    println!("ece {:.4}, mce {:.4}", eval.ece, eval.mce);
    println!("artifacts: {}", report.artifacts.join(", "));
    println!("done in {:.1}s", report.seconds);
    Ok(())
}
