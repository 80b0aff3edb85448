//! Adaptive calibration from labels (opt-in: `--adaptive aci`): adaptive conformal
//! inference (`shared::icp::Aci`, Gibbs and Candès 2021) per requested epsilon.
//!
//! Each answer's set is cut at the working level `alpha_t` of its epsilon instead of at
//! epsilon itself; each label that comes back through `/v1/feedback` moves that level by
//! `gamma (epsilon - err)`. Guarantee, for ANY sequence of inputs and labels (shifted,
//! adversarial, not exchangeable): over the T labelled answers of one epsilon,
//! `|error rate - epsilon| <= (max(epsilon, 1 - epsilon) + gamma (1 + D)) / (gamma T)`,
//! D the most labels outstanding at once. It is a long-run, labelled-answers-only promise:
//! answers that never get a label do not count, and if labels come back selectively (only
//! for errors, say), the promise is about that selection. No per-answer guarantee.
//!
//! The state is saved (write, fsync, rename) after every label when a state file is set
//! (`edge-agent run`: `<data_dir>/aci.json`), restored at start for the same model, and
//! started afresh, and saved so, when another model is activated (a rollback to an older
//! model starts afresh too).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use shared::icp::Aci;

/// At most this many distinct epsilons get a level each; requests at other epsilons are
/// answered at their epsilon (static) and say so (no `level`).
pub const MAX_LEVELS: usize = 16;

const VERSION: u32 = 1;

/// Whether answers are cut at adaptive levels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AdaptiveMode {
    /// Static calibration: every set is cut at its epsilon.
    #[default]
    Off,
    /// Adaptive conformal inference: labels from /v1/feedback move each epsilon's level.
    Aci,
}

/// The default ACI step size: small enough that sets vary little on exchangeable data,
/// large enough to follow a shift within a few hundred labels.
pub const DEFAULT_GAMMA: f64 = 0.005;

/// Settings of the adaptive mode.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptiveConfig {
    /// ACI step size, in (0, 1].
    pub gamma: f64,
    /// Where the state is kept across restarts (`None`: memory only).
    pub state_file: Option<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    version: u32,
    model_id: String,
    levels: Vec<Aci>,
}

/// The figures of one epsilon's level.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LevelSnapshot {
    pub epsilon: f64,
    pub gamma: f64,
    /// Sets are `{y : p_y > level}` now.
    pub level: f64,
    pub labels: u64,
    pub errors: u64,
    pub error_rate: f64,
    /// The most `|error rate - epsilon|` ACI allows after these labels, for any sequence.
    pub bound: Option<f64>,
}

/// The adaptive levels of one model.
#[derive(Debug)]
pub struct Adaptive {
    model_id: String,
    cfg: AdaptiveConfig,
    levels: Mutex<Vec<Aci>>,
}

