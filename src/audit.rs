//! Audit records: one JSON line per request. Paths, routes, permissions and decisions;
//! never a token, a body or a masked value.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use http::StatusCode;
use serde::Serialize;
use serde_json::json;

use crate::access::PermissionVerdict;
use crate::error::GatewayError;
use crate::proxy::RequestCtx;
use crate::server::workers::{current_shard, SHARDS};

/// How long the writer lets records gather before one `write(2)`: a burst costs one
/// syscall instead of one per request, and a record is on disk within a few milliseconds.
const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// Records waiting beyond this, over all buffers, make writers wait.
const MAX_PENDING_BYTES: usize = 8 << 20;
/// The longest `flush` waits for the writer.
const FLUSH_WAIT: Duration = Duration::from_secs(10);
/// How often a file sink's path is compared with the file being written: a log rotated by
/// renaming or deleting it (logrotate's default) is followed within this, without a signal.
const ROTATION_CHECK: Duration = Duration::from_secs(1);

/// The audit record of a finished request (field order is the line's order).
#[derive(Serialize)]
struct RequestRecord<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    ts: Timestamp,
    request_id: &'a str,
    user: Option<&'a str>,
    data_access: Option<&'a str>,
    route: Option<&'a str>,
    method: &'a str,
    path: Option<&'a str>,
    required: Option<Required<'a>>,
    decision: &'static str,
    reason: &'static str,
    granted_by: GrantedBy<'a>,
    /// `granted_by` already rendered (`granted_by_json`), when the caller keeps it.
    #[serde(skip)]
    granted_json: Option<&'a [u8]>,
    masked_count: Option<usize>,
    masked_paths: Option<&'a crate::masking::Paths>,
    masked_paths_truncated: bool,
    status: u16,
    upstream_status: Option<u16>,
    latency_ms: f64,
}

impl RequestRecord<'_> {
    /// The same line serde would write for this record (a test holds the two equal),
    /// written by hand: this runs for every request, and serde's escaping looks at each
    /// byte on its own while these strings almost never need any.
    fn write_json(&self, out: &mut Vec<u8>) {
        let opt = |out: &mut Vec<u8>, v: Option<&str>| match v {
            Some(v) => json_str(out, v),
            None => out.extend_from_slice(b"null"),
        };
        out.extend_from_slice(b"{\"type\":");
        json_plain(out, self.kind);
        out.extend_from_slice(b",\"ts\":");
        // Digits and punctuation only: nothing to escape.
        out.push(b'"');
        out.extend_from_slice(&self.ts.0);
        out.push(b'"');
        out.extend_from_slice(b",\"request_id\":");
        json_str(out, self.request_id);
        out.extend_from_slice(b",\"user\":");
        opt(out, self.user);
        out.extend_from_slice(b",\"data_access\":");
        match self.data_access {
            Some(v) => json_plain(out, v),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"route\":");
        opt(out, self.route);
        out.extend_from_slice(b",\"method\":");
        json_plain(out, self.method);
        out.extend_from_slice(b",\"path\":");
        opt(out, self.path);
        out.extend_from_slice(b",\"required\":");
        match &self.required {
            Some(r) => json_list(out, r.0.iter(), |out, p| json_str(out, p.as_str())),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"decision\":");
        json_plain(out, self.decision);
        out.extend_from_slice(b",\"reason\":");
        json_plain(out, self.reason);
        out.extend_from_slice(b",\"granted_by\":");
        match self.granted_json {
            Some(json) => out.extend_from_slice(json),
            None => write_granted_by(out, self.granted_by.0),
        }
        out.extend_from_slice(b",\"masked_count\":");
        match self.masked_count {
            Some(n) => json_uint(out, n as u64),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"masked_paths\":");
        match self.masked_paths {
            // Paths seldom hold a quote, backslash or control character: one search over
            // all of them, not one per path (200 calls per masked patient list).
            Some(paths) if !crate::masking::needs_escape(paths.joined().as_bytes()) => {
                json_list(out, paths.iter(), json_plain)
            }
            Some(paths) => json_list(out, paths.iter(), json_str),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"masked_paths_truncated\":");
        out.extend_from_slice(if self.masked_paths_truncated {
            b"true"
        } else {
            b"false"
        });
        out.extend_from_slice(b",\"status\":");
        json_uint(out, self.status.into());
        out.extend_from_slice(b",\"upstream_status\":");
        match self.upstream_status {
            Some(s) => json_uint(out, s.into()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"latency_ms\":");
        // A finite number always serializes.
        let _ = serde_json::to_writer(&mut *out, &self.latency_ms);
        out.push(b'}');
    }
}

