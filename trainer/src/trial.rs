//! One trial end to end: dataset -> train -> embed -> calibrate -> evaluate -> plots,
//! recorded in the run registry. `trainer train` and `trainer demo` both run this.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use shared::data::shards::open_dataset;
use shared::data::split::SplitName;
use shared::store::Location;

use crate::evaluate::{evaluate, Embedded, Evaluation, IcpSettings};
use crate::registry::{Artifact, BlockingRegistry, NewRun, RunGuard, RunId, Status};
use crate::tracking::{flatten_toml, MlflowRun, RunStatus, TrackingReport};
use crate::training::{self, StepProgress, TrainObserver, TrialConfig};

/// What to run and where to record it.
pub struct TrialRequest {
    pub cfg: TrialConfig,
    /// Dataset location written by `trainer ingest` (a root with LATEST, or a version).
    pub dataset: String,
    pub registry_url: String,
    /// Artifact location (a directory path or a URL, see [`shared::store::open`]) under
    /// which each run's files go to `<run_id>/<file>`. See [`work_dir`] for where training
    /// writes them (and its checkpoints) first.
    pub artifacts: String,
    pub experiment: String,
    pub name: String,
    /// Continue this run (id or prefix) from its last checkpoint.
    pub resume: Option<String>,
    pub icp: IcpSettings,
    pub quiet: bool,
    /// MLflow server to log to as well (None: the registry only).
    pub mlflow: Option<String>,
    /// How long the end of the trial waits for MLflow records still queued (server down).
    pub mlflow_wait: std::time::Duration,
    /// Params recorded besides the configuration (a sweep's trial id, for example).
    pub extra_params: Vec<(String, String)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TrialReport {
    pub run_id: String,
    pub seconds: f64,
    pub nc_accuracy: f64,
    pub icp: Vec<shared::icp::EpsilonRow>,
    pub training: TrainingSummary,
    pub evaluation: Evaluation,
    /// The artifact files in the local working folder `run_dir`.
    pub artifacts: Vec<String>,
    pub run_dir: String,
    /// The artifacts' URLs in the artifact location, in the order of `artifacts`.
    pub artifact_urls: Vec<String>,
    /// What reached MLflow (with --mlflow).
    pub mlflow: Option<TrackingReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TrainingSummary {
    pub steps: usize,
    pub total_steps: usize,
    pub resumed_at: usize,
    pub stopped_early: bool,
    pub chosen_step: usize,
    pub images_per_sec: f64,
    pub seconds: f64,
    /// Validation figures at each evaluation during training.
    pub evaluations: Vec<training::Evaluation>,
    pub best: Option<training::Evaluation>,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
}

/// Sends metrics to the registry in batches and drives the progress bar.
struct Recorder<'a> {
    reg: &'a BlockingRegistry,
    mlflow: Option<&'a MlflowRun>,
    run: RunId,
    pending: Vec<(String, i64, f64)>,
    history: Vec<(u64, String, f64)>,
    bar: indicatif::ProgressBar,
    failed: Option<String>,
}

impl Recorder<'_> {
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        // A registry hiccup must not kill hours of training: keep going, report at the end.
        if let Err(e) = self
            .reg
            .block_on(self.reg.registry().log_metrics(&self.run, &batch))
        {
            tracing::warn!("could not record {} metric points: {e}", batch.len());
            self.failed.get_or_insert_with(|| e.to_string());
        }
    }
}

impl TrainObserver for Recorder<'_> {
    fn metric(&mut self, step: usize, _epoch: usize, name: &str, value: f64) {
        if !value.is_finite() {
            return;
        }
        self.pending.push((name.to_string(), step as i64, value));
        if let Some(m) = self.mlflow {
            m.log_metric(name, step as i64, value);
        }
        self.history.push((step as u64, name.to_string(), value));
        if name.starts_with("validation") {
            tracing::info!(step, "{name} = {value:.4}");
        }
        if self.pending.len() >= 200 {
            self.flush();
        }
    }

    fn progress(&mut self, p: &StepProgress) {
        self.bar.set_length(p.total_steps as u64);
        self.bar.set_position(p.step as u64);
        self.bar.set_message(format!(
            "epoch {}/{} loss {:.4} lr {:.2e} {:.0} img/s",
            p.epoch + 1,
            p.epochs,
            p.loss,
            p.lr,
            p.images_per_sec
        ));
    }

    fn checkpoint(&mut self, step: usize, _path: &Path) {
        self.flush();
        tracing::debug!(step, "checkpoint written");
    }
}

