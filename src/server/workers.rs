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
use std::time::{Duration, Instant};

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

/// How new connections are placed on the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// Round robin, whatever the load (the default). A connection stays on its worker for
    /// life, so only an even spread keeps every core serving when a few connections carry
    /// heavy traffic (8 connections of masked 64 KB lists: ~8,000 req/s spread, ~4,900
    /// packed on one worker; benches/RESULTS.md).
    #[default]
    Spread,
    /// The lowest-numbered worker that still has headroom (busy under `PACK_LOAD` of its
    /// time) and has not yet taken `PACK_BURST` new connections since its load was last
    /// measured, else the one that took the fewest since (the least busy among equals). A
    /// worker kept busy parks less often, and every park is a context switch after which
    /// its caches are cold: for light traffic one busy worker can serve small requests
    /// with less CPU than two half-idle ones, and leaves the other cores to the rest of the
    /// machine. The burst cap matters because a connection stays on its worker for life: a
    /// burst of accepts (a load balancer's pool, a client's 64 connections opened at once)
    /// comes before any of its load can be measured, and must not all land on one worker.
    Pack,
}

impl Placement {
    pub fn parse(s: &str) -> Option<Placement> {
        match s {
            "pack" => Some(Placement::Pack),
            "spread" => Some(Placement::Spread),
            _ => None,
        }
    }
}

/// A worker busier than this (fraction of wall time, over the last sample interval) takes
/// no new connection while another has room.
const PACK_LOAD: f64 = 0.7;
/// Busy times are sampled at most this often (a burst of accepts reuses the sample).
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// New connections one worker takes while packing, between two samples of its load.
const PACK_BURST: u32 = 16;

pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    placement: Placement,
    load: Mutex<Load>,
    stop: Mutex<Vec<oneshot::Sender<()>>>,
}

/// What `Placement::Pack` knows of the workers' recent load.
struct Load {
    sampled_at: Instant,
    /// Per worker: its total busy time at `sampled_at` (tokio's own measure, taken at
    /// every park) and its busy fraction over the interval before.
    busy_at: Vec<Duration>,
    fraction: Vec<f64>,
    /// Per worker: connections placed on it since `sampled_at`.
    placed: Vec<u32>,
}

impl Load {
    /// Picks the worker for one new connection (see `Placement::Pack`) and counts it.
    fn place(&mut self) -> usize {
        let n = self.fraction.len();
        let i = (0..n)
            .find(|&i| self.fraction[i] < PACK_LOAD && self.placed[i] < PACK_BURST)
            .unwrap_or_else(|| {
                (0..n)
                    .min_by(|&a, &b| {
                        self.placed[a]
                            .cmp(&self.placed[b])
                            .then(self.fraction[a].total_cmp(&self.fraction[b]))
                    })
                    .unwrap_or(0)
            });
        self.placed[i] += 1;
        i
    }
}

