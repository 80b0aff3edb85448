//! How the agent's allocator treats large, short-lived buffers: loading a bundle reads
//! every file to hash it and the reference data to build the predictor (15 MB for a GTSRB
//! bundle with training embeddings), then frees them. glibc raises its mmap threshold each
//! time such a buffer is freed, so the next ones come from the heap and stay resident:
//! measured on a GTSRB bundle, 41.6 MB RSS while serving. A fixed threshold keeps them in
//! their own mappings, which go back to the system when freed, and a trim after loading
//! returns what the heap holds free (18.4 MB). The threshold sits above a batch-64
//! request's buffers (about 1 MB): at 256 KiB those were mapped and faulted in on every
//! call, and batch-64 throughput fell by 10%.

/// Large allocations in their own mappings from now on (glibc only; elsewhere a no-op).
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called at start, before other threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        // one arena per CPU at most is glibc's default of 8 per CPU for 64-bit: tokio's and
        // the engine's threads would each grow their own
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Gives the heap's free memory back to the system (after a bundle is loaded).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