/// The local working folder of a run: training writes its checkpoints (which `--resume`
/// reads), weights, reference data, plots and report here before they are uploaded to the
/// artifact location.
///
/// For a local location this is the run's folder in it, `<dir>/<run_id>/`, so the upload
/// finds every file already in place and only hashes it. A remote location (S3 later) has
/// no local folder, so runs work in `runs/work/<run_id>/` under the current directory,
/// beside the default registry and artifacts, where a later `--resume` from the same
/// directory finds the checkpoints.
pub fn work_dir(artifacts: &Location, run: &RunId) -> PathBuf {
    match artifacts.local_dir() {
        Some(dir) => dir.join(run.as_str()),
        None => Path::new("runs").join("work").join(run.as_str()),
    }
}

/// Runs one trial. The registry run is `running` while this works, `finished` only when
/// everything is recorded, and `failed` if anything returns an error (the guard's drop).
pub fn run_trial(req: &TrialRequest) -> Result<TrialReport> {
    let start = Instant::now();
    req.cfg.validate().context("trial configuration")?;
    if let Some(url) = &req.mlflow {
        // A bad URL fails now, before a run is recorded.
        crate::tracking::MlflowClient::new(url)?;
    }
    // Before anything is recorded, so that a bad location leaves no failed run behind.
    let artifacts = shared::store::open(&req.artifacts)
        .with_context(|| format!("opening artifact location {}", req.artifacts))?;
    let reg = BlockingRegistry::open(&req.registry_url)
        .with_context(|| format!("opening the run registry {}", req.registry_url))?;
    let root = shared::store::open(&req.dataset)
        .with_context(|| format!("opening dataset location {}", req.dataset))?;
    let (manifest, train, cal, val) = reg
        .block_on(async {
            let ds = open_dataset(&root).await?;
            anyhow::Ok((
                ds.manifest.clone(),
                ds.read_split(SplitName::Train).await?,
                ds.read_split(SplitName::Calibration).await?,
                ds.read_split(SplitName::Validation).await?,
            ))
        })
        .with_context(|| format!("reading dataset {}", req.dataset))?;
    if train.is_empty() || cal.is_empty() || val.is_empty() {
        bail!(
            "dataset {} needs non-empty train, calibration and validation splits (has {} / {} / {})",
            manifest.dataset_id,
            train.len(),
            cal.len(),
            val.len()
        );
    }
    let n_classes = manifest.class_names.len();

    let config_toml = req.cfg.to_toml_string();
    let guard = match &req.resume {
        None => reg.block_on(RunGuard::start(
            reg.registry(),
            &NewRun {
                experiment: req.experiment.clone(),
                name: req.name.clone(),
                config: config_toml.clone(),
                seed: Some(req.cfg.seed),
                dataset_id: Some(manifest.dataset_id.clone()),
                dataset_sha256: Some(manifest.sha256()),
                code_version: None,
            },
        ))?,
        Some(prefix) => {
            let id = reg.block_on(reg.registry().resolve_run(prefix))?;
            reg.block_on(reg.registry().reopen_run(&id))
                .with_context(|| format!("resuming run {id}"))?;
            RunGuard::adopt(reg.registry(), id, crate::registry::HEARTBEAT_EVERY)
        }
    };
    let run = guard.id().clone();
    let run_dir = work_dir(&artifacts, &run);
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("creating run folder {}", run_dir.display()))?;
    tracing::info!(run = %run, "run folder {}", run_dir.display());
    if req.resume.is_none() {
        let mut params = vec![
            ("config_toml".to_string(), config_toml.clone()),
            ("dataset".to_string(), req.dataset.clone()),
            ("ncm".to_string(), req.icp.ncm.name().to_string()),
            ("mondrian".to_string(), req.icp.mondrian.to_string()),
        ];
        params.extend(req.extra_params.iter().cloned());
        reg.block_on(reg.registry().log_params(&run, &params))?;
    }
    // The full configuration as a file: the run is reproduced from it (`--config`).
    let config_path = run_dir.join("config.toml");
    std::fs::write(&config_path, &config_toml)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let mlflow = match &req.mlflow {
        None => None,
        Some(url) => {
            let tags = vec![
                ("edgecp.run_id".to_string(), run.to_string()),
                (
                    "edgecp.registry".to_string(),
                    crate::registry::redact_url(&req.registry_url),
                ),
                (
                    "edgecp.code_version".to_string(),
                    crate::registry::code_version(),
                ),
                ("edgecp.dataset".to_string(), req.dataset.clone()),
                ("edgecp.dataset_id".to_string(), manifest.dataset_id.clone()),
                ("edgecp.dataset_sha256".to_string(), manifest.sha256()),
                ("edgecp.seed".to_string(), req.cfg.seed.to_string()),
                (
                    "edgecp.resumed".to_string(),
                    req.resume.is_some().to_string(),
                ),
                ("mlflow.source.name".to_string(), "trainer".to_string()),
                ("mlflow.user".to_string(), crate::registry::host_name()),
            ];
            let m = MlflowRun::start(url, &req.experiment, &req.name, tags)
                .with_context(|| format!("MLflow tracking at {url}"))?;
            let mut params = flatten_toml(&config_toml);
            params.push(("dataset".to_string(), req.dataset.clone()));
            params.push(("icp.ncm".to_string(), req.icp.ncm.name().to_string()));
            params.push(("icp.mondrian".to_string(), req.icp.mondrian.to_string()));
            params.extend(req.extra_params.iter().cloned());
            m.log_params(params);
            Some(m)
        }
    };

    let bar = if req.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "train [{bar:30}] {pos}/{len} steps {msg} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    };
    let mut rec = Recorder {
        reg: &reg,
        mlflow: mlflow.as_ref(),
        run: run.clone(),
        pending: vec![],
        history: vec![],
        bar,
        failed: None,
    };
    let outcome = training::train(
        &req.cfg,
        &train,
        Some(&val),
        &run_dir,
        req.resume.is_some(),
        &mut rec,
    )
    .context("training")?;
    rec.flush();
    rec.bar.finish_and_clear();

    let embed = |set| training::embed(&outcome.model, set, 256);
    let (te, ce, ve) = (embed(&train)?, embed(&cal)?, embed(&val)?);
    let dim = req.cfg.model.embedding_dim;
    let reference = run_dir.join("reference.safetensors");
    let eval = evaluate(
        &Embedded::of(&te, &train),
        &Embedded::of(&ce, &cal),
        &Embedded::of(&ve, &val),
        dim,
        n_classes,
        req.icp,
        Some(&reference),
    )?;

    let calibration_png = run_dir.join("calibration.png");
    crate::plots::calibration_plot(&eval.full, eval.validation_tracks, &calibration_png)?;
    let curves_png = run_dir.join("training_curves.png");
    crate::plots::training_curves(&rec.history, &curves_png)?;
    let projection_png = run_dir.join("embeddings_pca.png");
    crate::plots::embedding_projection(
        &ve,
        dim,
        &val.labels,
        &manifest.class_names,
        &projection_png,
    )?;

    let training = TrainingSummary {
        steps: outcome.steps,
        total_steps: outcome.total_steps,
        resumed_at: outcome.resumed_at,
        stopped_early: outcome.stopped_early,
        chosen_step: outcome.chosen_step,
        images_per_sec: outcome.images_per_sec,
        seconds: outcome.seconds,
        evaluations: outcome.evaluations.clone(),
        best: outcome.best.clone(),
        first_loss: outcome.losses.first().copied(),
        last_loss: outcome.losses.last().copied(),
    };
    let report_path = run_dir.join("report.json");
    let files = [
        ("weights", outcome.weights_path.clone()),
        ("reference", reference),
        ("calibration_plot", calibration_png),
        ("training_curves", curves_png),
        ("embedding_projection", projection_png),
        ("report", report_path.clone()),
        ("config", config_path.clone()),
    ];
    // Each file keeps its name under `<location>/<run_id>/`.
    let objects = files
        .iter()
        .map(|(_, path)| {
            let file_name = path
                .file_name()
                .with_context(|| format!("artifact {} has no file name", path.display()))?;
            let object =
                artifacts.child(&format!("{}/{}", run.as_str(), file_name.to_string_lossy()));
            let url = shared::store::object_url(&artifacts, &object)?;
            Ok((object, url))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut report = TrialReport {
        run_id: run.to_string(),
        seconds: 0.0,
        nc_accuracy: eval.nc_accuracy,
        icp: eval.icp.clone(),
        training,
        evaluation: eval.clone(),
        artifacts: files.iter().map(|(_, p)| p.display().to_string()).collect(),
        run_dir: run_dir.display().to_string(),
        artifact_urls: objects.iter().map(|(_, url)| url.clone()).collect(),
        mlflow: None,
    };
    report.seconds = start.elapsed().as_secs_f64();
    std::fs::write(&report_path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", report_path.display()))?;

    let registry = reg.registry();
    for ((name, path), (object, url)) in files.iter().zip(&objects) {
        let (sha256, bytes) = reg
            .block_on(shared::store::upload_file(&artifacts, object, path))
            .with_context(|| format!("storing artifact {name}"))?;
        let artifact = Artifact {
            name: name.to_string(),
            uri: url.clone(),
            sha256,
            bytes,
            created_ms: 0,
        };
        reg.block_on(registry.log_artifact(&run, &artifact))
            .with_context(|| format!("recording artifact {name} ({url})"))?;
    }
    let mut finals = vec![
        ("validation_nc_accuracy".to_string(), eval.nc_accuracy),
        ("validation_knn_accuracy".to_string(), eval.knn_accuracy),
        ("ece".to_string(), eval.ece),
        ("mce".to_string(), eval.mce),
        ("train_images_per_sec".to_string(), outcome.images_per_sec),
    ];
    for (k, v) in [
        ("train_silhouette", eval.train_silhouette),
        ("calibration_silhouette", eval.calibration_silhouette),
        ("validation_silhouette", eval.validation_silhouette),
    ] {
        if v.is_finite() {
            finals.push((k.to_string(), v));
        }
    }
    for v in &eval.validity {
        let tag = format!("{:03}", (v.epsilon * 1000.0).round() as u32);
        finals.push((format!("icp_error_eps{tag}"), v.error_rate));
        finals.push((format!("icp_singleton_eps{tag}"), v.singleton));
        // what one group (track) should expect: the 90th percentile of group error rates
        finals.push((format!("icp_group_error_p90_eps{tag}"), v.groups.p90));
    }
    reg.block_on(registry.log_final_metrics(&run, &finals))?;
    if let Some(e) = rec.failed {
        bail!("training finished but some per-step metrics could not be recorded: {e}");
    }
    if let Some(m) = mlflow {
        for (k, v) in &finals {
            m.log_metric(k, outcome.steps as i64, *v);
        }
        for (name, path) in &files {
            let file_name = path
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_else(|| name.to_string());
            m.log_artifact(&file_name, path.clone());
        }
        let tracked = m.finish(RunStatus::Finished, req.mlflow_wait);
        if tracked.missing.is_empty() {
            tracing::info!(
                "MLflow run {} complete ({} metric points, {} files)",
                tracked.run_id.as_deref().unwrap_or("?"),
                tracked.metrics_sent,
                tracked.artifacts_sent
            );
        } else {
            tracing::warn!(
                "MLflow at {} did not receive: {} (last error: {}); the registry has everything",
                tracked.url,
                tracked.missing.join(", "),
                tracked.last_error.as_deref().unwrap_or("none")
            );
        }
        if let (Some(id), None) = (&tracked.run_id, &req.resume) {
            reg.block_on(registry.log_params(&run, &[("mlflow_run_id".to_string(), id.clone())]))?;
        }
        report.mlflow = Some(tracked);
    }
    reg.block_on(guard.finish(Status::Finished))?;
    Ok(report)
}

/// Prints the human summary of a trial.
pub fn print_report(r: &TrialReport) {
    let e = &r.evaluation;
    println!(
        "run {}: {} steps ({:.0} img/s), {} / {} / {} images",
        r.run_id,
        r.training.steps,
        r.training.images_per_sec,
        e.counts[0],
        e.counts[1],
        e.counts[2]
    );
    println!(
        "validation: nearest-centroid accuracy {:.4}, k-NN accuracy {:.4}, silhouette {:.3}",
        e.nc_accuracy, e.knn_accuracy, e.validation_silhouette
    );
    println!(
        "ICP ({}{}) on validation ({} tracks):",
        e.icp_settings.ncm.name(),
        if e.icp_settings.mondrian {
            ", Mondrian"
        } else {
            ""
        },
        e.validation_tracks
    );
    println!(
        "{:>8} {:>8} {:>10} {:>7} {:>9} {:>8}",
        "epsilon", "error", "mean |set|", "empty", "singleton", "multiple"
    );
    for eps in [0.01, 0.02, 0.05, 0.10, 0.15, 0.2] {
        if let Some(row) = e.full.at(eps) {
            println!(
                "{:>8.3} {:>8.4} {:>10.2} {:>7.3} {:>9.3} {:>8.3}",
                row.epsilon,
                row.error_rate,
                row.mean_set_size,
                row.empty,
                row.singleton,
                row.multiple
            );
        }
    }
    println!("ece {:.4}, mce {:.4}", e.ece, e.mce);
    println!("artifacts (working copies in {}):", r.run_dir);
    for a in &r.artifact_urls {
        println!("  {a}");
    }
    println!("done in {:.1}s", r.seconds);
}