/// The audit record's `granted_by` list for `verdicts`, rendered once for a caller that is
/// remembered across requests (`proxy::conn`).
pub fn granted_by_json(verdicts: &[PermissionVerdict]) -> Vec<u8> {
    let mut out = Vec::new();
    write_granted_by(&mut out, verdicts);
    out
}

fn write_granted_by(out: &mut Vec<u8>, verdicts: &[PermissionVerdict]) {
    let granted = verdicts.iter().filter_map(|v| match v {
        PermissionVerdict::Granted {
            permission, source, ..
        } => Some((permission, source)),
        _ => None,
    });
    json_list(out, granted, |out, (permission, source)| {
        out.extend_from_slice(b"{\"permission\":");
        json_str(out, permission);
        out.extend_from_slice(b",\"source\":");
        match source {
            crate::access::Source::Role { role, policy } => {
                json_str_parts(out, &["role ", role, " -> policy ", policy])
            }
            crate::access::Source::Policy { policy } => json_str_parts(out, &["policy ", policy]),
            crate::access::Source::InlineAllow => json_str(out, "inline allow"),
        }
        out.push(b'}');
    });
}

/// `s` as a JSON string, escaped exactly as serde_json does (only `"`, `\` and control
/// characters need it; the masker's 16-bytes-a-step search finds them).
fn json_str(out: &mut Vec<u8>, s: &str) {
    json_str_parts(out, &[s]);
}

/// A string that never needs escaping: the gateway's own words (record type, decision,
/// reason, data access level), HTTP methods (tokens: no quote, backslash or control), and
/// masked paths already searched for escapes.
fn json_plain(out: &mut Vec<u8>, s: &str) {
    debug_assert!(!crate::masking::needs_escape(s.as_bytes()), "{s:?}");
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// The concatenation of `parts` as one JSON string.
fn json_str_parts(out: &mut Vec<u8>, parts: &[&str]) {
    let plain = !parts
        .iter()
        .any(|p| crate::masking::needs_escape(p.as_bytes()));
    if plain {
        out.reserve(parts.iter().map(|p| p.len()).sum::<usize>() + 2);
        out.push(b'"');
        for p in parts {
            out.extend_from_slice(p.as_bytes());
        }
        out.push(b'"');
    } else {
        // A String always serializes.
        let _ = serde_json::to_writer(&mut *out, &parts.concat());
    }
}

fn json_list<T>(
    out: &mut Vec<u8>,
    items: impl Iterator<Item = T>,
    mut each: impl FnMut(&mut Vec<u8>, T),
) {
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        each(out, item);
    }
    out.push(b']');
}

fn json_uint(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The route's required permissions, serialized straight from the route.
struct Required<'a>(&'a [crate::access::Permission]);

impl Serialize for Required<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|p| p.as_str()))
    }
}

/// The granted verdicts and where each grant came from, serialized straight from them.
struct GrantedBy<'a>(&'a [PermissionVerdict]);

impl Serialize for GrantedBy<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().filter_map(|v| match v {
            PermissionVerdict::Granted {
                permission, source, ..
            } => Some(Grant {
                permission,
                source: DisplayStr(source),
            }),
            _ => None,
        }))
    }
}

#[derive(Serialize)]
struct Grant<'a> {
    permission: &'a str,
    source: DisplayStr<&'a crate::access::Source>,
}

/// Serializes through `Display`, without an intermediate `String`.
struct DisplayStr<T>(T);

impl<T: std::fmt::Display> Serialize for DisplayStr<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

fn request_record<'a>(
    ctx: &'a RequestCtx,
    status: StatusCode,
    refusal: Option<&GatewayError>,
    latency: Duration,
) -> RequestRecord<'a> {
    let route = ctx.route();
    let caller = ctx.caller.as_deref();
    let masked = ctx.masked.as_ref();
    RequestRecord {
        kind: "request",
        ts: Timestamp::now(),
        request_id: &ctx.request_id,
        user: caller.map(|c| c.identity.user.as_str()),
        data_access: caller.map(|c| c.resolved.data_access.as_str()),
        route: route.map(|r| r.name.as_str()),
        method: ctx.method.as_str(),
        path: ctx.canonical_path.as_deref(),
        required: route.map(|r| Required(&r.require)),
        decision: if refusal.is_some() { "deny" } else { "allow" },
        reason: refusal.map_or(
            if route.is_some_and(|r| r.public) {
                "public_route"
            } else {
                "granted"
            },
            |e| e.reason(),
        ),
        granted_by: GrantedBy(caller.map_or(&[], |c| c.verdicts.as_slice())),
        granted_json: caller.map(|c| c.granted_json.as_slice()),
        masked_count: masked.map(|m| m.count),
        // The report keeps the first `MaskReport::MAX_PATHS` paths so one record stays one
        // reasonable line; the count is always whole.
        masked_paths: masked.map(|m| &m.paths),
        masked_paths_truncated: masked.is_some_and(|m| m.truncated),
        status: status.as_u16(),
        upstream_status: ctx.upstream_status,
        latency_ms: latency.as_secs_f64() * 1000.0,
    }
}

