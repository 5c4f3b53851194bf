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
//! that. [`keep_transfer_memory`] frees one such block at start, so that each heap keeps up to
//! [`TRIM_THRESHOLD`] free before trimming. The rest of glibc's behaviour is unchanged, and an
//! operator's own `GLIBC_TUNABLES` for these thresholds still win (glibc then turns the dynamic
//! adjustment off). Elsewhere (musl, Windows, macOS) this does nothing.

/// The mmap threshold after [`keep_transfer_memory`]; the trim threshold is twice this.
pub const MMAP_THRESHOLD: usize = 1024 * 1024;

/// What a heap may keep free at its top before glibc gives memory back to the kernel.
pub const TRIM_THRESHOLD: usize = 2 * MMAP_THRESHOLD;

/// Raises glibc's mmap threshold to [`MMAP_THRESHOLD`] and its trim threshold to
/// [`TRIM_THRESHOLD`], by glibc's documented dynamic adjustment. Call it once, first thing in
/// `main`. The block is mapped and unmapped untouched, so it costs no resident memory.
pub fn keep_transfer_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // Zeroed: glibc maps it without writing to it. Larger than the default threshold, so it
        // is mapped; `black_box` keeps the allocation from being optimised away.
        let block = vec![0u8; MMAP_THRESHOLD];
        drop(std::hint::black_box(block));
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Minor page faults of the whole process so far (`/proc/self/stat`, field 10).
    fn minor_faults() -> u64 {
        let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
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
            // With glibc's defaults the heap is trimmed after each round and a payload's 64
            // pages are faulted in again: 12,800 faults. Reused memory takes none; other tests'
            // threads may add a few hundred.
            assert!(faults < 2_000, "{faults} page faults in 200 rounds");
        })
        .join()
        .expect("test thread");
    }
}
