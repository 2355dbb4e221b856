//! Connection workers: one single-threaded runtime per thread, like nginx's worker
//! processes. A connection lives on one worker for its whole life, and so does every
//! upstream connection that worker opens (each worker has its own upstream pool, see
//! `Upstream::client`): a request's task and its upstream connection's task never wake each
//! other across threads, which on a multi-threaded runtime cost futex calls and cache
//! misses on every request.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// 1-based index of the worker running on this thread; 0 on any other thread.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Which upstream pool this thread uses: 0 off the workers, `i + 1` on worker `i`.
pub fn current_slot() -> usize {
    WORKER.with(Cell::get)
}

/// Per-worker copies of what every request updates (metrics, request ids, audit buffers):
/// one shared copy has both cores take its cache lines from each other on every request.
pub const SHARDS: usize = 8;

/// This thread's copy among `SHARDS`: its own on a worker (while there are at most
/// `SHARDS - 1` workers), copy 0 off the workers.
pub fn current_shard() -> usize {
    current_slot() % SHARDS
}

/// How many worker threads `n` asks for: 0 means one per available core.
pub fn resolve_count(n: usize) -> usize {
    if n > 0 {
        n
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: Mutex<Vec<oneshot::Sender<()>>>,
}

impl Workers {
    /// Starts `n` worker threads (n >= 1).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let mut handles = Vec::with_capacity(n);
        let mut stop = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let (tx, rx) = oneshot::channel::<()>();
            stop.push(tx);
            std::thread::Builder::new()
                .name(format!("phigate-worker-{i}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(i + 1));
                    // Runs the connections spawned onto this runtime until told to stop;
                    // dropping the runtime then ends whatever is left.
                    let _ = rt.block_on(rx);
                })?;
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            stop: Mutex::new(stop),
        })
    }

    /// Runs `f` on the next worker, round robin (kernel accept order spreads load evenly
    /// enough; a connection's cost is not known when it arrives).
    pub fn spawn<F>(&self, f: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].spawn(f);
    }

    /// Tasks alive on all workers (connections, their requests, upstream connections).
    pub fn alive_tasks(&self) -> usize {
        self.handles
            .iter()
            .map(|h| h.metrics().num_alive_tasks())
            .sum()
    }

    /// Ends the worker threads; connections still open are dropped.
    pub fn stop(&self) {
        for tx in self
            .stop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = tx.send(());
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_tasks_round_robin_and_marks_its_threads() {
        let w = Workers::start(2).unwrap();
        assert_eq!(current_slot(), 0);
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            w.spawn(async move {
                tx.send(current_slot()).unwrap();
            });
        }
        let mut slots: Vec<usize> = (0..4).map(|_| rx.recv().unwrap()).collect();
        slots.sort_unstable();
        assert_eq!(slots, vec![1, 1, 2, 2]);
        w.stop();
        assert_eq!(resolve_count(3), 3);
        assert!(resolve_count(0) >= 1);
    }
}
