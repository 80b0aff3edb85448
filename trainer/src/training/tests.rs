//! Tests of the training loop on tiny synthetic data: learning, reproducibility, resume
//! (in-process interruption and SIGKILL of a child process).

use super::config::ScheduleKind;
use super::*;
use shared::data::synthetic::{generate, SyntheticSpec};

/// Synthetic 16x16 signs of the first `classes` classes: (train, validation), split by track.
fn data(classes: u16, tracks: usize, frames: usize) -> (ImageSet, ImageSet) {
    let spec = SyntheticSpec {
        side: 16,
        tracks_per_class: tracks,
        frames_per_track: frames,
        seed: 7,
    };
    let all = generate(&spec, &()).unwrap();
    let keep: Vec<usize> = (0..all.len())
        .filter(|&i| all.labels[i] < classes)
        .collect();
    let all = all.select(&keep);
    // the last track of every class is validation
    let last = format!("{:05}", tracks - 1);
    let (val, tr): (Vec<usize>, Vec<usize>) =
        (0..all.len()).partition(|&i| all.tracks[i].ends_with(&last));
    (all.select(&tr), all.select(&val))
}

fn tiny_config() -> TrialConfig {
    let mut cfg = TrialConfig::default();
    cfg.model.embedding_dim = 16;
    cfg.model.dropout = 0.1;
    cfg.recipe.p_classes = 6;
    cfg.recipe.k_per_class = 4;
    cfg.recipe.batch_pairs = 12;
    cfg.optim.lr = 3e-3;
    cfg.optim.warmup_steps = 2;
    cfg.epochs = 2;
    cfg.steps_per_epoch = 5;
    cfg.checkpoint_every = 3;
    cfg.eval_every = 4;
    cfg.eval_train_per_class = 10;
    cfg.early_stopping.patience = 0;
    cfg.seed = 11;
    cfg.threads = 1;
    cfg
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn smoke_loss_falls_and_validation_silhouette_rises() {
    let (tr, val) = data(8, 4, 6);
    let mut cfg = tiny_config();
    cfg.model.dropout = 0.0;
    cfg.recipe.augment = false;
    cfg.recipe.p_classes = 8;
    cfg.epochs = 1;
    cfg.steps_per_epoch = 40;
    cfg.eval_every = 20;
    cfg.optim.warmup_steps = 5;
    let dev = device().unwrap();
    let init = Backbone::new(
        Arch::new(16, &cfg.model).unwrap(),
        &dev,
        &mut rng_for(cfg.seed, None),
    )
    .unwrap();
    let before = evaluate(&init, &tr, &val, cfg.eval_train_per_class, 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = train(&cfg, &tr, Some(&val), dir.path(), false, &mut NoObserver).unwrap();
    assert_eq!(out.steps, 40);
    let first: f64 = out.losses[..10].iter().sum::<f64>() / 10.0;
    let last: f64 = out.losses[30..].iter().sum::<f64>() / 10.0;
    assert!(last < first, "loss did not fall: {first} -> {last}");
    let after = out.evaluations.last().unwrap();
    assert!(
        after.silhouette > before.silhouette,
        "silhouette did not rise: {} -> {}",
        before.silhouette,
        after.silhouette
    );
    assert_eq!(out.weights_path, dir.path().join(WEIGHTS_FILE));
    let reloaded = Backbone::load(&out.weights_path, &dev).unwrap();
    assert_eq!(
        embed(&reloaded, &val, 64).unwrap(),
        embed(&out.model, &val, 64).unwrap()
    );
    let best = out.best.unwrap();
    assert_eq!(out.chosen_step, best.step);
    eprintln!(
        "smoke: loss {first:.3} -> {last:.3}, silhouette {:.3} -> {:.3}, nc accuracy {:.3} -> {:.3}, {:.0} images/s",
        before.silhouette, after.silhouette, before.nc_accuracy, after.nc_accuracy, out.images_per_sec
    );
}

#[test]
fn same_seed_same_threads_gives_identical_weights() {
    let (tr, val) = data(6, 2, 4);
    for loss in [LossKind::BatchHardTriplet, LossKind::Contrastive] {
        let mut cfg = tiny_config();
        cfg.recipe.loss = loss;
        cfg.epochs = 1;
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        train(&cfg, &tr, Some(&val), d1.path(), false, &mut NoObserver).unwrap();
        train(&cfg, &tr, Some(&val), d2.path(), false, &mut NoObserver).unwrap();
        assert_eq!(
            bytes(&d1.path().join(WEIGHTS_FILE)),
            bytes(&d2.path().join(WEIGHTS_FILE))
        );
        assert_eq!(
            bytes(&d1.path().join(CHECKPOINT_FILE)),
            bytes(&d2.path().join(CHECKPOINT_FILE))
        );
        cfg.seed += 1;
        let d3 = tempfile::tempdir().unwrap();
        train(&cfg, &tr, Some(&val), d3.path(), false, &mut NoObserver).unwrap();
        assert_ne!(
            bytes(&d1.path().join(WEIGHTS_FILE)),
            bytes(&d3.path().join(WEIGHTS_FILE))
        );
    }
}

/// Panics after a given step, like a crash mid-epoch.
struct CrashAt(usize);
impl TrainObserver for CrashAt {
    fn progress(&mut self, p: &StepProgress) {
        if p.step == self.0 {
            panic!("simulated crash at step {}", p.step);
        }
    }
}

#[derive(Default)]
struct Recorder {
    metrics: Vec<(usize, String, f64)>,
    progress: Vec<StepProgress>,
    checkpoints: usize,
}
impl TrainObserver for Recorder {
    fn progress(&mut self, p: &StepProgress) {
        self.progress.push(p.clone());
    }
    fn metric(&mut self, step: usize, _epoch: usize, name: &str, value: f64) {
        self.metrics.push((step, name.to_string(), value));
    }
    fn checkpoint(&mut self, _step: usize, _path: &Path) {
        self.checkpoints += 1;
    }
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let (tr, val) = data(6, 2, 4);
    let cfg = tiny_config();
    let full = tempfile::tempdir().unwrap();
    let mut rec = Recorder::default();
    let a = train(&cfg, &tr, Some(&val), full.path(), false, &mut rec).unwrap();
    assert_eq!(a.steps, 10);
    assert!(rec.checkpoints >= 3);
    assert!(rec.metrics.iter().any(|m| m.1 == "validation_nc_accuracy"));
    assert!(rec.metrics.iter().any(|m| m.1 == "epoch_loss" && m.0 == 5));
    assert_eq!(rec.progress.len(), 10);
    let p = rec.progress.last().unwrap();
    assert_eq!((p.step, p.total_steps, p.epoch, p.epochs), (10, 10, 1, 2));
    assert!(p.loss.is_finite() && p.lr > 0.0 && p.images_per_sec > 0.0);
    assert_eq!(a.total_steps, 10);
    assert!(a.seconds > 0.0);

    let cut = tempfile::tempdir().unwrap();
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        train(&cfg, &tr, Some(&val), cut.path(), false, &mut CrashAt(8))
    }));
    assert!(crashed.is_err());
    let b = train(&cfg, &tr, Some(&val), cut.path(), true, &mut NoObserver).unwrap();
    assert_eq!(b.resumed_at, 6);
    assert_eq!(b.steps, 10);
    assert_eq!(b.evaluations, a.evaluations);
    assert_eq!(
        bytes(&full.path().join(WEIGHTS_FILE)),
        bytes(&cut.path().join(WEIGHTS_FILE))
    );

    // resuming a finished run returns at once with the same result
    let c = train(&cfg, &tr, Some(&val), cut.path(), true, &mut NoObserver).unwrap();
    assert_eq!(c.resumed_at, 10);
    assert!(c.losses.is_empty());
    assert_eq!(
        bytes(&full.path().join(WEIGHTS_FILE)),
        bytes(&cut.path().join(WEIGHTS_FILE))
    );

    // a different configuration refuses to resume
    let mut other = cfg.clone();
    other.optim.lr = 1e-2;
    let e = train(&other, &tr, Some(&val), cut.path(), true, &mut NoObserver).unwrap_err();
    assert!(e.to_string().contains("different configuration"), "{e}");
}