fn read(path: &Path) -> Result<Saved, String> {
    // the size first: a damaged or planted file is never read whole into memory
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len > 1 << 20 {
        return Err(format!("{len} bytes, more than any saved state"));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let s: Saved = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if s.version != VERSION {
        return Err(format!("version {}, expected {VERSION}", s.version));
    }
    let in_range = |a: &Aci| {
        a.epsilon > 0.0
            && a.epsilon < 1.0
            && a.gamma > 0.0
            && a.gamma <= 1.0
            && a.alpha.is_finite()
            && a.errors <= a.labels
    };
    if s.levels.len() > MAX_LEVELS || !s.levels.iter().all(in_range) {
        return Err("levels out of range".into());
    }
    Ok(s)
}

fn write(path: &Path, s: &Saved) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(s).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

impl Adaptive {
    /// The levels of `model_id`: restored from the state file when it holds this model's
    /// (with the same gamma), else fresh (and the file says so at once).
    pub fn load(model_id: &str, cfg: AdaptiveConfig) -> Adaptive {
        let mut levels = vec![];
        if let Some(path) = &cfg.state_file {
            match read(path) {
                Ok(s) if s.model_id == model_id => {
                    levels = s
                        .levels
                        .into_iter()
                        .filter(|a| a.gamma == cfg.gamma)
                        .collect();
                    tracing::info!(model_id, levels = levels.len(), file = %path.display(), "adaptive calibration: state restored");
                }
                Ok(s) => {
                    tracing::info!(model_id, previous = %s.model_id, "adaptive calibration: another model is active, its levels start afresh")
                }
                Err(e) if path.exists() => {
                    tracing::warn!(file = %path.display(), error = %e, "adaptive calibration: saved state unreadable, starting afresh")
                }
                Err(_) => {}
            }
        }
        let a = Adaptive {
            model_id: model_id.to_string(),
            cfg,
            levels: Mutex::new(levels),
        };
        a.save(&a.lock());
        a
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Aci>> {
        match self.levels.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    fn save(&self, levels: &[Aci]) {
        let Some(path) = &self.cfg.state_file else {
            return;
        };
        let s = Saved {
            version: VERSION,
            model_id: self.model_id.clone(),
            levels: levels.to_vec(),
        };
        if let Err(e) = write(path, &s) {
            tracing::warn!(file = %path.display(), error = %e, "adaptive calibration: state not saved");
        }
    }

    /// The level to cut a set at for target `epsilon`; `None` when `epsilon` gets no
    /// level (outside (0, 1), or [`MAX_LEVELS`] others have one): answer at epsilon.
    pub fn level(&self, epsilon: f64) -> Option<f64> {
        let mut levels = self.lock();
        if let Some(a) = levels.iter().find(|a| a.epsilon == epsilon) {
            return Some(a.level());
        }
        if levels.len() >= MAX_LEVELS {
            return None;
        }
        let a = Aci::new(epsilon, self.cfg.gamma).ok()?;
        let level = a.level();
        levels.push(a);
        Some(level)
    }

    /// A label for an answer made at target `epsilon`: `err` whether its set missed it,
    /// `outstanding` how many answers still wait for labels. Saves the state.
    pub fn update(&self, epsilon: f64, err: bool, outstanding: u64) {
        let mut levels = self.lock();
        let Some(a) = levels.iter_mut().find(|a| a.epsilon == epsilon) else {
            return;
        };
        a.update(err, outstanding);
        self.save(&levels);
    }

    pub fn snapshot(&self) -> Vec<LevelSnapshot> {
        self.lock()
            .iter()
            .map(|a| LevelSnapshot {
                epsilon: a.epsilon,
                gamma: a.gamma,
                level: a.level(),
                labels: a.labels,
                errors: a.errors,
                error_rate: a.error_rate(),
                bound: a.bound().is_finite().then(|| a.bound()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(file: Option<PathBuf>) -> AdaptiveConfig {
        AdaptiveConfig {
            gamma: 0.05,
            state_file: file,
        }
    }

    #[test]
    fn levels_move_with_errors_and_survive_a_restart_of_the_same_model_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("aci.json");
        let a = Adaptive::load("m1", cfg(Some(file.clone())));
        assert_eq!(a.level(0.1), Some(0.1));
        a.update(0.1, true, 0);
        let after_error = a.level(0.1).unwrap();
        assert!((after_error - (0.1 + 0.05 * (0.1 - 1.0))).abs() < 1e-12);
        a.update(0.1, false, 3);
        let level = a.level(0.1).unwrap();
        // a restart with the same model keeps the level and the counts
        let b = Adaptive::load("m1", cfg(Some(file.clone())));
        assert_eq!(b.level(0.1), Some(level));
        let s = b.snapshot();
        assert_eq!((s[0].labels, s[0].errors), (2, 1));
        assert!(s[0].bound.unwrap() > 0.0);
        // another model starts afresh, and so does the first one after it
        let c = Adaptive::load("m2", cfg(Some(file.clone())));
        assert_eq!(c.level(0.1), Some(0.1));
        let d = Adaptive::load("m1", cfg(Some(file.clone())));
        assert!(d.snapshot().is_empty());
        // a changed gamma starts afresh too
        let e = Adaptive::load(
            "m1",
            AdaptiveConfig {
                gamma: 0.01,
                state_file: Some(file),
            },
        );
        assert_eq!(e.level(0.1), Some(0.1));
    }

    #[test]
    fn damaged_state_files_start_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("aci.json");
        for bad in [
            "not json".to_string(),
            r#"{"version":1,"model_id":"m","levels":[{"epsilon":7,"gamma":0.05,"alpha":0.1,"labels":1,"errors":0}]}"#.into(),
            r#"{"version":1,"model_id":"m","levels":[{"epsilon":0.1,"gamma":0.05,"alpha":0.1,"labels":1,"errors":5}]}"#.into(),
            r#"{"version":9,"model_id":"m","levels":[]}"#.into(),
            "x".repeat(2 << 20),
        ] {
            std::fs::write(&file, &bad).unwrap();
            let a = Adaptive::load("m", cfg(Some(file.clone())));
            assert!(a.snapshot().is_empty(), "{}", &bad[..bad.len().min(80)]);
            // and it was replaced by a valid one
            assert!(read(&file).is_ok());
        }
    }

    #[test]
    fn epsilons_are_bounded_and_invalid_ones_stay_static() {
        let a = Adaptive::load("m", cfg(None));
        assert_eq!(a.level(0.0), None);
        assert_eq!(a.level(1.0), None);
        for i in 0..MAX_LEVELS {
            assert!(a.level(0.01 + i as f64 * 0.01).is_some());
        }
        assert_eq!(a.level(0.5), None, "one level more than the cap");
        // a label for an epsilon without a level changes nothing
        a.update(0.5, true, 0);
        assert!(a.snapshot().iter().all(|s| s.labels == 0));
    }
}
