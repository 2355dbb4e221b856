//! Process-wide memory settings, applied once at start-up by the binaries.

/// Turns transparent huge pages off for this process. mimalloc marks its arenas for huge
/// pages (madvise), so the few KiB of buffers each idle connection keeps could pin a whole
/// 2 MiB page: 1,000 idle TLS connections held 69-73 MB of RSS with huge pages and 46 MB
/// without; masked 1 MB bodies cost the same CPU either way (benches/RESULTS.md).
/// Returns whether the kernel took the setting (user-mode emulators such as qemu-user do
/// not implement it; the gateway runs either way).
pub fn disable_transparent_huge_pages() -> bool {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes no pointers; it sets one flag on this process, which
    // the kernel checks when it faults pages in (so arenas mapped earlier are covered too).
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// mimalloc as the global allocator, calling its plain entry points when the alignment is
/// the one malloc already guarantees. `mimalloc::MiMalloc` sends every request through the
/// aligned entry points, whose path for blocks over 1 KiB (read buffers, TLS records) costs
/// ~180 instructions more per call (callgrind: ~6 such calls per proxied request).
pub struct Allocator;

/// What `mi_malloc` guarantees (mimalloc's `MI_MAX_ALIGN_SIZE`, 16 on x86-64 and aarch64).
const MALLOC_ALIGN: usize = 16;

// SAFETY: every block comes from mimalloc and goes back to it (`mi_free` takes blocks of
// either entry point); the plain calls are used only when their alignment satisfies the
// layout's, and only for non-zero sizes, as GlobalAlloc requires of callers anyway.
unsafe impl std::alloc::GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.align() <= MALLOC_ALIGN {
            libmimalloc_sys::mi_malloc(layout.size()).cast()
        } else {
            libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.align() <= MALLOC_ALIGN {
            libmimalloc_sys::mi_zalloc(layout.size()).cast()
        } else {
            libmimalloc_sys::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        libmimalloc_sys::mi_free(ptr.cast());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= MALLOC_ALIGN {
            libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast()
        } else {
            libmimalloc_sys::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn huge_pages_are_off_after_the_call() {
        if !super::disable_transparent_huge_pages() {
            // Only under an emulator (the aarch64 tests in CI run under qemu-user); a
            // native x86-64 Linux kernel always takes it.
            #[cfg(target_arch = "x86_64")]
            panic!("PR_SET_THP_DISABLE refused");
            #[cfg(not(target_arch = "x86_64"))]
            return;
        }
        // SAFETY: PR_GET_THP_DISABLE takes no arguments and returns the flag.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(flag, 1);
    }
}
