//! `trainer runs list|show`: read the run registry from the terminal or as JSON.

// Wired into the CLI by main.rs; until then only the tests reach it.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use anyhow::{Context, Result};

use crate::registry::{MetricOrder, Registry, RunDetail, RunFilter, RunSummary, Status};

#[derive(clap::Subcommand, Debug, Clone)]
pub enum RunsCommand {
    /// List runs, newest first (or best first with --sort), with their key final metrics.
    /// Runs whose process died are marked killed first.
    List {
        /// Only runs of this experiment.
        #[arg(long, short = 'e')]
        experiment: Option<String>,
        /// Only runs with this status: running, finished, failed, killed.
        #[arg(long, value_parser = parse_status)]
        status: Option<Status>,
        /// At most this many runs.
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: u32,
        /// Order by this final metric, best first (highest unless --min).
        #[arg(long)]
        sort: Option<String>,
        /// With --sort: lower is better.
        #[arg(long, requires = "sort")]
        min: bool,
        /// Final metrics to show as columns (comma-separated); default: the first few names.
        #[arg(long, value_delimiter = ',')]
        metrics: Vec<String>,
        /// Print one JSON object {"runs": [...]} instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one run: status, provenance, params, final metrics, metric histories, artifacts.
    Show {
        /// Run id or a unique prefix of it.
        run: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn parse_status(s: &str) -> Result<Status, String> {
    s.parse::<Status>().map_err(|e| e.to_string())
}

/// Runs a `trainer runs` subcommand against the registry at `registry_url`.
pub fn run(cmd: &RunsCommand, registry_url: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let registry = Registry::open(registry_url).await?;
        let out = match cmd {
            RunsCommand::List {
                experiment,
                status,
                limit,
                sort,
                min,
                metrics,
                json,
            } => {
                let filter = RunFilter {
                    experiment: experiment.clone(),
                    status: *status,
                    limit: Some(*limit),
                    order_by: sort.as_ref().map(|m| MetricOrder {
                        metric: m.clone(),
                        higher_is_better: !*min,
                    }),
                };
                let runs = registry.list_runs(&filter).await?;
                if *json {
                    format!("{}\n", serde_json::json!({ "runs": runs }))
                } else {
                    let mut columns: Vec<String> = sort.iter().cloned().collect();
                    if metrics.is_empty() {
                        let names: BTreeSet<&String> =
                            runs.iter().flat_map(|r| r.metrics.keys()).collect();
                        columns.extend(
                            names
                                .into_iter()
                                .filter(|n| Some(*n) != sort.as_ref())
                                .take(4)
                                .cloned(),
                        );
                    } else {
                        columns.extend(
                            metrics
                                .iter()
                                .filter(|m| Some(*m) != sort.as_ref())
                                .cloned(),
                        );
                    }
                    format_list(&runs, &columns)
                }
            }
            RunsCommand::Show { run, json } => {
                let id = registry.resolve_run(run).await?;
                let detail = registry.run(&id).await?;
                if *json {
                    format!("{}\n", serde_json::to_string(&detail)?)
                } else {
                    format_show(&detail)
                }
            }
        };
        registry.close().await;
        print!("{out}");
        Ok(())
    })
}

/// `2026-11-25 13:30:05` (UTC) from milliseconds since the epoch.
pub fn format_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| ms.to_string())
}

fn format_duration(start_ms: i64, end_ms: Option<i64>, heartbeat_ms: i64) -> String {
    let secs = (end_ms.unwrap_or(heartbeat_ms) - start_ms).max(0) / 1000;
    if secs >= 3600 {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

fn format_value(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e6 || v.abs() < 1e-3) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

/// The table of `trainer runs list`.
pub fn format_list(runs: &[RunSummary], metric_columns: &[String]) -> String {
    let mut header: Vec<String> = ["id", "experiment", "name", "status", "start (UTC)", "time"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    header.extend(metric_columns.iter().cloned());
    let mut rows: Vec<Vec<String>> = vec![header];
    for r in runs {
        let mut row = vec![
            r.run.id.as_str().chars().take(12).collect(),
            r.run.experiment.clone(),
            r.run.name.clone(),
            r.run.status.to_string(),
            format_time(r.run.start_ms),
            format_duration(r.run.start_ms, r.run.end_ms, r.run.heartbeat_ms),
        ];
        for m in metric_columns {
            row.push(
                r.metrics
                    .get(m)
                    .map(|v| format_value(*v))
                    .unwrap_or_else(|| "-".into()),
            );
        }
        rows.push(row);
    }
    let mut out = String::new();
    if runs.is_empty() {
        out.push_str("no runs\n");
        return out;
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// The text of `trainer runs show`.
pub fn format_show(d: &RunDetail) -> String {
    let r = &d.run;
    let mut out = String::new();
    let _ = writeln!(out, "run          {}", r.id);
    let _ = writeln!(out, "experiment   {}", r.experiment);
    let _ = writeln!(out, "name         {}", r.name);
    let _ = writeln!(out, "status       {}", r.status);
    let _ = writeln!(out, "started      {} UTC", format_time(r.start_ms));
    match r.end_ms {
        Some(end) => {
            let _ = writeln!(
                out,
                "ended        {} UTC ({})",
                format_time(end),
                format_duration(r.start_ms, r.end_ms, r.heartbeat_ms)
            );
        }
        None => {
            let _ = writeln!(out, "heartbeat    {} UTC", format_time(r.heartbeat_ms));
        }
    }
    let _ = writeln!(out, "host, pid    {} {}", r.host, r.pid);
    let _ = writeln!(out, "code         {}", r.code_version);
    let _ = writeln!(
        out,
        "seed         {}",
        r.seed.map(|s| s.to_string()).unwrap_or_else(|| "-".into())
    );
    let _ = writeln!(
        out,
        "dataset      {} (manifest sha256 {})",
        r.dataset_id.as_deref().unwrap_or("-"),
        r.dataset_sha256.as_deref().unwrap_or("-")
    );
    let section = |out: &mut String, title: &str, items: Vec<(String, String)>| {
        let _ = writeln!(out, "\n{title}");
        if items.is_empty() {
            let _ = writeln!(out, "  (none)");
        }
        let w = items
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        for (k, v) in items {
            let _ = writeln!(out, "  {k:<w$}  {v}");
        }
    };
    section(
        &mut out,
        "params",
        d.params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    section(
        &mut out,
        "final metrics",
        d.metrics
            .iter()
            .map(|(k, v)| (k.clone(), format_value(*v)))
            .collect(),
    );
    section(
        &mut out,
        "metric histories (per step)",
        d.metric_histories
            .iter()
            .map(|k| (k.clone(), String::new()))
            .collect(),
    );
    section(
        &mut out,
        "artifacts",
        d.artifacts
            .iter()
            .map(|a| {
                (
                    a.name.clone(),
                    format!(
                        "{} bytes  sha256 {}  {}",
                        a.bytes,
                        a.sha256.chars().take(16).collect::<String>(),
                        a.uri
                    ),
                )
            })
            .collect(),
    );
    if !r.config.is_empty() {
        let _ = writeln!(out, "\nconfig\n{}", r.config.trim_end());
    }
    out
}