/// Where audit records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    Stdout,
    /// Opened for append only; never truncated or rewritten.
    File(PathBuf),
    /// Records are only counted (tests and `check`).
    Discard,
}

/// The audit log: one JSON line per event. Records are serialized by the caller into its
/// worker's buffer and written by one writer thread in batches (one `write(2)` per
/// `BATCH_WINDOW`, never a partial line), so no request waits on the disk. One buffer per
/// worker: a single shared one had both workers' cores take its lock's and its tail's cache
/// lines from each other on every request. Lines keep their order per worker (and so per
/// connection); within one batch window, lines of different workers may be out of `ts` order.
/// A failed write is never silent: its records are counted as failures, logged and shown
/// on `/readyz`.
pub struct AuditLog {
    shared: Arc<Shared>,
    writer: Option<std::thread::JoinHandle<()>>,
    discard: bool,
}

/// Records waiting beyond this in one buffer make its writers wait (back-pressure from a
/// slow disk) instead of growing memory without bound.
const MAX_SHARD_BYTES: usize = MAX_PENDING_BYTES / SHARDS;

struct Shared {
    shards: [Shard; SHARDS],
    ctl: Mutex<Ctl>,
    /// The writer waits here for records (or for the log to close).
    more: Condvar,
    /// Producers wait here for room; `flush` waits here for its records to be written.
    progress: Condvar,
    /// The writer waits on `more`: a condvar notify is a syscall even when nobody waits, so
    /// only a waiting writer is woken (once per batch, not per record).
    writer_idle: AtomicBool,
    closed: AtomicBool,
    /// A reopen of the file sink was asked for (SIGHUP): done before the next write.
    reopen: AtomicBool,
    failures: AtomicU64,
    written: AtomicU64,
}

#[derive(Default)]
#[repr(align(128))]
struct Shard(Mutex<Pending>);

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    records: u64,
    /// Records handed in to this buffer so far.
    appended: u64,
}

#[derive(Default)]
struct Ctl {
    /// Per buffer, the records whose write has been attempted.
    settled: [u64; SHARDS],
    /// Threads waiting on `progress`.
    waiting: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn any_pending(&self) -> bool {
        self.shards.iter().any(|s| !lock(&s.0).buf.is_empty())
    }

    fn wake_waiters(&self, ctl: &Ctl) {
        if ctl.waiting > 0 {
            self.progress.notify_all();
        }
    }
}

impl AuditLog {
    pub fn open(sink: &AuditSink) -> std::io::Result<AuditLog> {
        let out = match sink {
            AuditSink::Stdout => Some(Target::Stream(Box::new(std::io::stdout()))),
            AuditSink::File(p) => Some(Target::File(AuditFile::open(p.clone())?)),
            AuditSink::Discard => None,
        };
        let shared = Arc::new(Shared {
            shards: Default::default(),
            ctl: Mutex::new(Ctl::default()),
            more: Condvar::new(),
            progress: Condvar::new(),
            writer_idle: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            reopen: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            written: AtomicU64::new(0),
        });
        let writer = match out {
            Some(out) => {
                let sh = shared.clone();
                Some(
                    std::thread::Builder::new()
                        .name("phigate-audit".into())
                        .spawn(move || write_loop(&sh, out))?,
                )
            }
            None => None,
        };
        Ok(AuditLog {
            shared,
            discard: writer.is_none(),
            writer,
        })
    }

