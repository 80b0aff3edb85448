//! The global allocator of the static musl builds (cross/build.sh): musl's own malloc
//! takes one lock for every allocation, which the agent's threads (HTTP workers, the
//! engine's team, the MQTT task) would contend on; mimalloc keeps per-thread heaps. glibc
//! builds (x86, Jetson) keep glibc's malloc.

#[cfg(target_env = "musl")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
