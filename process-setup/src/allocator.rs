//! glibc's allocator, told to keep the memory a busy transfer reuses.
//!
//! glibc gives memory back to the kernel whenever more than its trim threshold (128 KiB to
//! start with) lies free at the top of a heap, and serves blocks above its mmap threshold (also
//! 128 KiB) with a mapping of their own. A tunnel moving a large body allocates and frees frame
//! payloads of up to 64 KiB all the time, with a few hundred KiB in flight: at the defaults the
//! heap was trimmed and grown again every few frames, and the kernel zeroed each page anew. In a
//! 512 MiB download over TLS/TCP, page faults and `madvise` took about a fifth of the relay's CPU.
//!
//! glibc adjusts both thresholds by itself (mallopt(3), "dynamic mmap threshold"): freeing a
//! mapped block raises the mmap threshold to that block's size and the trim threshold to twice
//! that. [`keep_transfer_memory`] frees one such block at start, so that each heap keeps at
//! least [`TRIM_THRESHOLD`] free before trimming (a page more: the block's header). The
//! adjustment stays on: freeing a larger mapped block later raises both again, as it always
//! did. Setting any of `glibc.malloc.trim_threshold`, `mmap_threshold`, `top_pad` or `mmap_max`
//! in `GLIBC_TUNABLES` (or their `MALLOC_*_` variables) turns the adjustment off, so an
//! operator's own settings win, and the thresholds not set are glibc's defaults then.
//! Elsewhere (musl, Windows, macOS, 32-bit glibc, whose adjustment stops at 512 KiB) this does
//! nothing.

/// The mmap threshold after [`keep_transfer_memory`]; the trim threshold is twice this.
pub const MMAP_THRESHOLD: usize = 1024 * 1024;

/// What a heap may keep free at its top before glibc gives memory back to the kernel.
pub const TRIM_THRESHOLD: usize = 2 * MMAP_THRESHOLD;

/// Raises glibc's mmap threshold to [`MMAP_THRESHOLD`] and its trim threshold to
/// [`TRIM_THRESHOLD`], by glibc's documented dynamic adjustment. Call it once, first thing in
/// `main`. The block is mapped and unmapped at once, so it leaves no resident memory behind.
pub fn keep_transfer_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
    {
        // Zeroed: glibc maps it and writes only its header. Larger than the default threshold, so it
        // is mapped; `black_box` keeps the allocation from being optimised away.
        let block = vec![0u8; MMAP_THRESHOLD];
        drop(std::hint::black_box(block));
    }
}

#[cfg(all(
    test,
    target_os = "linux",
    target_env = "gnu",
    target_pointer_width = "64"
))]
mod tests {
    use super::*;

    /// Minor page faults of the calling thread so far (`/proc/thread-self/stat`, field 10).
    fn minor_faults() -> u64 {
        let stat =
            std::fs::read_to_string("/proc/thread-self/stat").expect("/proc/thread-self/stat");
        let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
        after_name
            .split_whitespace()
            .nth(7)
            .and_then(|f| f.parse().ok())
            .expect("minflt")
    }

    /// What a download does to the heap: a few 64 KiB payloads in flight, written into, then
    /// freed, over and over. (No block above glibc's default mmap threshold: freeing one would
    /// raise the thresholds by itself.)
    fn churn(rounds: usize) {
        for _ in 0..rounds {
            let payloads: Vec<Vec<u8>> = (0..6).map(|i| vec![i as u8 + 1; 64 * 1024]).collect();
            drop(std::hint::black_box(payloads));
        }
    }

    #[test]
    fn a_transfer_s_memory_is_reused_not_faulted_in_again() {
        // In a thread of its own: a heap of its own, as a runtime worker has.
        std::thread::spawn(|| {
            keep_transfer_memory();
            churn(5);
            let before = minor_faults();
            churn(200);
            let faults = minor_faults() - before;
            // With glibc's defaults the heap is trimmed after each round (384 KiB freed, 128 KiB
            // kept) and 64 pages are faulted in again in the next: 12,800 faults. Reused memory
            // takes none.
            assert!(faults < 2_000, "{faults} page faults in 200 rounds");
        })
        .join()
        .expect("test thread");
    }
}
