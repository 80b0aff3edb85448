//! `trainer best`: the best finished run of an experiment by a validation metric, with
//! plain SQL over the registry ([`Registry::best_run`]: finished runs only, ties to the
//! earlier start, then the smaller id), and the newest bundle made from it.
//!
//! Only `validation_*` metrics are accepted: the reference pipeline picked its model by
//! test-set silhouette, which lets the test data choose the model it is then judged on.

use anyhow::{bail, Context, Result};

use crate::registry::Registry;

/// Which run is best.
#[derive(clap::Args, Debug, Clone)]
pub struct BestArgs {
    /// Final metric to rank by; must be a validation metric (validation_silhouette,
    /// validation_nc_accuracy, validation_icp_singleton_0.05, ...).
    #[arg(long, default_value = "validation_silhouette")]
    pub metric: String,
    /// Only runs of this experiment (default: every experiment).
    #[arg(long, short = 'e')]
    pub experiment: Option<String>,
    /// Lower is better (default: higher is better).
    #[arg(long, conflicts_with = "max")]
    pub min: bool,
    /// Higher is better (the default; for scripts that want to say so).
    #[arg(long)]
    pub max: bool,
    /// Print one JSON object: {"run": ..., "metric": ..., "value": ..., "bundle": ...}.
    #[arg(long)]
    pub json: bool,
}

/// Runs `trainer best` against the registry at `registry_url`.
pub fn run(a: &BestArgs, registry_url: &str) -> Result<()> {
    if !a.metric.starts_with("validation_") {
        bail!(
            "--metric {}: choose a model by a validation metric (validation_...), not by the \
             data it will be judged on; `trainer runs show RUN` lists a run's metrics",
            a.metric
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let reg = Registry::open(registry_url).await?;
        let best = reg
            .best_run(a.experiment.as_deref(), &a.metric, !a.min)
            .await?;
        let Some(best) = best else {
            bail!(
                "no finished run{} has the final metric {:?}",
                a.experiment
                    .as_deref()
                    .map_or(String::new(), |e| format!(" of experiment {e:?}")),
                a.metric
            );
        };
        let value = best.metrics.get(&a.metric).copied();
        let bundle = reg
            .bundles(Some(best.run.id.as_str()))
            .await?
            .into_iter()
            .next();
        if a.json {
            println!(
                "{}",
                serde_json::json!({
                    "metric": a.metric,
                    "higher_is_better": !a.min,
                    "value": value,
                    "run": best,
                    "bundle": bundle,
                })
            );
        } else {
            println!(
                "best run by {} ({}): {}  {} = {}",
                a.metric,
                if a.min { "lowest" } else { "highest" },
                best.run.id.as_str(),
                a.metric,
                value.map_or("-".into(), |v| format!("{v:.6}"))
            );
            match bundle {
                Some(b) => println!("bundle {} at {}", b.model_id, b.uri),
                None => println!(
                    "no bundle yet: exporter bundle --run {}",
                    best.run.id.as_str()
                ),
            }
        }
        Ok(())
    })
}