    pub fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Reopens a file sink at its path before the next write (SIGHUP, after a rotation
    /// that renamed the file). Records handed in before this call may still go to the old
    /// file; none is lost or split.
    pub fn reopen(&self) {
        let sh = &*self.shared;
        sh.reopen.store(true, Ordering::SeqCst);
        let _ctl = lock(&sh.ctl);
        if sh.writer_idle.swap(false, Ordering::SeqCst) {
            sh.more.notify_one();
        }
    }

    /// Appends one record; it is written within about `BATCH_WINDOW`.
    pub fn write<T: Serialize + ?Sized>(&self, record: &T) {
        self.append(|buf| serde_json::to_writer(buf, record).map_err(|_| ()));
    }

    /// Appends the record `put` serializes (without its newline).
    fn append(&self, put: impl FnOnce(&mut Vec<u8>) -> Result<(), ()>) {
        let sh = &*self.shared;
        if self.discard {
            // Discard: counted, never serialized.
            sh.written.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let shard = &sh.shards[current_shard()].0;
        let mut st = lock(shard);
        while st.buf.len() >= MAX_SHARD_BYTES && !sh.closed.load(Ordering::SeqCst) {
            drop(st);
            let mut ctl = lock(&sh.ctl);
            ctl.waiting += 1;
            // Bounded: room is re-checked on the buffer itself, not only when told.
            ctl = sh
                .progress
                .wait_timeout(ctl, BATCH_WINDOW)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            ctl.waiting -= 1;
            drop(ctl);
            st = lock(shard);
        }
        if sh.closed.load(Ordering::SeqCst) {
            drop(st);
            sh.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!("audit record after the audit log closed");
            return;
        }
        let mark = st.buf.len();
        if put(&mut st.buf).is_err() {
            st.buf.truncate(mark);
            drop(st);
            sh.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!("audit record could not be serialized");
            return;
        }
        st.buf.push(b'\n');
        st.records += 1;
        st.appended += 1;
        drop(st);
        // Read after the record is in (see `write_loop` for why none is missed).
        if sh.writer_idle.load(Ordering::SeqCst) {
            let _ctl = lock(&sh.ctl);
            if sh.writer_idle.swap(false, Ordering::SeqCst) {
                sh.more.notify_one();
            }
        }
    }

    /// Blocks until every record handed in before this call has been written (or failed),
    /// for at most `FLUSH_WAIT`: a stuck disk must not hold a shutdown forever.
    pub fn flush(&self) {
        let sh = &*self.shared;
        let deadline = std::time::Instant::now() + FLUSH_WAIT;
        let target: Vec<u64> = sh.shards.iter().map(|s| lock(&s.0).appended).collect();
        let mut ctl = lock(&sh.ctl);
        while ctl.settled.iter().zip(&target).any(|(s, t)| s < t)
            && !sh.closed.load(Ordering::SeqCst)
        {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                tracing::error!("audit records still pending after {FLUSH_WAIT:?}");
                return;
            }
            ctl.waiting += 1;
            ctl = sh
                .progress
                .wait_timeout(ctl, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            ctl.waiting -= 1;
        }
    }

    /// The record of a finished request; `latency`: from its start until now.
    pub fn request(
        &self,
        ctx: &RequestCtx,
        status: StatusCode,
        refusal: Option<&GatewayError>,
        latency: Duration,
    ) {
        let rec = request_record(ctx, status, refusal, latency);
        self.append(|buf| {
            rec.write_json(buf);
            Ok(())
        });
    }
    /// One record per rules reload, successful or not.
    pub fn reload(&self, trigger: &str, outcome: Result<(&str, u64), &str>) {
        let rec = match outcome {
            Ok((sha, generation)) => json!({
                "type": "rules_reload", "ts": humantime_now(), "trigger": trigger, "outcome": "success",
                "rules_sha256": sha, "generation": generation,
            }),
            Err(error) => json!({
                "type": "rules_reload", "ts": humantime_now(), "trigger": trigger, "outcome": "failure", "error": error,
            }),
        };
        self.write(&rec);
    }

    /// One record per admin action (explain, reload over the admin API).
    pub fn admin(
        &self,
        action: &str,
        user: Option<&str>,
        allowed: bool,
        detail: serde_json::Value,
    ) {
        self.write(&json!({
            "type": "admin", "ts": humantime_now(), "action": action, "user": user,
            "decision": if allowed { "allow" } else { "deny" }, "detail": detail,
        }));
    }
}

impl Drop for AuditLog {
    /// Writes what is pending, then stops the writer.
    fn drop(&mut self) {
        {
            let _ctl = lock(&self.shared.ctl);
            self.shared.closed.store(true, Ordering::SeqCst);
            self.shared.more.notify_one();
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// The writer thread: waits for records, lets a batch gather, writes it in one call.
///
/// No record is left waiting while the writer sleeps: it marks itself idle *before* its
/// last look at the buffers, and a producer reads the mark *after* its record is in. So
/// either the writer's look finds the record, or the producer finds the mark and, under
/// `ctl` (held by the writer until it waits), wakes it.
fn write_loop(sh: &Shared, mut out: Target) {
    // Each buffer's twin: the writer swaps a buffer out (no copy under its lock) and hands
    // back the twin it wrote last time, emptied.
    let mut twins: Vec<Vec<u8>> = (0..SHARDS).map(|_| Vec::new()).collect();
    let mut upto = [0u64; SHARDS];
    loop {
        {
            let mut ctl = lock(&sh.ctl);
            loop {
                if sh.any_pending() || sh.reopen.load(Ordering::SeqCst) {
                    break;
                }
                if sh.closed.load(Ordering::SeqCst) {
                    // Closed and nothing left.
                    for (i, s) in sh.shards.iter().enumerate() {
                        ctl.settled[i] = lock(&s.0).appended;
                    }
                    sh.progress.notify_all();
                    return;
                }
                sh.writer_idle.store(true, Ordering::SeqCst);
                if sh.any_pending() || sh.reopen.load(Ordering::SeqCst) {
                    sh.writer_idle.store(false, Ordering::SeqCst);
                    break;
                }
                ctl = sh.more.wait(ctl).unwrap_or_else(|p| p.into_inner());
                sh.writer_idle.store(false, Ordering::SeqCst);
            }
        }
        if !sh.closed.load(Ordering::SeqCst) {
            std::thread::sleep(BATCH_WINDOW);
        }
        let mut records = 0;
        for (i, s) in sh.shards.iter().enumerate() {
            let mut st = lock(&s.0);
            std::mem::swap(&mut st.buf, &mut twins[i]);
            records += std::mem::take(&mut st.records);
            upto[i] = st.appended;
        }
        // Room again for producers held back by a slow disk.
        sh.wake_waiters(&lock(&sh.ctl));
        // Before the batch: a rotation asked for or seen goes first, so this batch lands
        // in the new file.
        let lost = out.follow_rotation(sh.reopen.swap(false, Ordering::SeqCst));
        let result = if lost {
            Err(std::io::Error::other(
                "the audit file was deleted and could not be created again",
            ))
        } else {
            write_all_vectored(out.writer(), &twins).and_then(|()| out.writer().flush())
        };
        match result {
            Ok(()) => {
                sh.written.fetch_add(records, Ordering::Relaxed);
            }
            Err(e) => {
                sh.failures.fetch_add(records, Ordering::Relaxed);
                tracing::error!(error = %e, records, "audit records could not be written");
            }
        }
        for t in &mut twins {
            t.clear();
            // One burst must not pin a large buffer for the life of the process.
            if t.capacity() > 1 << 20 {
                t.shrink_to(64 << 10);
            }
        }
        let mut ctl = lock(&sh.ctl);
        ctl.settled = upto;
        sh.wake_waiters(&ctl);
    }
}

/// Where the writer thread writes.
enum Target {
    Stream(Box<dyn Write + Send>),
    File(AuditFile),
}

impl Target {
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Target::Stream(w) => &mut **w,
            Target::File(f) => &mut f.file,
        }
    }

    /// Follows a rotation of a file sink (asked for, or seen at the path); true when the
    /// file being written is gone and no new one could be made (records would be lost).
    fn follow_rotation(&mut self, asked: bool) -> bool {
        match self {
            Target::Stream(_) => false,
            Target::File(f) => f.follow_rotation(asked),
        }
    }
}

/// An audit file, opened for append, and what identifies it at its path.
struct AuditFile {
    path: PathBuf,
    file: std::fs::File,
    id: Option<FileId>,
    checked: std::time::Instant,
    /// Deleted, and not made again: what is written to it reaches no one.
    lost: bool,
}

/// Device and inode: a renamed or replaced file has another one at the path.
type FileId = (u64, u64);

#[cfg(unix)]
fn file_id(m: &std::fs::Metadata) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    Some((m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(_: &std::fs::Metadata) -> Option<FileId> {
    None
}

/// Whether the open file has no name left (deleted): what is written to it is lost.
#[cfg(unix)]
fn unlinked(f: &std::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    f.metadata().is_ok_and(|m| m.nlink() == 0)
}

#[cfg(not(unix))]
fn unlinked(_: &std::fs::File) -> bool {
    false
}

impl AuditFile {
    fn open(path: PathBuf) -> std::io::Result<AuditFile> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let id = file.metadata().ok().as_ref().and_then(file_id);
        Ok(AuditFile {
            path,
            file,
            id,
            checked: std::time::Instant::now(),
            lost: false,
        })
    }

    /// Reopens the path when asked to, or when (checked at most every `ROTATION_CHECK`)
    /// the file there is not the one being written: renamed, deleted or replaced. True while
    /// the file being written has been deleted and no new one could be made (then every
    /// batch tries again).
    fn follow_rotation(&mut self, asked: bool) -> bool {
        let due = asked || self.lost || self.checked.elapsed() >= ROTATION_CHECK;
        if !due {
            return false;
        }
        self.checked = std::time::Instant::now();
        let moved = asked
            || self.lost
            || match std::fs::metadata(&self.path) {
                Ok(m) => file_id(&m) != self.id,
                Err(_) => true,
            };
        if !moved {
            return false;
        }
        let trigger = if asked { "signal" } else { "rotated" };
        let opened = AuditFile::open(self.path.clone()).and_then(|mut new| {
            // The new file says why it starts here: an auditor sees the chain unbroken.
            let line = json!({"type": "audit_reopen", "ts": humantime_now(), "trigger": trigger});
            new.file.write_all(format!("{line}\n").as_bytes())?;
            Ok(new)
        });
        match opened {
            Ok(new) => {
                *self = new;
                tracing::info!(path = %self.path.display(), trigger, "audit file reopened");
            }
            Err(e) => {
                self.lost = unlinked(&self.file);
                tracing::error!(error = %e, path = %self.path.display(), lost = self.lost,
                    "audit file could not be reopened");
            }
        }
        self.lost
    }
}

/// Writes every buffer, in order, with as few `writev(2)` calls as the kernel allows.
fn write_all_vectored(out: &mut dyn Write, bufs: &[Vec<u8>]) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| std::io::IoSlice::new(b))
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match out.write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => std::io::IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// RFC 3339 UTC timestamp with milliseconds, without pulling in a date crate.
pub fn humantime_now() -> String {
    let ts = Timestamp::now();
    String::from_utf8_lossy(&ts.0).into_owned()
}

pub fn rfc3339(secs: u64, millis: u32) -> String {
    String::from_utf8_lossy(&rfc3339_bytes(secs, millis)).into_owned()
}

/// An RFC 3339 UTC timestamp with milliseconds, as the ASCII bytes it is written as: a
/// request record carries it without an allocation or an escape check.
struct Timestamp([u8; 24]);

impl Timestamp {
    fn now() -> Timestamp {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(rfc3339_bytes(now.as_secs(), now.subsec_millis()))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(std::str::from_utf8(&self.0).unwrap_or_default())
    }
}

fn rfc3339_bytes(secs: u64, millis: u32) -> [u8; 24] {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    // Written digit by digit: this runs for every audit record.
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y.clamp(0, 9999) as u64);
    put(5, 2, m as u64);
    put(8, 2, d as u64);
    put(11, 2, rem / 3600);
    put(14, 2, rem % 3600 / 60);
    put(17, 2, rem % 60);
    put(20, 3, u64::from(millis.min(999)));
    out
}

#[cfg(test)]
mod tests {
    use super::{AuditLog, AuditSink};

    /// The hand-written line is byte for byte serde's, with and without the optional
    /// parts, for plain strings and for every character that needs escaping.
    #[test]
    fn hand_written_request_record_equals_serde() {
        use crate::access::{Permission, PermissionVerdict, Source};
        let odd = "a\"b\\c\u{1}d\ne\u{7f}é\u{2028}";
        let required = vec![
            Permission::parse("cdp:patient:view").unwrap(),
            Permission::parse("report:export").unwrap(),
        ];
        let verdicts = vec![
            PermissionVerdict::Granted {
                permission: "cdp:patient:view".into(),
                pattern: "cdp:*".into(),
                source: Source::Role {
                    role: odd.into(),
                    policy: "patient-read".into(),
                },
                phi: true,
            },
            PermissionVerdict::NotGranted {
                permission: "x:y".into(),
            },
            PermissionVerdict::Granted {
                permission: odd.into(),
                pattern: "*".into(),
                source: Source::Policy {
                    policy: "everything".into(),
                },
                phi: false,
            },
            PermissionVerdict::Granted {
                permission: "report:export".into(),
                pattern: "report:export".into(),
                source: Source::InlineAllow,
                phi: false,
            },
        ];
        // Each character that needs escaping on its own, then none that does.
        let texts = [
            "a\"b",
            "a\\b",
            "a\u{0}b",
            "\n",
            "x\u{1f}",
            "é\u{7f}\u{2028}",
            odd,
            "",
        ];
        let rendered = super::granted_by_json(&verdicts);
        let cases = texts.iter().flat_map(|t| [(*t, true), (*t, false)]);
        for ((text, full), pre) in cases.flat_map(|c| [(c, false), (c, true)]) {
            // Paths that need no escape at all, and one that does (the text's own).
            let paths: crate::masking::Paths =
                ["$['patients'][0]['ssn']", text].into_iter().collect();
            let rec = super::RequestRecord {
                kind: "request",
                ts: super::Timestamp(super::rfc3339_bytes(1_796_486_400 + 57_600, 123)),
                request_id: text,
                user: full.then_some(text),
                data_access: full.then_some("anonymized"),
                route: full.then_some("patients"),
                method: "GET",
                path: full.then_some(text),
                required: full.then_some(super::Required(&required)),
                decision: "allow",
                reason: "granted",
                granted_by: super::GrantedBy(if full { &verdicts } else { &[] }),
                // The pre-rendered list stands for the same verdicts.
                granted_json: (pre && full).then_some(rendered.as_slice()),
                masked_count: full.then_some(1234),
                masked_paths: full.then_some(&paths),
                masked_paths_truncated: full,
                status: if full { 200 } else { 503 },
                upstream_status: full.then_some(u16::MAX),
                latency_ms: if full { 0.1 + 0.2 } else { 1234.5 },
            };
            let mut hand = Vec::new();
            rec.write_json(&mut hand);
            let serde = serde_json::to_vec(&rec).unwrap();
            assert_eq!(
                String::from_utf8(hand).unwrap(),
                String::from_utf8(serde).unwrap()
            );
        }
    }

    fn lines(p: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is one whole record"))
            .collect()
    }

    #[test]
    fn records_from_every_worker_land_whole_and_in_order_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let log = std::sync::Arc::new(AuditLog::open(&AuditSink::File(p.clone())).unwrap());
        let w =
            crate::server::workers::Workers::start(3, crate::server::workers::Placement::Spread)
                .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for t in 0..3u64 {
            let (log, tx) = (log.clone(), tx.clone());
            w.spawn(async move {
                for i in 0..2000 {
                    log.write(&serde_json::json!({"t": t, "i": i, "pad": "y".repeat(i % 700)}));
                }
                tx.send(()).unwrap();
            });
        }
        for _ in 0..3 {
            rx.recv().unwrap();
        }
        // Each worker's buffer is flushed, written or not yet.
        log.flush();
        w.stop();
        let recs = lines(&p);
        assert_eq!(recs.len(), 6000);
        assert_eq!(log.written(), 6000);
        for t in 0..3 {
            let seq: Vec<u64> = recs
                .iter()
                .filter(|r| r["t"] == t)
                .map(|r| r["i"].as_u64().unwrap())
                .collect();
            assert_eq!(seq, (0..2000).collect::<Vec<u64>>());
        }
    }

    #[test]
    fn concurrent_records_land_as_whole_lines_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let log = std::sync::Arc::new(AuditLog::open(&AuditSink::File(p.clone())).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..500 {
                        log.write(&serde_json::json!({"t": t, "i": i, "pad": "x".repeat(i % 300)}));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        log.flush();
        let recs = lines(&p);
        assert_eq!(recs.len(), 4000);
        assert_eq!(log.written(), 4000);
        assert_eq!(log.failures(), 0);
        // Per writer, records keep their order.
        for t in 0..8 {
            let seq: Vec<u64> = recs
                .iter()
                .filter(|r| r["t"] == t)
                .map(|r| r["i"].as_u64().unwrap())
                .collect();
            assert_eq!(seq, (0..500).collect::<Vec<u64>>());
        }
    }

    #[test]
    fn dropping_the_log_writes_what_is_pending() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&AuditSink::File(p.clone())).unwrap();
        for i in 0..10 {
            log.write(&serde_json::json!({ "i": i }));
        }
        drop(log);
        assert_eq!(lines(&p).len(), 10);
    }

