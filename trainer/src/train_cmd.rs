//! `trainer train`: one trial from a TOML configuration.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use shared::icp::{NcmKind, PValueMode};

use crate::evaluate::IcpSettings;
use crate::training::TrialConfig;
use crate::trial::{print_report, run_trial, TrialRequest};

/// Prefix of environment variables that override configuration keys:
/// `EDGECP_TRAIN__OPTIM__LR=0.001` sets `optim.lr`.
pub const ENV_PREFIX: &str = "EDGECP_TRAIN";

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum NcmArg {
    /// d(x, own centroid) / d(x, nearest other centroid)
    NearestCentroid,
    /// number of the k nearest training embeddings of another class
    Knn,
    /// d(nearest of own class) / d(nearest of another class)
    NnRatio,
}

/// ICP options shared by `train` and `demo`.
#[derive(Args, Debug, Clone)]
pub struct IcpArgs {
    /// Nonconformity measure of the reported ICP table (scores of all three are stored).
    #[arg(long, value_enum, default_value_t = NcmArg::NearestCentroid)]
    pub ncm: NcmArg,
    /// k of the k-NN measure.
    #[arg(long, default_value_t = 40)]
    pub k: usize,
    /// Class-conditional (Mondrian) calibration: bounds the error rate per class.
    #[arg(long)]
    pub mondrian: bool,
}

impl IcpArgs {
    pub fn settings(&self) -> IcpSettings {
        IcpSettings {
            ncm: match self.ncm {
                NcmArg::NearestCentroid => NcmKind::NearestCentroid,
                NcmArg::Knn => NcmKind::Knn { k: self.k },
                NcmArg::NnRatio => NcmKind::NearestNeighbourRatio,
            },
            mondrian: self.mondrian,
            p_values: PValueMode::Standard,
        }
    }
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Trial configuration (TOML). Missing keys take the default (stronger) recipe; use
    /// `--preset reference` for the reference pipeline's recipe. Precedence: file <
    /// environment (EDGECP_TRAIN__SECTION__KEY) < --set.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Start from a preset before applying the file.
    #[arg(long, value_enum, default_value_t = Preset::Default)]
    pub preset: Preset,
    /// Override one key, e.g. `--set optim.lr=0.0005 --set recipe.loss=contrastive`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Dataset written by `trainer ingest` (its folder, or a version inside it).
    #[arg(long, env = "EDGECP_DATASET", default_value = "datasets")]
    pub data: String,
    /// Artifact location, a directory or a URL (file:///...): each run stores its weights,
    /// reference data, plots and report under `<location>/<run id>/`. For a directory,
    /// checkpoints are kept there too; see `trial::work_dir` for other locations.
    #[arg(long, env = "EDGECP_ARTIFACTS", default_value = "runs/artifacts")]
    pub artifacts: String,
    #[arg(long, default_value = "default")]
    pub experiment: String,
    /// Run name (defaults to the configuration file's stem or the preset).
    #[arg(long)]
    pub name: Option<String>,
    /// Resume this run (id or unique prefix) from its last checkpoint.
    #[arg(long, value_name = "RUN")]
    pub resume: Option<String>,
    #[command(flatten)]
    pub icp: IcpArgs,
    /// Also log to this MLflow tracking server (http://HOST:5000): params, per-step
    /// metrics while training, final metrics, plots and model files. Training never waits
    /// on it: records queue while it is down and are sent when it answers.
    #[arg(long, env = crate::tracking::URL_ENV, value_name = "URL")]
    pub mlflow: Option<String>,
    /// Seconds the end of the run waits for MLflow records still queued (server down);
    /// what is still unsent then is reported as missing.
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub mlflow_wait: f64,
    /// Print one JSON object (the last line) instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Preset {
    /// batch-hard triplet on P x K batches, batch norm, L2-normalised, cosine schedule
    Default,
    /// the reference pipeline: contrastive loss, margin 5, balanced pairs
    Reference,
}

/// Loads the configuration: preset, then the file, then environment, then `--set`.
pub fn load_config(args: &TrainArgs) -> Result<TrialConfig> {
    let mut cfg = match (&args.config, args.preset) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading configuration {}", path.display()))?;
            match args.preset {
                // A file describes a trial relative to the default recipe.
                Preset::Default => TrialConfig::from_toml_str(&text)
                    .with_context(|| format!("configuration {}", path.display()))?,
                // Relative to the reference recipe: apply only the keys it names.
                Preset::Reference => merge_over(TrialConfig::reference(), &text)
                    .with_context(|| format!("configuration {}", path.display()))?,
            }
        }
        (None, Preset::Default) => TrialConfig::default(),
        (None, Preset::Reference) => TrialConfig::reference(),
    };
    cfg.apply_env(ENV_PREFIX, std::env::vars())
        .context("configuration from the environment")?;
    for a in &args.set {
        cfg.set_assignment(a)
            .with_context(|| format!("--set {a}"))?;
    }
    cfg.validate().context("configuration")?;
    Ok(cfg)
}

/// Applies the keys present in TOML `text` over `base`.
fn merge_over(mut base: TrialConfig, text: &str) -> Result<TrialConfig> {
    let table: toml::Table = toml::from_str(text).context("parsing the configuration")?;
    base.set_table(&table)?;
    Ok(base)
}

/// A duration given in seconds on the command line.
pub fn seconds(flag: &str, secs: f64) -> Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(secs)
        .map_err(|_| anyhow::anyhow!("{flag} {secs}: expected a number of seconds >= 0"))
}

pub fn run(args: &TrainArgs, registry_url: &str) -> Result<()> {
    let cfg = load_config(args)?;
    let name = args.name.clone().unwrap_or_else(|| {
        args.config
            .as_ref()
            .and_then(|p| p.file_stem())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("{:?}", args.preset).to_lowercase())
    });
    let report = run_trial(&TrialRequest {
        cfg,
        dataset: args.data.clone(),
        registry_url: registry_url.to_string(),
        artifacts: args.artifacts.clone(),
        experiment: args.experiment.clone(),
        name,
        resume: args.resume.clone(),
        icp: args.icp.settings(),
        quiet: args.json,
        mlflow: args.mlflow.clone(),
        mlflow_wait: seconds("--mlflow-wait", args.mlflow_wait)?,
        extra_params: vec![],
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}
