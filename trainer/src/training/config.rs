//! Trial configuration: one TOML document per training trial, overridable key by key.
//!
//! Every struct denies unknown fields, so a typo in a TOML file is an error naming the key.
//! [`TrialConfig::set`] overrides one value by its dotted path (`optim.lr=0.001`), which is
//! what environment variables (`EDGECP_TRAIN__OPTIM__LR`) and `--set` flags map onto; see
//! [`TrialConfig::apply_env`].

use serde::{Deserialize, Serialize};

/// A configuration error; every variant names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: cannot parse TOML: {0}")]
    Parse(String),
    #[error("configuration: unknown key `{key}`")]
    UnknownKey { key: String },
    #[error("configuration: bad value {value:?} for `{key}`: {reason}")]
    BadValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error("configuration: `{key}` {reason}")]
    Invalid { key: String, reason: String },
    #[error("configuration: override {0:?} is not KEY=VALUE")]
    NotAnAssignment(String),
}

/// The loss a trial trains with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Siamese contrastive loss on balanced positive / negative pairs (the reference).
    Contrastive,
    /// Batch-hard triplet loss on class-balanced P x K batches.
    BatchHardTriplet,
}

/// Learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Constant,
    /// Linear warm-up over `warmup_steps`, then cosine decay to 0 at the last step.
    Cosine,
}

/// Validation metric watched by early stopping and used to pick the best weights
/// (both: higher is better).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopMetric {
    ValidationNcAccuracy,
    ValidationSilhouette,
}

