//! Process-wide memory settings, applied once at start-up by the binaries.

/// Turns transparent huge pages off for this process. mimalloc marks its arenas for huge
/// pages (madvise), so the few KiB of buffers each idle connection keeps could pin a whole
/// 2 MiB page: 1,000 idle TLS connections held 69-73 MB of RSS with huge pages and 46 MB
/// without; masked 1 MB bodies cost the same CPU either way (benches/RESULTS.md).
pub fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes no pointers; it sets one flag on this process, which
    // the kernel checks when it faults pages in (so arenas mapped earlier are covered too).
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn huge_pages_are_off_after_the_call() {
        super::disable_transparent_huge_pages();
        // SAFETY: PR_GET_THP_DISABLE takes no arguments and returns the flag.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(flag, 1);
    }
}
