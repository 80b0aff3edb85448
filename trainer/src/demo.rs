//! `trainer demo`: the offline path end to end, with no data and no services: synthetic
//! signs -> versioned dataset -> training (default recipe, short budget) -> calibration ->
//! evaluation, recorded in an embedded SQLite registry under `--out`; then the `exporter`
//! binary exports, checks, signs and bundles the run (key generated on first use and kept
//! in `--out/keys`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::ingest::{self, IngestArgs, Source};
use crate::train_cmd::IcpArgs;
use crate::training::config::EarlyStoppingConfig;
use crate::training::TrialConfig;
use crate::trial::{print_report, run_trial, TrialRequest};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// synthetic | u8:DIR | gtsrb:DIR
    #[arg(long, default_value = "synthetic")]
    pub data: Source,
    /// Folder for the dataset, the registry and the run artifacts.
    #[arg(long, default_value = "runs/demo", env = "EDGECP_DEMO_OUT")]
    pub out: PathBuf,
    /// Training steps (batches of 64 images); the default fits the 5-minute budget on 2 cores
    /// (about 3 minutes in all on a 2-core AMD EPYC, release build).
    #[arg(long, default_value_t = 600)]
    pub steps: usize,
    /// Override a training configuration key (see `trainer train --help`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    #[command(flatten)]
    pub icp: IcpArgs,
    /// Seed of the synthetic data, the splits and training.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object (the last line) instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// The demo's trial: the default recipe on a short budget.
fn demo_config(args: &DemoArgs) -> Result<TrialConfig> {
    let defaults = TrialConfig::default();
    let mut cfg = TrialConfig {
        seed: args.seed,
        epochs: 1,
        steps_per_epoch: args.steps.max(1),
        eval_every: (args.steps / 3).max(1),
        checkpoint_every: (args.steps / 3).max(1),
        eval_train_per_class: 20,
        early_stopping: EarlyStoppingConfig {
            patience: 0,
            ..defaults.early_stopping.clone()
        },
        ..defaults
    };
    for a in &args.set {
        cfg.set_assignment(a)
            .with_context(|| format!("--set {a}"))?;
    }
    cfg.validate().context("demo configuration")?;
    Ok(cfg)
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let cfg = demo_config(args)?;
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

    let registry = format!(
        "sqlite://{}?mode=rwc",
        args.out.join("registry.db").display()
    );
    let report = run_trial(&TrialRequest {
        cfg,
        dataset: summary.location.clone(),
        registry_url: registry.clone(),
        artifacts: args.out.join("artifacts").display().to_string(),
        experiment: "demo".into(),
        name: format!("demo-{}", ingest_args.source_kind()),
        resume: None,
        icp: args.icp.settings(),
        quiet: args.json,
        mlflow: None,
        mlflow_wait: std::time::Duration::ZERO,
        extra_params: vec![],
    })?;
    let bundle = bundle_run(&args.out, &registry, &report.run_dir, args.json)?;
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        v["dataset_id"] = summary.dataset_id.clone().into();
        v["bundle"] = bundle.dir.display().to_string().into();
        v["public_key"] = bundle.public_key.display().to_string().into();
        v["model_id"] = bundle.model_id.into();
        println!("{v}");
    } else {
        print_report(&report);
        println!(
            "bundle {} (signed; verify with `exporter verify {} --key {}`)",
            bundle.dir.display(),
            bundle.dir.display(),
            bundle.public_key.display()
        );
    }
    Ok(())
}

/// The demo's bundle.
struct DemoBundle {
    dir: PathBuf,
    public_key: PathBuf,
    model_id: String,
}

/// Exports, signs and bundles the run in `run_dir` with the `exporter` binary (the exporter
/// depends on this crate, so it cannot be called in-process); the signing key is created on
/// first use in `out/keys/`.
fn bundle_run(
    out: &std::path::Path,
    registry: &str,
    run_dir: &str,
    quiet: bool,
) -> Result<DemoBundle> {
    let keys_dir = out.join("keys");
    let (_, paths) =
        shared::bundle::keys::load_or_create(&keys_dir, "signing").context("demo signing key")?;
    let b = crate::bundling::bundle_run(
        registry,
        run_dir,
        &paths.private,
        &out.join("bundles"),
        &out.join("store").display().to_string(),
        quiet,
    )?;
    Ok(DemoBundle {
        dir: b.dir,
        public_key: std::fs::canonicalize(&paths.public).unwrap_or(paths.public),
        model_id: b.model_id,
    })
}
