//! `trainer sweep`: a grid or random search written to the registry as trials, for any
//! number of `trainer worker` processes (on any machine that reaches the registry and the
//! object store) to claim and run.
//!
//! # Spec file (TOML)
//! ```toml
//! experiment = "reference-e"
//! dataset = "s3://edgecp/datasets"   # optional: --data / EDGECP_DATASET otherwise
//! method = "grid"                    # or "random"
//! trials = 20                        # random search: how many
//! seed = 0                           # random search: the sampler's seed
//! preset = "default"                 # or "reference": the recipe the base starts from
//! [base]                             # keys set on every trial (as `trainer train --set`)
//! epochs = 15
//! [grid]                             # grid: the cross product of these lists
//! "model.embedding_dim" = [8, 16, 32, 64, 128, 256, 512]
//! [random]                           # random: one draw per key and trial
//! "optim.lr" = { log_uniform = [1e-4, 3e-3] }
//! "recipe.margin" = { uniform = [0.5, 2.0] }
//! "recipe.loss" = { choice = ["contrastive", "batch_hard_triplet"] }
//! "model.embedding_dim" = { int = [16, 256] }
//! ```
//! Every trial's whole configuration is checked here, before anything is written, so a
//! typo fails the sweep at once instead of on a worker hours later.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::registry::{BlockingRegistry, NewSweep, NewTrial, TrialRow};
use crate::training::TrialConfig;