#[test]
fn early_stopping_stops_and_keeps_the_best_weights() {
    let (tr, val) = data(6, 2, 4);
    let mut cfg = tiny_config();
    cfg.optim.lr = 1e-9; // nothing improves
    cfg.optim.schedule = ScheduleKind::Constant;
    cfg.epochs = 4;
    cfg.eval_every = 2;
    cfg.early_stopping.patience = 2;
    cfg.early_stopping.min_delta = 0.5;
    let dir = tempfile::tempdir().unwrap();
    let out = train(&cfg, &tr, Some(&val), dir.path(), false, &mut NoObserver).unwrap();
    assert!(out.stopped_early);
    assert_eq!(out.steps, 6);
    assert_eq!(out.chosen_step, 2);
    assert_eq!(
        bytes(&dir.path().join(WEIGHTS_FILE)),
        bytes(&dir.path().join(BEST_FILE))
    );
}

const CHILD_ENV: &str = "EDGECP_TRAINING_SIGKILL_CHILD";

fn sigkill_config() -> TrialConfig {
    let mut cfg = tiny_config();
    cfg.epochs = 4;
    cfg.steps_per_epoch = 10;
    cfg.checkpoint_every = 2;
    cfg.eval_every = 10;
    cfg
}

/// The child half of `sigkill_mid_run_then_resume_finishes`: trains when the environment
/// names a run folder, does nothing otherwise.
#[test]
fn sigkill_child_entry() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (tr, val) = data(6, 2, 4);
    train(
        &sigkill_config(),
        &tr,
        Some(&val),
        Path::new(&dir),
        false,
        &mut NoObserver,
    )
    .unwrap();
}

#[test]
fn sigkill_mid_run_then_resume_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "training::tests::sigkill_child_entry",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = dir.path().join(CHECKPOINT_FILE);
    let t0 = Instant::now();
    while !ckpt.exists() {
        assert!(t0.elapsed().as_secs() < 120, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let cfg = sigkill_config();
    let (tr, val) = data(6, 2, 4);
    let resumed = train(&cfg, &tr, Some(&val), dir.path(), true, &mut NoObserver).unwrap();
    assert_eq!(resumed.steps, cfg.total_steps());
    assert!(resumed.resumed_at > 0, "the child had written a checkpoint");
    assert!(
        resumed.resumed_at < cfg.total_steps(),
        "the child was killed before it finished"
    );
    let full = tempfile::tempdir().unwrap();
    train(&cfg, &tr, Some(&val), full.path(), false, &mut NoObserver).unwrap();
    assert_eq!(
        bytes(&full.path().join(WEIGHTS_FILE)),
        bytes(&dir.path().join(WEIGHTS_FILE))
    );
}
