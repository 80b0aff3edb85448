//! Fork-join for one small piece of work (a layer of one image) that never waits for a
//! thread to wake up: the calling thread claims units of work from a shared counter and
//! runs them itself, while helper jobs posted to the pool claim units too once their
//! thread is running. A helper that is slow to start (asleep, descheduled by the
//! hypervisor) finds nothing left and returns: the caller only ever waits for units a
//! helper has already started, never for a wake-up. On a quiet machine the helper joins
//! within microseconds and a layer runs on both cores; on a busy one it runs on the
//! caller alone instead of stalling behind it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// The units of one call, shared with the helper jobs (which may outlive the call: they
/// hold this through an `Arc`, and touch the caller's closure only after claiming a unit,
/// which the caller waits for).
struct Units {
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
    count: usize,
    /// The caller's closure, its lifetime erased: dereferenced only by whoever claimed a
    /// unit below `count`, and the caller does not return before every claimed unit is
    /// done.
    job: *const (dyn Fn(usize, bool) + Sync),
}

// SAFETY: `job` points to a `Sync` closure that outlives every dereference (see `run`);
// the rest are atomics and a plain count.
unsafe impl Send for Units {}
unsafe impl Sync for Units {}

impl Units {
    /// Claims and runs units until none are left (`helper`: on a pool thread).
    fn work(&self, helper: bool) {
        loop {
            let u = self.next.fetch_add(1, Ordering::AcqRel);
            if u >= self.count {
                return;
            }
            // SAFETY: u < count was claimed by this thread alone, and the caller of `run`
            // keeps the closure alive until `done` reaches `count`, which needs this
            // unit's increment below.
            let job = unsafe { &*self.job };
            if catch_unwind(AssertUnwindSafe(|| job(u, helper))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

/// Runs `job(u, helper)` for every `u` in `0..count`: on the calling thread (`helper`
/// false), and on up to `helpers` threads of `pool` that start while units remain
/// (`helper` true). Returns when all are done.
///
/// # Panics
/// When `job` panicked (after every unit has finished).
pub fn run(
    pool: &rayon::ThreadPool,
    helpers: usize,
    count: usize,
    job: &(dyn Fn(usize, bool) + Sync),
) {
    let helpers = helpers.min(count.saturating_sub(1));
    if helpers == 0 {
        (0..count).for_each(|u| job(u, false));
        return;
    }
    let job: *const (dyn Fn(usize, bool) + Sync + '_) = job;
    // SAFETY: only the lifetime is erased; see `Units::job` and the wait below.
    let job: *const (dyn Fn(usize, bool) + Sync + 'static) = unsafe { std::mem::transmute(job) };
    let units = Arc::new(Units {
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
        count,
        job,
    });
    for _ in 0..helpers {
        let u = Arc::clone(&units);
        pool.spawn(move || u.work(true));
    }
    units.work(false);
    // Every unit is claimed; wait for the ones helpers are running: at most one unit's
    // time (tens of microseconds) when the helper has a core; 4k spins (0.1-0.5 ms
    // depending on the CPU's pause) before yielding the core, in case a helper shares it.
    let mut spins = 0u32;
    while units.done.load(Ordering::Acquire) < count {
        if spins < 1 << 12 {
            std::hint::spin_loop();
            spins += 1;
        } else {
            std::thread::yield_now();
        }
    }
    assert!(
        !units.panicked.load(Ordering::Relaxed),
        "a unit of work panicked on a helper thread"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_runs_once() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for count in [0, 1, 2, 3, 7, 64] {
            for helpers in [0, 1, 2, 5] {
                let hits: Vec<AtomicUsize> = (0..count).map(|_| AtomicUsize::new(0)).collect();
                run(&pool, helpers, count, &|u, _| {
                    hits[u].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn a_panicking_unit_is_reported_to_the_caller() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            run(&pool, 1, 8, &|u, _| assert!(u != 5, "unit 5"))
        }));
        assert!(r.is_err());
        // the pool still works
        run(&pool, 1, 4, &|_, _| {});
    }
}