#[derive(Args, Debug)]
pub struct SweepArgs {
    /// The sweep spec (TOML; see deploy/sweeps/ for examples).
    #[arg(long, value_name = "FILE", required_unless_present = "show")]
    pub spec: Option<PathBuf>,
    /// Sweep name (unique in the registry; workers take `--sweep NAME`). Default: the
    /// spec's `name`, else its file stem.
    #[arg(long)]
    pub name: Option<String>,
    /// Dataset location for every trial (overrides the spec's `dataset`).
    #[arg(long, env = "EDGECP_DATASET")]
    pub data: Option<String>,
    /// Experiment the trials' runs are recorded in (overrides the spec's `experiment`).
    #[arg(long)]
    pub experiment: Option<String>,
    /// Print the trials without writing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Show the trials of an existing sweep (status, worker, run, bundle) instead.
    #[arg(long, value_name = "NAME", conflicts_with = "spec")]
    pub show: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// A parsed spec.
#[derive(Debug, Clone)]
pub struct SweepSpec {
    pub name: Option<String>,
    pub experiment: String,
    pub dataset: Option<String>,
    pub base: TrialConfig,
    /// Each trial's overrides, in order.
    pub trials: Vec<Vec<(String, String)>>,
}

/// A random-search distribution.
#[derive(Debug, Clone)]
enum Draw {
    Uniform(f64, f64),
    LogUniform(f64, f64),
    Int(i64, i64),
    Choice(Vec<String>),
}

fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn parse_draw(key: &str, v: &toml::Value) -> Result<Draw> {
    let t = v.as_table().filter(|t| t.len() == 1).with_context(|| {
        format!(
            "[random] {key:?}: expected one of {{ uniform = [a, b] }}, {{ log_uniform = [a, b] }}, \
             {{ int = [a, b] }}, {{ choice = [...] }}"
        )
    })?;
    let (kind, arg) = t.iter().next().context("empty table")?;
    let list = arg
        .as_array()
        .with_context(|| format!("[random] {key:?}.{kind}: expected a list"))?;
    let pair = |what: &str| -> Result<(f64, f64)> {
        let nums: Vec<f64> = list
            .iter()
            .map(|x| x.as_float().or_else(|| x.as_integer().map(|i| i as f64)))
            .collect::<Option<_>>()
            .with_context(|| format!("[random] {key:?}.{what}: expected two numbers"))?;
        match nums.as_slice() {
            [a, b] if a.is_finite() && b.is_finite() && a <= b => Ok((*a, *b)),
            _ => bail!("[random] {key:?}.{what}: expected [low, high] with low <= high"),
        }
    };
    Ok(match kind.as_str() {
        "uniform" => {
            let (a, b) = pair("uniform")?;
            Draw::Uniform(a, b)
        }
        "log_uniform" => {
            let (a, b) = pair("log_uniform")?;
            if a <= 0.0 {
                bail!("[random] {key:?}.log_uniform: bounds must be > 0");
            }
            Draw::LogUniform(a, b)
        }
        "int" => {
            let ints: Vec<i64> = list
                .iter()
                .map(|x| x.as_integer())
                .collect::<Option<_>>()
                .with_context(|| format!("[random] {key:?}.int: expected two integers"))?;
            match ints.as_slice() {
                [a, b] if a <= b => Draw::Int(*a, *b),
                _ => bail!("[random] {key:?}.int: expected [low, high] with low <= high"),
            }
        }
        "choice" if !list.is_empty() => Draw::Choice(list.iter().map(value_text).collect()),
        "choice" => bail!("[random] {key:?}.choice: the list is empty"),
        other => bail!(
            "[random] {key:?}: unknown distribution {other:?} (uniform, log_uniform, int, choice)"
        ),
    })
}

impl Draw {
    fn sample(&self, rng: &mut rand_chacha::ChaCha8Rng) -> String {
        match self {
            Draw::Uniform(a, b) => format!("{}", a + (b - a) * rng.random::<f64>()),
            Draw::LogUniform(a, b) => {
                let (la, lb) = (a.ln(), b.ln());
                format!("{:.6e}", (la + (lb - la) * rng.random::<f64>()).exp())
            }
            Draw::Int(a, b) => rng.random_range(*a..=*b).to_string(),
            Draw::Choice(v) => v[rng.random_range(0..v.len())].clone(),
        }
    }
}

impl SweepSpec {
    /// Parses and checks a spec; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<SweepSpec> {
        let doc: toml::Table =
            toml::from_str(text).with_context(|| format!("sweep spec {origin} is not TOML"))?;
        const KEYS: &[&str] = &[
            "name",
            "experiment",
            "dataset",
            "method",
            "trials",
            "seed",
            "preset",
            "base",
            "grid",
            "random",
        ];
        if let Some(k) = doc.keys().find(|k| !KEYS.contains(&k.as_str())) {
            bail!("sweep spec {origin}: unknown key {k:?} (expected one of {KEYS:?})");
        }
        let text_of = |k: &str| -> Result<Option<String>> {
            match doc.get(k) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => bail!("sweep spec {origin}: {k} must be a string"),
            }
        };
        let experiment = text_of("experiment")?.unwrap_or_else(|| "sweep".to_string());
        let method = text_of("method")?.unwrap_or_else(|| "grid".to_string());
        let mut base = match text_of("preset")?.as_deref() {
            None | Some("default") => TrialConfig::default(),
            Some("reference") => TrialConfig::reference(),
            Some(other) => {
                bail!("sweep spec {origin}: preset {other:?} (expected default or reference)")
            }
        };
        if let Some(b) = doc.get("base") {
            let t = b
                .as_table()
                .with_context(|| format!("sweep spec {origin}: [base] must be a table"))?;
            base.set_table(t)
                .with_context(|| format!("sweep spec {origin}: [base]"))?;
        }
        let table = |k: &str| -> Result<Option<&toml::Table>> {
            match doc.get(k) {
                None => Ok(None),
                Some(v) => v
                    .as_table()
                    .map(Some)
                    .with_context(|| format!("sweep spec {origin}: [{k}] must be a table")),
            }
        };
        let trials: Vec<Vec<(String, String)>> = match method.as_str() {
            "grid" => {
                if table("random")?.is_some() {
                    bail!("sweep spec {origin}: method \"grid\" takes [grid], not [random]");
                }
                let mut axes: Vec<(String, Vec<String>)> = vec![];
                for (k, v) in table("grid")?.into_iter().flatten() {
                    let values = v.as_array().filter(|a| !a.is_empty()).with_context(|| {
                        format!("sweep spec {origin}: [grid] {k:?} must be a non-empty list")
                    })?;
                    axes.push((k.clone(), values.iter().map(value_text).collect()));
                }
                let mut out: Vec<Vec<(String, String)>> = vec![vec![]];
                for (k, values) in &axes {
                    out = out
                        .into_iter()
                        .flat_map(|prefix| {
                            values.iter().map(move |v| {
                                let mut t = prefix.clone();
                                t.push((k.clone(), v.clone()));
                                t
                            })
                        })
                        .collect();
                }
                out
            }
            "random" => {
                if table("grid")?.is_some() {
                    bail!(
                        "sweep spec {origin}: method \"random\" takes [random] (use {{ choice = [...] }} for lists), not [grid]"
                    );
                }
                let n = match doc.get("trials") {
                    Some(toml::Value::Integer(n)) if *n > 0 => *n as usize,
                    _ => bail!(
                        "sweep spec {origin}: method \"random\" needs trials = N (a positive integer)"
                    ),
                };
                let seed = match doc.get("seed") {
                    None => 0,
                    Some(toml::Value::Integer(s)) if *s >= 0 => *s as u64,
                    _ => bail!("sweep spec {origin}: seed must be an integer >= 0"),
                };
                let draws: Vec<(String, Draw)> = table("random")?
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| Ok((k.clone(), parse_draw(k, v)?)))
                    .collect::<Result<_>>()
                    .with_context(|| format!("sweep spec {origin}"))?;
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                (0..n)
                    .map(|_| {
                        draws
                            .iter()
                            .map(|(k, d)| (k.clone(), d.sample(&mut rng)))
                            .collect()
                    })
                    .collect()
            }
            other => bail!("sweep spec {origin}: method {other:?} (expected grid or random)"),
        };
        if trials.len() > 100_000 {
            bail!(
                "sweep spec {origin}: {} trials; a sweep holds at most 100000",
                trials.len()
            );
        }
        let spec = SweepSpec {
            name: text_of("name")?,
            experiment,
            dataset: text_of("dataset")?,
            base,
            trials,
        };
        for (i, _) in spec.trials.iter().enumerate() {
            spec.trial_config(i)
                .with_context(|| format!("sweep spec {origin}: trial {i}"))?;
        }
        Ok(spec)
    }

    /// The whole configuration of trial `i`.
    pub fn trial_config(&self, i: usize) -> Result<TrialConfig> {
        let mut cfg = self.base.clone();
        for (k, v) in &self.trials[i] {
            cfg.set(k, v).with_context(|| format!("{k} = {v}"))?;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Serialize)]