    #[test]
    fn failed_writes_count_every_record_of_the_batch() {
        let log = AuditLog::open(&AuditSink::File("/dev/full".into())).unwrap();
        for i in 0..3 {
            log.write(&serde_json::json!({ "i": i }));
        }
        log.flush();
        assert_eq!(log.failures(), 3);
        assert_eq!(log.written(), 0);
    }

    /// What each line of the file at `p` says: `n` of a test record, or the reopen trigger.
    fn marks(p: &std::path::Path) -> Vec<String> {
        lines(p)
            .iter()
            .map(|l| match l.get("type").and_then(|t| t.as_str()) {
                Some("audit_reopen") => format!("reopen:{}", l["trigger"].as_str().unwrap()),
                _ => format!("n{}", l["n"]),
            })
            .collect()
    }

    fn rotation_check_passes() {
        std::thread::sleep(super::ROTATION_CHECK + std::time::Duration::from_millis(150));
    }

    /// Writes a record `{"n": n}` per number, then waits until they are written.
    fn put(log: &AuditLog, ns: &[u32]) {
        for n in ns {
            log.write(&serde_json::json!({ "n": n }));
        }
        log.flush();
    }

    /// A log at `dir`/audit.jsonl that already holds record 1.
    fn log_with_one(dir: &std::path::Path) -> (std::path::PathBuf, AuditLog) {
        let p = dir.join("audit.jsonl");
        let log = AuditLog::open(&AuditSink::File(p.clone())).unwrap();
        put(&log, &[1]);
        (p, log)
    }

