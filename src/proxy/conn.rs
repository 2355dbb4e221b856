//! What one client connection keeps between its requests: the client's address, the rules
//! snapshot it last used, and the caller its last permitted request settled.
//!
//! A keep-alive client sends the same token on every request of a connection, mostly to the
//! same route: while the token, the snapshot and the route are the same, the answer is the
//! same, and the token and permission caches are not asked again. It also keeps a request
//! from touching objects every worker shares: each `Arc` a request clones here is one only
//! this connection, and so one worker thread, uses. Clones of gateway-wide objects (the
//! gateway, the snapshot, a popular caller's identity) moved their reference counts between
//! the two cores' caches on every request (benches/RESULTS.md).

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::{Instant, Sleep};

use http::HeaderValue;

use crate::access::{PermissionVerdict, Resolved};
use crate::auth::jwt::Identity;
use crate::config::rules::RuleSnapshot;
use crate::masking::FieldSet;

use super::Gateway;

/// One rules snapshot as this connection holds it (see the module comment).
pub struct Pinned(pub Arc<RuleSnapshot>);

impl std::ops::Deref for Pinned {
    type Target = RuleSnapshot;
    fn deref(&self) -> &RuleSnapshot {
        &self.0
    }
}

/// Who called and what the authorize phase concluded, for one route on one snapshot.
pub struct Caller {
    /// The `Authorization` value it was verified from, as received.
    header: Box<[u8]>,
    rules: Arc<Pinned>,
    pub route: usize,
    pub identity: Arc<Identity>,
    pub resolved: Arc<Resolved>,
    pub verdicts: Vec<PermissionVerdict>,
    /// The audit record's `granted_by` list, rendered once.
    pub granted_json: Vec<u8>,
    /// Permitted and masked with this set; `None`: permitted raw, or refused.
    pub mask: Option<Arc<FieldSet>>,
    /// The user as the `X-Phigate-User` value, made once (`None`: not a valid header value).
    pub user_header: Option<HeaderValue>,
}

impl Caller {
    pub fn new(
        header: &HeaderValue,
        rules: Arc<Pinned>,
        route: usize,
        identity: Arc<Identity>,
        resolved: Arc<Resolved>,
        verdicts: Vec<PermissionVerdict>,
        mask: Option<Arc<FieldSet>>,
    ) -> Caller {
        Caller {
            header: header.as_bytes().into(),
            granted_json: crate::audit::granted_by_json(&verdicts),
            user_header: HeaderValue::from_str(&identity.user).ok(),
            rules,
            route,
            identity,
            resolved,
            verdicts,
            mask,
        }
    }

    /// The same token on the same snapshot, and the token still unexpired.
    fn knows(&self, header: &HeaderValue, rules: &Arc<Pinned>, now: u64) -> bool {
        Arc::ptr_eq(&self.rules, rules)
            && now < self.identity.exp
            && *self.header == *header.as_bytes()
    }
}

/// One client connection, shared by its requests (on h2, its concurrent streams); it lives
/// on one worker. The locks are held for a pointer copy, never across an `.await`.
pub struct Connection {
    pub gateway: Arc<Gateway>,
    /// The client's address as the upstream sees it (`X-Forwarded-For`), made once.
    pub peer_ip: HeaderValue,
    rules: Mutex<Option<Arc<Pinned>>>,
    caller: Mutex<Option<Arc<Caller>>>,
    /// The upstream deadline timer of the connection's last request, kept for the next:
    /// moving a registered timer to a later deadline is one atomic store, where a new one
    /// enters the runtime's timer wheel and leaves it again on every request.
    timer: Mutex<Option<Pin<Box<Sleep>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Connection {
    pub fn new(gateway: Arc<Gateway>, peer_ip: HeaderValue) -> Connection {
        Connection {
            gateway,
            peer_ip,
            rules: Mutex::new(None),
            caller: Mutex::new(None),
            timer: Mutex::new(None),
        }
    }

    /// A timer that fires at `deadline`: the kept one if it is free (h2's concurrent
    /// streams may find it taken), else a new one. It goes back to the connection when
    /// dropped, whichever way the request ends.
    pub fn timer(&self, deadline: Instant) -> KeptTimer<'_> {
        let sleep = match lock(&self.timer).take() {
            Some(mut t) => {
                t.as_mut().reset(deadline);
                t
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        KeptTimer {
            conn: self,
            sleep: Some(sleep),
        }
    }

    /// The current snapshot, as this connection holds it: the one it already holds while no
    /// reload has replaced it. A request keeps what this returns to its end.
    pub fn rules(&self) -> Arc<Pinned> {
        let current = self.gateway.rules.load();
        let mut held = lock(&self.rules);
        if let Some(p) = &*held {
            if Arc::ptr_eq(&p.0, &current) {
                return p.clone();
            }
        }
        let p = Arc::new(Pinned(arc_swap::Guard::into_inner(current)));
        *held = Some(p.clone());
        p
    }

    /// The last permitted caller, if it answers for this request.
    pub fn remembered(
        &self,
        header: &HeaderValue,
        rules: &Arc<Pinned>,
        route: usize,
        now: u64,
    ) -> Option<Arc<Caller>> {
        lock(&self.caller)
            .as_ref()
            .filter(|c| c.route == route && c.knows(header, rules, now))
            .cloned()
    }

    /// The caller the last identity lookup found for this header, on any route: the token
    /// is not verified again, only the route's permissions are checked.
    pub fn identity_for(
        &self,
        header: &HeaderValue,
        rules: &Arc<Pinned>,
        now: u64,
    ) -> Option<(Arc<Identity>, Arc<Resolved>)> {
        lock(&self.caller)
            .as_ref()
            .filter(|c| c.knows(header, rules, now))
            .map(|c| (c.identity.clone(), c.resolved.clone()))
    }

    pub fn remember(&self, caller: Arc<Caller>) {
        *lock(&self.caller) = Some(caller);
    }
}

/// A request's upstream deadline, lent by its connection (`Connection::timer`).
pub struct KeptTimer<'c> {
    conn: &'c Connection,
    /// Always `Some` until dropped.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl KeptTimer<'_> {
    fn sleep(&mut self) -> Pin<&mut Sleep> {
        self.sleep.as_mut().expect("held until dropped").as_mut()
    }

    pub fn reset(&mut self, deadline: Instant) {
        self.sleep().reset(deadline);
    }
}

impl std::future::Future for KeptTimer<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.get_mut().sleep().poll(cx)
    }
}

impl Drop for KeptTimer<'_> {
    fn drop(&mut self) {
        // A fired timer is kept too: its next reset registers it again.
        if let Some(t) = self.sleep.take() {
            *lock(&self.conn.timer) = Some(t);
        }
    }
}
