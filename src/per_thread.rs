//! Compiled regexes whose search scratch belongs to the calling thread.
//!
//! A `regex::Regex` keeps its search caches in a pool shared by every thread that uses that
//! value: the first thread owns a fast slot, and every search reads and writes the slot's
//! owner word. With the gateway's workers (one per core) sharing one compiled detector, that
//! word moved between cores on every search (in `perf`, 12% of the detectors' samples sat on
//! two loads of it; about 1% of a masked request on 2 cores, more with more). A clone shares
//! the compiled program but has a pool of its own, so each thread searches with its own
//! clone, made on its first search.

use std::fmt;
use thread_local::ThreadLocal;

pub struct PerThread<T: Send> {
    shared: T,
    local: ThreadLocal<T>,
}

impl<T: Clone + Send> PerThread<T> {
    pub fn new(value: T) -> Self {
        PerThread {
            shared: value,
            local: ThreadLocal::new(),
        }
    }

    /// This thread's clone (for searching).
    #[inline]
    pub fn get(&self) -> &T {
        self.local.get_or(|| self.shared.clone())
    }

    /// The value it was made from, for what does not search (its source, its shape).
    pub fn shared(&self) -> &T {
        &self.shared
    }
}

impl<T: Clone + Send> Clone for PerThread<T> {
    fn clone(&self) -> Self {
        PerThread::new(self.shared.clone())
    }
}

impl<T: Send + fmt::Debug> fmt::Debug for PerThread<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::PerThread;
    use regex::Regex;

    #[test]
    fn each_thread_searches_with_its_own_clone_of_the_same_program() {
        let re = PerThread::new(Regex::new(r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b").unwrap());
        let here = re.get() as *const Regex;
        assert_eq!(here, re.get() as *const Regex, "one clone per thread, kept");
        let there = std::thread::scope(|s| {
            s.spawn(|| {
                assert!(re.get().is_match("ssn 123-45-6789"));
                re.get() as *const Regex as usize
            })
            .join()
            .unwrap()
        });
        assert_ne!(here as usize, there, "another thread gets another clone");
        assert!(re.get().is_match("123-45-6789") && !re.get().is_match("123-45-678"));
        assert_eq!(re.shared().as_str(), re.get().as_str());
    }
}