    #[test]
    fn a_renamed_file_is_followed_without_a_signal() {
        let dir = tempfile::tempdir().unwrap();
        let (p, log) = log_with_one(dir.path());
        let old = dir.path().join("audit.jsonl.1");
        std::fs::rename(&p, &old).unwrap();
        rotation_check_passes();
        put(&log, &[2, 3]);
        assert_eq!(marks(&old), ["n1"]);
        assert_eq!(marks(&p), ["reopen:rotated", "n2", "n3"]);
        assert_eq!((log.written(), log.failures()), (3, 0));
    }

    #[test]
    fn reopen_moves_the_next_records_to_the_new_file_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (p, log) = log_with_one(dir.path());
        let old = dir.path().join("audit.jsonl.1");
        std::fs::rename(&p, &old).unwrap();
        log.reopen();
        put(&log, &[2]);
        assert_eq!(marks(&old), ["n1"]);
        assert_eq!(marks(&p), ["reopen:signal", "n2"]);
    }

    #[test]
    fn a_deleted_file_is_created_again() {
        let dir = tempfile::tempdir().unwrap();
        let (p, log) = log_with_one(dir.path());
        std::fs::remove_file(&p).unwrap();
        rotation_check_passes();
        put(&log, &[2]);
        assert_eq!(marks(&p), ["reopen:rotated", "n2"]);
        assert_eq!(log.failures(), 0);
    }

    #[test]
    fn an_unchanged_file_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (p, log) = log_with_one(dir.path());
        rotation_check_passes();
        put(&log, &[2]);
        assert_eq!(marks(&p), ["n1", "n2"]);
    }

    #[test]
    fn records_for_a_deleted_file_that_cannot_be_made_again_are_failures() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).unwrap();
        let (p, log) = log_with_one(&logs);
        std::fs::remove_dir_all(&logs).unwrap();
        log.reopen();
        put(&log, &[2, 3]);
        assert_eq!((log.written(), log.failures()), (1, 2));
        // Every batch tries again (not only once a second) until the path can be made.
        put(&log, &[4]);
        assert_eq!((log.written(), log.failures()), (1, 3));
        std::fs::create_dir(&logs).unwrap();
        put(&log, &[5]);
        assert_eq!((log.written(), log.failures()), (2, 3));
        assert_eq!(marks(&p), ["reopen:rotated", "n5"]);
        // A renamed file that cannot be followed still gets the records: nothing is lost.
        std::fs::remove_dir_all(&logs).unwrap();
        std::fs::create_dir(&logs).unwrap();
        let (q, log2) = log_with_one(&logs);
        let moved = dir.path().join("moved.jsonl");
        std::fs::rename(&q, &moved).unwrap();
        std::fs::remove_dir_all(&logs).unwrap();
        log2.reopen();
        put(&log2, &[6]);
        assert_eq!((log2.written(), log2.failures()), (2, 0));
        assert_eq!(marks(&moved), ["n1", "n6"]);
    }

    #[test]
    fn formats_timestamps() {
        assert_eq!(super::rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(1_795_000_000, 5), "2026-11-18T11:06:40.005Z");
        assert_eq!(super::rfc3339(951_782_400, 999), "2000-02-29T00:00:00.999Z");
        assert_eq!(super::rfc3339(4_102_444_799, 0), "2099-12-31T23:59:59.000Z");
    }
}