struct SweepOut<'a> {
    sweep: &'a str,
    sweep_id: Option<String>,
    experiment: &'a str,
    dataset: &'a str,
    trials: Vec<&'a Vec<(String, String)>>,
}

pub fn run(args: &SweepArgs, registry_url: &str) -> Result<()> {
    if let Some(name) = &args.show {
        return show(name, registry_url, args.json);
    }
    let path: &Path = args.spec.as_deref().context("--spec FILE is required")?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading sweep spec {}", path.display()))?;
    let spec = SweepSpec::parse(&text, &path.display().to_string())?;
    let name = args
        .name
        .clone()
        .or_else(|| spec.name.clone())
        .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .context("the sweep needs a name (--name)")?;
    let experiment = args.experiment.clone().unwrap_or(spec.experiment.clone());
    let dataset = args.data.clone().or(spec.dataset.clone()).context(
        "the sweep needs a dataset: `dataset = ...` in the spec, --data or EDGECP_DATASET",
    )?;
    let trials = (0..spec.trials.len())
        .map(|i| {
            Ok(NewTrial {
                overrides: spec.trials[i].clone(),
                config: spec.trial_config(i)?.to_toml_string(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let sweep_id = if args.dry_run {
        None
    } else {
        let reg = BlockingRegistry::open(registry_url)
            .with_context(|| format!("opening the run registry {registry_url}"))?;
        Some(reg.block_on(reg.registry().create_sweep(&NewSweep {
            name: name.clone(),
            experiment: experiment.clone(),
            dataset: dataset.clone(),
            spec: text.clone(),
            trials,
        }))?)
    };
    let out = SweepOut {
        sweep: &name,
        sweep_id,
        experiment: &experiment,
        dataset: &dataset,
        trials: spec.trials.iter().collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "sweep {name}: {} trials in experiment {experiment} on {dataset}{}",
            spec.trials.len(),
            if args.dry_run {
                " (dry run: nothing written)"
            } else {
                ""
            }
        );
        for (i, t) in spec.trials.iter().enumerate() {
            let kv: Vec<String> = t.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("  {i:>4}  {}", kv.join(" "));
        }
        if !args.dry_run {
            println!("run workers with `trainer worker --sweep {name}` on any machine that reaches the registry");
        }
    }
    Ok(())
}

fn show(name: &str, registry_url: &str, json: bool) -> Result<()> {
    let reg = BlockingRegistry::open(registry_url)
        .with_context(|| format!("opening the run registry {registry_url}"))?;
    let id = reg
        .block_on(reg.registry().sweep_id(name))?
        .with_context(|| format!("no sweep named {name:?} in the registry"))?;
    let trials: Vec<TrialRow> = reg.block_on(reg.registry().trials(&id))?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "sweep": name, "sweep_id": id, "trials": trials })
        );
        return Ok(());
    }
    println!(
        "{:>4}  {:<9} {:>3}  {:<34} {:<16}  overrides",
        "#", "status", "try", "run", "model"
    );
    for t in &trials {
        let kv: Vec<String> = t
            .overrides
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "{:>4}  {:<9} {:>3}  {:<34} {:<16}  {}{}",
            t.idx,
            t.status.as_str(),
            t.attempts,
            t.run_id.as_deref().unwrap_or("-"),
            t.model_id
                .as_deref()
                .map_or("-".to_string(), |m| m.chars().take(16).collect()),
            kv.join(" "),
            t.error
                .as_deref()
                .map(|e| format!("  error: {e}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_is_the_cross_product_in_order() {
        let s = SweepSpec::parse(
            "[base]\nepochs = 1\n[grid]\n\"model.embedding_dim\" = [8, 16, 32]\n\"recipe.loss\" = [\"contrastive\", \"batch_hard_triplet\"]\n",
            "t",
        )
        .unwrap();
        assert_eq!(s.trials.len(), 6);
        let dims: Vec<&str> = s.trials.iter().map(|t| t[0].1.as_str()).collect();
        assert_eq!(dims, ["8", "8", "16", "16", "32", "32"]);
        assert_eq!(s.trial_config(5).unwrap().model.embedding_dim, 32);
        assert_eq!(s.trial_config(0).unwrap().epochs, 1);
    }

    #[test]
    fn random_is_reproducible_and_in_range() {
        let text = "method = \"random\"\ntrials = 50\nseed = 7\n[random]\n\"optim.lr\" = { log_uniform = [1e-4, 3e-3] }\n\"recipe.margin\" = { uniform = [0.5, 2.0] }\n\"model.embedding_dim\" = { int = [16, 64] }\n\"recipe.loss\" = { choice = [\"contrastive\", \"batch_hard_triplet\"] }\n";
        let a = SweepSpec::parse(text, "t").unwrap();
        let b = SweepSpec::parse(text, "t").unwrap();
        assert_eq!(a.trials, b.trials);
        assert_eq!(a.trials.len(), 50);
        for i in 0..50 {
            let c = a.trial_config(i).unwrap();
            assert!((1e-4..=3e-3).contains(&c.optim.lr), "{}", c.optim.lr);
            assert!((0.5..=2.0).contains(&c.recipe.margin));
            assert!((16..=64).contains(&c.model.embedding_dim));
        }
        let losses: std::collections::BTreeSet<&str> = a
            .trials
            .iter()
            .flat_map(|t| t.iter().filter(|(k, _)| k == "recipe.loss"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(losses.len(), 2);
        let other = SweepSpec::parse(&text.replace("seed = 7", "seed = 8"), "t").unwrap();
        assert_ne!(a.trials, other.trials);
    }

    #[test]
    fn mistakes_are_named_before_anything_runs() {
        for (text, needle) in [
            ("methd = \"grid\"", "unknown key \"methd\""),
            ("method = \"bayes\"", "method \"bayes\""),
            ("[grid]\n\"model.embedding_dimm\" = [8]", "trial 0"),
            ("[grid]\n\"model.embedding_dim\" = []", "non-empty list"),
            ("[grid]\n\"model.embedding_dim\" = [0]", "trial 0"),
            ("method = \"random\"\n[random]\n\"optim.lr\" = { uniform = [1, 0] }", "trials = N"),
            ("method = \"random\"\ntrials = 2\n[random]\n\"optim.lr\" = { uniform = [1, 0] }", "low <= high"),
            ("method = \"random\"\ntrials = 2\n[random]\n\"optim.lr\" = { normal = [1, 2] }", "unknown distribution"),
            ("method = \"random\"\ntrials = 2\n[random]\n\"optim.lr\" = { log_uniform = [0, 2] }", "> 0"),
            ("[base]\nepochs = \"many\"", "[base]"),
            ("not toml = = 1", "not TOML"),
        ] {
            let e = SweepSpec::parse(text, "spec.toml").unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains(needle), "{text:?}: {msg}");
            assert!(msg.contains("spec.toml"), "{msg}");
        }
    }
}
