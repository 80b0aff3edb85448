//! musl's malloc (`std::alloc::System` on a musl target) against mimalloc (the allocator
//! of the agent's musl builds, edge-agent/src/alloc.rs), on the same binary and run: T
//! threads each serve `ROUNDS` simulated requests with the agent's allocation pattern per
//! request (an f32 input tensor of 32x32x3, an embedding, a JSON body of a few hundred
//! bytes, a handful of small strings and boxes), all freed at the end of the request.
//!
//!     alloc-bench [ROUNDS]     # prints one line per allocator and thread count

use std::alloc::{GlobalAlloc, Layout, System};
use std::time::Instant;

use mimalloc::MiMalloc;

/// One request's allocations through `a`, freed in a different order than made (as a
/// request's buffers are); returns a checksum so the work is not optimised away.
fn request(a: &dyn Alloc, seed: usize) -> usize {
    let sizes = [
        12_288, 512, 384, 24, 40, 64, 96, 24, 200, 1_024, 48, 16, 4_096, 32,
    ];
    let mut held: Vec<(*mut u8, Layout)> = Vec::with_capacity(sizes.len());
    let mut sum = 0usize;
    for (i, &s) in sizes.iter().enumerate() {
        let layout =
            Layout::from_size_align(s + (seed + i) % 8 * 8, 8).unwrap_or(Layout::new::<u64>());
        let p = a.alloc(layout);
        if p.is_null() {
            continue;
        }
        // touch the first and last byte, as filling the buffer would
        unsafe {
            *p = i as u8;
            *p.add(layout.size() - 1) = seed as u8;
            sum = sum.wrapping_add(*p as usize);
        }
        held.push((p, layout));
    }
    // the small ones go first (headers, strings), the tensor last
    for (p, l) in held.into_iter().rev() {
        a.dealloc(p, l);
    }
    sum
}

trait Alloc: Sync {
    fn alloc(&self, l: Layout) -> *mut u8;
    fn dealloc(&self, p: *mut u8, l: Layout);
}
struct Musl;
struct Mi;
impl Alloc for Musl {
    fn alloc(&self, l: Layout) -> *mut u8 {
        unsafe { System.alloc(l) }
    }
    fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}
impl Alloc for Mi {
    fn alloc(&self, l: Layout) -> *mut u8 {
        unsafe { MiMalloc.alloc(l) }
    }
    fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { MiMalloc.dealloc(p, l) }
    }
}

/// Requests per second over `threads` threads of `rounds` requests each.
fn run(a: &dyn Alloc, threads: usize, rounds: usize) -> f64 {
    let t0 = Instant::now();
    let total: usize = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (0..rounds)
                        .map(|r| request(a, r * 31 + t))
                        .fold(0, usize::wrapping_add)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or(0))
            .fold(0, usize::wrapping_add)
    });
    std::hint::black_box(total);
    (threads * rounds) as f64 / t0.elapsed().as_secs_f64()
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000);
    let system = if cfg!(target_env = "musl") {
        "musl malloc"
    } else {
        "system malloc"
    };
    println!("{rounds} requests per thread, 14 allocations each");
    for threads in [1, 2, 4] {
        // warm both, then measure each twice and keep the better run
        run(&Musl, threads, rounds / 10);
        run(&Mi, threads, rounds / 10);
        let m = run(&Musl, threads, rounds).max(run(&Musl, threads, rounds));
        let i = run(&Mi, threads, rounds).max(run(&Mi, threads, rounds));
        println!(
            "threads {threads}: {system} {:>9.0} req/s   mimalloc {:>9.0} req/s   mimalloc / {system} {:.2}",
            m, i, i / m
        );
    }
}