impl Workers {
    /// Starts `n` worker threads (n >= 1).
    pub fn start(n: usize, placement: Placement) -> std::io::Result<Workers> {
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
        let n = handles.len();
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            placement,
            load: Mutex::new(Load {
                sampled_at: Instant::now(),
                busy_at: vec![Duration::ZERO; n],
                fraction: vec![0.0; n],
                placed: vec![0; n],
            }),
            stop: Mutex::new(stop),
        })
    }

    /// Runs `f` on the worker `placement` picks for a new connection.
    pub fn spawn<F>(&self, f: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.pick();
        self.handles[i].spawn(f);
    }

    /// The worker a new connection goes to (0-based).
    pub fn pick(&self) -> usize {
        let n = self.handles.len();
        if self.placement == Placement::Spread || n == 1 {
            return self.next.fetch_add(1, Ordering::Relaxed) % n;
        }
        let mut load = self.load.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let dt = now.duration_since(load.sampled_at);
        if dt >= SAMPLE_EVERY {
            for (i, h) in self.handles.iter().enumerate() {
                let busy = h.metrics().worker_total_busy_duration(0);
                let d = busy.saturating_sub(load.busy_at[i]);
                load.fraction[i] = (d.as_secs_f64() / dt.as_secs_f64()).min(1.0);
                load.busy_at[i] = busy;
                load.placed[i] = 0;
            }
            load.sampled_at = now;
        }
        load.place()
    }

    /// Busy fraction per worker over the last sample interval (for `/metrics`-style
    /// inspection and tests).
    pub fn recent_load(&self) -> Vec<f64> {
        self.load
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fraction
            .clone()
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
    fn spread_places_round_robin_and_marks_its_threads() {
        let w = Workers::start(2, Placement::Spread).unwrap();
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

    /// The workers `n` placements pick from a fresh sample showing `fraction`.
    fn picks(fraction: &[f64], n: usize) -> Vec<usize> {
        let mut load = Load {
            sampled_at: Instant::now(),
            busy_at: vec![Duration::ZERO; fraction.len()],
            fraction: fraction.to_vec(),
            placed: vec![0; fraction.len()],
        };
        (0..n).map(|_| load.place()).collect()
    }

    fn per_worker(picks: &[usize], workers: usize) -> Vec<usize> {
        (0..workers)
            .map(|w| picks.iter().filter(|&&p| p == w).count())
            .collect()
    }

    #[test]
    fn pack_fills_the_first_worker_with_headroom() {
        assert_eq!(picks(&[0.0, 0.0, 0.0], 1), vec![0]);
        assert_eq!(picks(&[0.69, 0.0], 1), vec![0]);
        assert_eq!(picks(&[0.7, 0.0], 1), vec![1]);
        assert_eq!(picks(&[0.9, 0.8, 0.2], 1), vec![2]);
        // All busy: the least busy, the first among equals.
        assert_eq!(picks(&[0.95, 0.8, 0.9], 1), vec![1]);
        assert_eq!(picks(&[1.0, 1.0], 1), vec![0]);
        // A few connections at a time stay packed on the first worker.
        assert_eq!(picks(&[0.1, 0.0], 8), vec![0; 8]);
    }

    #[test]
    fn a_burst_of_accepts_is_spread_over_the_workers() {
        // 64 connections at once, before any of their load shows: a burst's share each,
        // then evenly.
        let p = picks(&[0.0, 0.0], 64);
        assert_eq!(&p[..PACK_BURST as usize], &[0; PACK_BURST as usize]);
        assert_eq!(per_worker(&p, 2), vec![32, 32]);
        assert_eq!(
            per_worker(&picks(&[0.0, 0.0, 0.0, 0.0], 100), 4),
            vec![25; 4]
        );
        // A busy worker takes nothing while the others have headroom, then its even share.
        assert_eq!(per_worker(&picks(&[0.9, 0.0, 0.0], 32), 3), vec![0, 16, 16]);
        assert_eq!(per_worker(&picks(&[0.9, 0.0, 0.0], 33), 3), vec![1, 16, 16]);
        // All busy: spread evenly, the least busy first.
        let p = picks(&[0.95, 0.8], 5);
        assert_eq!(p, vec![1, 0, 1, 0, 1]);
    }

    #[test]
    fn pack_moves_on_when_a_worker_is_measured_busy() {
        let w = Workers::start(2, Placement::Pack).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Idle workers: every new connection goes to the first.
        for _ in 0..3 {
            let tx = tx.clone();
            w.spawn(async move {
                tx.send(current_slot()).unwrap();
            });
        }
        let slots: Vec<usize> = (0..3).map(|_| rx.recv().unwrap()).collect();
        assert_eq!(slots, vec![1, 1, 1]);
        // Keep the first worker busy for the whole next sample interval (a task that does
        // not yield for 150 ms), then place again: the second worker is picked.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::sleep(SAMPLE_EVERY);
        w.pick(); // starts a fresh interval
        w.handles[0].spawn(async move {
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(150) {
                std::hint::spin_loop();
            }
            done_tx.send(()).unwrap();
        });
        done_rx.recv().unwrap();
        // The busy time is counted when the worker parks, right after the task ends.
        std::thread::sleep(Duration::from_millis(5));
        let tx2 = tx.clone();
        w.spawn(async move {
            tx2.send(current_slot()).unwrap();
        });
        assert_eq!(rx.recv().unwrap(), 2, "load: {:?}", w.recent_load());
        assert!(w.recent_load()[0] > PACK_LOAD, "{:?}", w.recent_load());
        w.stop();
    }
}