impl StopMetric {
    pub fn name(self) -> &'static str {
        match self {
            StopMetric::ValidationNcAccuracy => "validation_nc_accuracy",
            StopMetric::ValidationSilhouette => "validation_silhouette",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Embedding dimension E (the output of the dense layer).
    pub embedding_dim: usize,
    /// Batch normalisation after each convolution.
    pub batch_norm: bool,
    /// Dropout probability after each max-pool (training only).
    pub dropout: f64,
    /// L2-normalise the embedding.
    pub l2_normalize: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            embedding_dim: 128,
            batch_norm: true,
            dropout: 0.1,
            l2_normalize: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecipeConfig {
    pub loss: LossKind,
    /// Contrastive: negatives are pushed beyond this distance. Triplet: the margin between
    /// the hardest positive and the hardest negative distance.
    pub margin: f64,
    /// Triplet: classes per batch (P).
    pub p_classes: usize,
    /// Triplet: images per class in a batch (K).
    pub k_per_class: usize,
    /// Contrastive: pairs per step, half positive, half negative.
    pub batch_pairs: usize,
    /// Light photometric jitter (brightness, contrast) and small shifts. Off by default:
    /// on GTSRB it slowed learning within a training budget (nearest-centroid accuracy
    /// 0.52 with it vs 0.75 without after 400 steps; 0.72 vs 0.96 after 1,000 steps with
    /// brightness as a gain; 2026-11-25).
    pub augment: bool,
}

impl Default for RecipeConfig {
    fn default() -> Self {
        RecipeConfig {
            loss: LossKind::BatchHardTriplet,
            margin: 0.2,
            p_classes: 16,
            k_per_class: 4,
            batch_pairs: 32,
            augment: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate of AdamW.
    pub lr: f64,
    /// Decoupled weight decay of AdamW.
    pub weight_decay: f64,
    pub schedule: ScheduleKind,
    /// Linear warm-up steps of the cosine schedule.
    pub warmup_steps: usize,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 1e-3,
            weight_decay: 1e-4,
            schedule: ScheduleKind::Cosine,
            warmup_steps: 50,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EarlyStoppingConfig {
    pub metric: StopMetric,
    /// Evaluations without an improvement of at least `min_delta` before stopping;
    /// 0 disables early stopping.
    pub patience: usize,
    pub min_delta: f64,
}

impl Default for EarlyStoppingConfig {
    fn default() -> Self {
        EarlyStoppingConfig {
            metric: StopMetric::ValidationNcAccuracy,
            patience: 5,
            min_delta: 1e-3,
        }
    }
}

/// One training trial.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrialConfig {
    pub model: ModelConfig,
    pub recipe: RecipeConfig,
    pub optim: OptimConfig,
    pub epochs: usize,
    pub steps_per_epoch: usize,
    /// Write a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    pub early_stopping: EarlyStoppingConfig,
    /// Evaluate on the validation split every this many steps (0: only at the end).
    pub eval_every: usize,
    /// Training images per class embedded for the centroids of an evaluation (0: all).
    pub eval_train_per_class: usize,
    /// Everything random (init, sampling, augmentation, dropout) derives from this.
    pub seed: u64,
    /// Worker threads of the training thread pool (0: the current pool). candle sizes its
    /// matrix products from RAYON_NUM_THREADS, so the binary should set that variable to
    /// the same number before any work starts. Same seed + same threads -> same weights.
    pub threads: usize,
}

impl Default for TrialConfig {
    /// The stronger recipe: batch-hard triplet on P x K batches, batch norm, L2-normalised
    /// embeddings, cosine schedule (augmentation available, off by default).
    fn default() -> Self {
        TrialConfig {
            model: ModelConfig::default(),
            recipe: RecipeConfig::default(),
            optim: OptimConfig::default(),
            epochs: 10,
            steps_per_epoch: 200,
            checkpoint_every: 200,
            early_stopping: EarlyStoppingConfig::default(),
            eval_every: 200,
            eval_train_per_class: 30,
            seed: 0,
            threads: 0,
        }
    }
}

/// Keys accepted by [`TrialConfig::set`].
pub const KEYS: &[&str] = &[
    "model.embedding_dim",
    "model.batch_norm",
    "model.dropout",
    "model.l2_normalize",
    "recipe.loss",
    "recipe.margin",
    "recipe.p_classes",
    "recipe.k_per_class",
    "recipe.batch_pairs",
    "recipe.augment",
    "optim.lr",
    "optim.weight_decay",
    "optim.schedule",
    "optim.warmup_steps",
    "epochs",
    "steps_per_epoch",
    "checkpoint_every",
    "early_stopping.metric",
    "early_stopping.patience",
    "early_stopping.min_delta",
    "eval_every",
    "eval_train_per_class",
    "seed",
    "threads",
];

fn bad(key: &str, value: &str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn parse_num<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    value.trim().parse::<T>().map_err(|e| bad(key, value, e))
}

fn parse_enum<T: for<'de> Deserialize<'de>>(key: &str, value: &str) -> Result<T, ConfigError> {
    let v = value.trim().trim_matches('"');
    T::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(v))
        .map_err(|e| bad(key, value, e))
}

impl TrialConfig {
    /// The reference pipeline's recipe: contrastive loss with margin 5 on balanced pairs
    /// (32 pairs per step), no batch norm, dropout 0.25, unnormalised embeddings, constant
    /// learning rate, no augmentation.
    pub fn reference() -> Self {
        TrialConfig {
            model: ModelConfig {
                embedding_dim: 128,
                batch_norm: false,
                dropout: 0.25,
                l2_normalize: false,
            },
            recipe: RecipeConfig {
                loss: LossKind::Contrastive,
                margin: 5.0,
                p_classes: 16,
                k_per_class: 4,
                batch_pairs: 32,
                augment: false,
            },
            optim: OptimConfig {
                lr: 1e-3,
                weight_decay: 0.0,
                schedule: ScheduleKind::Constant,
                warmup_steps: 0,
            },
            ..TrialConfig::default()
        }
    }

    /// Parses a TOML document (missing keys take the defaults of the stronger recipe) and
    /// validates it.
    pub fn from_toml_str(s: &str) -> Result<Self, ConfigError> {
        let table: toml::Table =
            toml::from_str(s).map_err(|e| ConfigError::Parse(e.to_string()))?;
        // Name unknown keys by their full dotted path before serde sees them.
        fn walk(prefix: &str, t: &toml::Table) -> Result<(), ConfigError> {
            for (k, v) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    toml::Value::Table(sub)
                        if KEYS.iter().any(|key| key.starts_with(&format!("{path}."))) =>
                    {
                        walk(&path, sub)?
                    }
                    _ if KEYS.contains(&path.as_str()) => {}
                    _ => return Err(ConfigError::UnknownKey { key: path }),
                }
            }
            Ok(())
        }
        walk("", &table)?;
        let cfg = TrialConfig::deserialize(table).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Applies every leaf of a TOML table as `set(path, value)` (a sweep's base, a file
    /// over the reference recipe).
    pub fn set_table(&mut self, table: &toml::Table) -> Result<(), ConfigError> {
        for (k, v) in toml_leaves(table) {
            self.set(&k, &v)?;
        }
        Ok(())
    }

    /// Serialises to TOML (round-trips through [`TrialConfig::from_toml_str`]).
    pub fn to_toml_string(&self) -> String {
        toml::to_string(self).expect("a TrialConfig always serialises")
    }

    /// Sets one value by its dotted key path, e.g. `set("optim.lr", "0.001")`; then
    /// validates the whole configuration.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let k = key.trim();
        match k {
            "model.embedding_dim" => self.model.embedding_dim = parse_num(k, value)?,
            "model.batch_norm" => self.model.batch_norm = parse_num(k, value)?,
            "model.dropout" => self.model.dropout = parse_num(k, value)?,
            "model.l2_normalize" => self.model.l2_normalize = parse_num(k, value)?,
            "recipe.loss" => self.recipe.loss = parse_enum(k, value)?,
            "recipe.margin" => self.recipe.margin = parse_num(k, value)?,
            "recipe.p_classes" => self.recipe.p_classes = parse_num(k, value)?,
            "recipe.k_per_class" => self.recipe.k_per_class = parse_num(k, value)?,
            "recipe.batch_pairs" => self.recipe.batch_pairs = parse_num(k, value)?,
            "recipe.augment" => self.recipe.augment = parse_num(k, value)?,
            "optim.lr" => self.optim.lr = parse_num(k, value)?,
            "optim.weight_decay" => self.optim.weight_decay = parse_num(k, value)?,
            "optim.schedule" => self.optim.schedule = parse_enum(k, value)?,
            "optim.warmup_steps" => self.optim.warmup_steps = parse_num(k, value)?,
            "epochs" => self.epochs = parse_num(k, value)?,
            "steps_per_epoch" => self.steps_per_epoch = parse_num(k, value)?,
            "checkpoint_every" => self.checkpoint_every = parse_num(k, value)?,
            "early_stopping.metric" => self.early_stopping.metric = parse_enum(k, value)?,
            "early_stopping.patience" => self.early_stopping.patience = parse_num(k, value)?,
            "early_stopping.min_delta" => self.early_stopping.min_delta = parse_num(k, value)?,
            "eval_every" => self.eval_every = parse_num(k, value)?,
            "eval_train_per_class" => self.eval_train_per_class = parse_num(k, value)?,
            "seed" => self.seed = parse_num(k, value)?,
            "threads" => self.threads = parse_num(k, value)?,
            _ => return Err(ConfigError::UnknownKey { key: k.to_string() }),
        }
        self.validate()
    }

    /// Applies one `KEY=VALUE` override (a `--set` flag).
    pub fn set_assignment(&mut self, assignment: &str) -> Result<(), ConfigError> {
        let (k, v) = assignment
            .split_once('=')
            .ok_or_else(|| ConfigError::NotAnAssignment(assignment.to_string()))?;
        self.set(k, v)
    }

    /// Applies overrides from environment variables `{prefix}SECTION__KEY` (for example
    /// `EDGECP_TRAIN__OPTIM__LR=0.001` with prefix `EDGECP_TRAIN__`): the rest of the name,
    /// lower-cased, with `__` as the separator, is the key path. Variables are applied in
    /// sorted order; an unknown key is an error naming it.
    pub fn apply_env<I>(&mut self, prefix: &str, vars: I) -> Result<(), ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut found: Vec<(String, String)> = vars
            .into_iter()
            .filter_map(|(name, value)| {
                name.strip_prefix(prefix)
                    .map(|rest| (rest.to_lowercase().replace("__", "."), value))
            })
            .collect();
        found.sort();
        for (key, value) in found {
            self.set(&key, &value)?;
        }
        Ok(())
    }

    /// Checks the ranges of all values; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(key: &str, reason: &str) -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                key: key.to_string(),
                reason: reason.to_string(),
            })
        }
        let m = &self.model;
        if m.embedding_dim == 0 {
            return invalid("model.embedding_dim", "must be at least 1");
        }
        if !(0.0..1.0).contains(&m.dropout) {
            return invalid("model.dropout", "must be within [0, 1)");
        }
        let r = &self.recipe;
        if !(r.margin.is_finite() && r.margin > 0.0) {
            return invalid("recipe.margin", "must be a finite number > 0");
        }
        if r.p_classes < 2 {
            return invalid("recipe.p_classes", "must be at least 2");
        }
        if r.k_per_class < 2 {
            return invalid("recipe.k_per_class", "must be at least 2");
        }
        if r.batch_pairs < 2 {
            return invalid("recipe.batch_pairs", "must be at least 2");
        }
        let o = &self.optim;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return invalid("optim.lr", "must be a finite number > 0");
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return invalid("optim.weight_decay", "must be a finite number >= 0");
        }
        if self.epochs == 0 {
            return invalid("epochs", "must be at least 1");
        }
        if self.steps_per_epoch == 0 {
            return invalid("steps_per_epoch", "must be at least 1");
        }
        let e = &self.early_stopping;
        if !(e.min_delta.is_finite() && e.min_delta >= 0.0) {
            return invalid("early_stopping.min_delta", "must be a finite number >= 0");
        }
        if self.threads > 1024 {
            return invalid("threads", "must be at most 1024");
        }
        Ok(())
    }

    /// Total optimisation steps.
    pub fn total_steps(&self) -> usize {
        self.epochs * self.steps_per_epoch
    }

    /// Images in one training batch.
    pub fn batch_images(&self) -> usize {
        match self.recipe.loss {
            LossKind::Contrastive => 2 * self.recipe.batch_pairs,
            LossKind::BatchHardTriplet => self.recipe.p_classes * self.recipe.k_per_class,
        }
    }

    /// Learning rate at (0-based) `step`.
    pub fn lr_at(&self, step: usize) -> f64 {
        let o = &self.optim;
        match o.schedule {
            ScheduleKind::Constant => o.lr,
            ScheduleKind::Cosine => {
                if step < o.warmup_steps {
                    return o.lr * (step + 1) as f64 / o.warmup_steps as f64;
                }
                let total = self.total_steps().saturating_sub(o.warmup_steps).max(1);
                let t = (step - o.warmup_steps) as f64 / total as f64;
                0.5 * o.lr * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
            }
        }
    }
}

