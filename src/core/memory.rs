//! Giving memory the allocator keeps back to the system after a large, short-lived peak.
//!
//! A full decision pass over tens of thousands of Services, or a new list of every
//! EndpointSlice, allocates and frees megabytes within a second. glibc's allocator keeps freed
//! memory mapped in the arena of the thread that used it unless it sits at the top of the heap,
//! so the agent's RSS grew to the high-water mark of its largest passes and stayed there, per
//! worker thread (183 MiB after the first sync of 50,000 Services, up to 301 MiB after
//! membership churn: docs/scale.md). [`release_freed`] asks glibc to hand back every free page
//! of every arena (`malloc_trim(0)`): a few milliseconds at that size, called after such passes
//! only. Other allocators return memory on their own, and there it does nothing: the `purelb`
//! binary allocates from mimalloc (docs/design.md, "The memory allocator"), so it matters to
//! builds on the system allocator (tests, controllers run inside the lab's benches).

/// Returns the allocator's free pages to the system (glibc: `malloc_trim(0)`, every arena);
/// nothing with other C libraries.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    release();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release() {
    // SAFETY: malloc_trim takes no pointer, only walks the allocator's own free lists under
    // its locks, and may be called from any thread at any time. What it returns (whether memory
    // was released) changes nothing for the caller.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::release_freed;

    /// A freed peak is given back: after freeing 64 MiB of small blocks (too small for their own
    /// mappings) that sit below a live block, RSS drops by most of it once released.
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn a_freed_peak_is_returned_to_the_system() {
        fn rss_kib() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .expect("VmRSS")
        }
        // On a thread of its own, as the agent's passes run on tokio's workers.
        std::thread::spawn(|| {
            let blocks: Vec<Vec<u8>> = (0..65_536).map(|i| vec![u8::try_from(i % 251).unwrap_or(1); 1024]).collect();
            let keep = vec![1u8; 1024];
            let peak = rss_kib();
            drop(blocks);
            let before = rss_kib();
            release_freed();
            let after = rss_kib();
            assert!(
                after + 32 * 1024 <= peak,
                "RSS {after} KiB after releasing, {peak} KiB at the peak, {before} KiB after freeing"
            );
            drop(keep);
        })
        .join()
        .expect("the test thread");
    }
}