/// The leaves of a TOML table as `(dotted.path, value)`: strings unquoted, other values as
/// TOML writes them. The form `--set`, MLflow params and sweep specs share.
pub fn toml_leaves(table: &toml::Table) -> Vec<(String, String)> {
    fn walk(prefix: &str, t: &toml::Table, out: &mut Vec<(String, String)>) {
        for (k, v) in t {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(inner) => walk(&key, inner, out),
                toml::Value::String(s) => out.push((key, s.clone())),
                other => out.push((key, other.to_string())),
            }
        }
    }
    let mut out = vec![];
    walk("", table, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_reference_validate_and_round_trip() {
        for cfg in [TrialConfig::default(), TrialConfig::reference()] {
            cfg.validate().unwrap();
            let back = TrialConfig::from_toml_str(&cfg.to_toml_string()).unwrap();
            assert_eq!(back, cfg);
        }
        assert_eq!(TrialConfig::reference().recipe.margin, 5.0);
        assert_eq!(
            TrialConfig::default().recipe.loss,
            LossKind::BatchHardTriplet
        );
    }

    #[test]
    fn toml_partial_and_unknown_keys() {
        let cfg = TrialConfig::from_toml_str(
            "epochs = 3\n[recipe]\nloss = \"contrastive\"\nmargin = 5.0\n",
        )
        .unwrap();
        assert_eq!(cfg.epochs, 3);
        assert_eq!(cfg.recipe.loss, LossKind::Contrastive);
        let e = TrialConfig::from_toml_str("[optim]\nlearning_rate = 0.1\n").unwrap_err();
        assert!(e.to_string().contains("`optim.learning_rate`"), "{e}");
        let e = TrialConfig::from_toml_str("[optim]\nlr = -1.0\n").unwrap_err();
        assert!(e.to_string().contains("optim.lr"), "{e}");
        let e = TrialConfig::from_toml_str("[recipe]\nloss = \"hinge\"\n").unwrap_err();
        assert!(e.to_string().contains("hinge"), "{e}");
        let e = TrialConfig::from_toml_str("[optim]\nlr = \"fast\"\n").unwrap_err();
        assert!(e.to_string().contains("lr"), "{e}");
        let e = TrialConfig::from_toml_str("[modle]\nbatch_norm = true\n").unwrap_err();
        assert!(e.to_string().contains("modle"), "{e}");
    }

    #[test]
    fn set_overrides_and_names_the_key_on_errors() {
        let mut cfg = TrialConfig::default();
        cfg.set("recipe.loss", "contrastive").unwrap();
        cfg.set("optim.lr", "0.0005").unwrap();
        cfg.set_assignment("model.batch_norm=false").unwrap();
        assert_eq!(cfg.recipe.loss, LossKind::Contrastive);
        assert_eq!(cfg.optim.lr, 0.0005);
        assert!(!cfg.model.batch_norm);

        let e = cfg.set("optim.learning_rate", "0.1").unwrap_err();
        assert!(matches!(e, ConfigError::UnknownKey { .. }));
        assert!(e.to_string().contains("optim.learning_rate"), "{e}");
        let e = cfg.set("optim.lr", "fast").unwrap_err();
        assert!(matches!(e, ConfigError::BadValue { .. }));
        assert!(e.to_string().contains("optim.lr"), "{e}");
        let e = cfg.set("optim.lr", "0").unwrap_err();
        assert!(e.to_string().contains("optim.lr"), "{e}");
        let e = cfg.set("recipe.loss", "hinge").unwrap_err();
        assert!(e.to_string().contains("recipe.loss"), "{e}");
        let e = cfg.set("model.embedding_dim", "0").unwrap_err();
        assert!(e.to_string().contains("model.embedding_dim"), "{e}");
        assert!(cfg.set_assignment("seed").is_err());
        for key in KEYS {
            let err = cfg.set(key, "not-a-value");
            assert!(err.is_err(), "{key}");
            assert!(err.unwrap_err().to_string().contains(key));
        }
    }

    #[test]
    fn env_overrides() {
        let mut cfg = TrialConfig::default();
        cfg.apply_env(
            "EDGECP_TRAIN__",
            vec![
                ("EDGECP_TRAIN__OPTIM__LR".to_string(), "0.01".to_string()),
                ("EDGECP_TRAIN__EPOCHS".to_string(), "2".to_string()),
                ("PATH".to_string(), "/bin".to_string()),
            ],
        )
        .unwrap();
        assert_eq!(cfg.optim.lr, 0.01);
        assert_eq!(cfg.epochs, 2);
        let e = cfg
            .apply_env(
                "EDGECP_TRAIN__",
                vec![("EDGECP_TRAIN__OPTIM__LRR".to_string(), "1".to_string())],
            )
            .unwrap_err();
        assert!(e.to_string().contains("optim.lrr"), "{e}");
    }

    #[test]
    fn cosine_schedule_warms_up_and_decays() {
        let mut cfg = TrialConfig {
            epochs: 1,
            steps_per_epoch: 110,
            ..TrialConfig::default()
        };
        cfg.optim.warmup_steps = 10;
        assert!(cfg.lr_at(0) < cfg.lr_at(9));
        assert!((cfg.lr_at(9) - cfg.optim.lr).abs() < 1e-12);
        assert!((cfg.lr_at(10) - cfg.optim.lr).abs() < 1e-12);
        assert!(cfg.lr_at(109) < 0.01 * cfg.optim.lr);
    }
}
