//! Leader election on a `coordination.k8s.io/v1` Lease, with fencing.
//!
//! Every instance keeps its watches and caches warm; only the holder of the Lease calls
//! providers and writes. The rules are client-go's `leaderelection` package's:
//!
//! - A standby takes a Lease whose holder has not renewed it for `leaseDurationSeconds`, timed by
//!   the standby's own clock from the moment it *saw* the record change (never by comparing the
//!   holder's `renewTime` with its own clock, so clock skew between nodes does not matter), or a
//!   Lease whose holder is empty (released). Every write carries the `resourceVersion` it read,
//!   so two standbys cannot both win.
//! - The leader renews every `retry_period`. Writes are **fenced**: each one is allowed only until
//!   `renew_deadline` after the start of the last successful renewal, and is cut off (cancelled)
//!   at that instant. A standby can take over no earlier than `lease_duration` after it saw that
//!   renewal, which it cannot have seen before the renewal started; since
//!   `renew_deadline < lease_duration`, no write of the old leader is started after another
//!   instance may lead. The fence is a point in time, not a flag: a leader whose election task is
//!   stuck stops writing all the same.
//! - On shutdown the leader stops writing, then releases the Lease (empty holder), and a standby
//!   that watches the Lease takes it at once.
//!
//! The maintained `kube-lease-manager` crate was considered and not used: it keeps reporting
//! leadership while renewals fail (it retries with backoff and says nothing), so it cannot fence;
//! it has no renew deadline or retry period (whole seconds, one renewal per period); and it
//! judges expiry by the holder's `renewTime` against the local clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::Error;

/// The name of the Lease.
pub const LEASE_NAME: &str = "tokensource-operator";

/// How the election runs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub namespace: String,
    pub lease_name: String,
    /// Who this instance is: the pod name and a random suffix.
    pub identity: String,
    /// How long a standby waits, after it last saw the Lease renewed, before it takes over.
    pub lease_duration: Duration,
    /// How long after the start of its last successful renewal the leader may write.
    pub renew_deadline: Duration,
    /// How often the leader renews and a standby tries to acquire.
    pub retry_period: Duration,
}

impl Settings {
    /// Checks the durations against each other, as client-go does.
    pub fn check(&self) -> Result<(), String> {
        if self.lease_duration <= self.renew_deadline {
            return Err("--leader-election-lease-duration must be longer than --leader-election-renew-deadline".into());
        }
        if self.renew_deadline <= self.retry_period.mul_f64(1.2) {
            return Err(
                "--leader-election-renew-deadline must be longer than 1.2 × --leader-election-retry-period".into()
            );
        }
        if self.retry_period.is_zero() {
            return Err("--leader-election-retry-period must be positive".into());
        }
        Ok(())
    }
}

/// A holder identity: the pod name (or the host name) and a random suffix, so two processes in
/// one pod, or a restarted pod, never take each other for the holder.
pub fn identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "tokensource-operator".into());
    format!("{base}_{:08x}", rand::random::<u32>())
}

/// Whether this instance may write now. Shared by every write of the controller.
#[derive(Debug)]
pub struct Leadership {
    /// False for a single instance without election: it always leads.
    elected: bool,
    /// While leading: the instant writes must stop unless the Lease is renewed before.
    fence: Mutex<Option<Instant>>,
    leading: watch::Sender<bool>,
}

impl Default for Leadership {
    fn default() -> Self {
        Self::single()
    }
}

impl Leadership {
    /// A single instance: leads from the start, with no fence.
    pub fn single() -> Self {
        Self { elected: false, fence: Mutex::new(None), leading: watch::channel(true).0 }
    }

    /// An instance that leads only while it holds the Lease.
    pub fn elected() -> Self {
        Self { elected: true, fence: Mutex::new(None), leading: watch::channel(false).0 }
    }

    fn fence_until(&self) -> Option<Instant> {
        *self.fence.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether this instance may call providers and write now.
    pub fn is_leading(&self) -> bool {
        !self.elected || self.fence_until().is_some_and(|t| Instant::now() < t)
    }

    /// Runs one write if this instance leads, cancelling it at the fence.
    pub async fn fenced<T>(&self, write: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        if !self.elected {
            return write.await;
        }
        match self.fence_until().filter(|t| Instant::now() < *t) {
            Some(deadline) => tokio::time::timeout_at(deadline, write).await.unwrap_or(Err(Error::NotLeader)),
            None => Err(Error::NotLeader),
        }
    }

    /// Leadership as it changes: `true` once the Lease is won, `false` once it is lost.
    pub fn changes(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// A renewal (or the acquisition) that started at `started` succeeded.
    fn renewed(&self, started: Instant, renew_deadline: Duration) {
        *self.fence.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(started + renew_deadline);
        self.leading.send_if_modified(|l| !std::mem::replace(l, true));
    }

    /// Stops every write at once.
    fn step_down(&self) {
        *self.fence.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        self.leading.send_if_modified(|l| std::mem::replace(l, false));
    }
}

/// The Lease record as last seen, and when this instance saw it change.
struct Observed {
    spec: LeaseSpec,
    at: Instant,
}

/// One instance's side of the election.
pub struct Elector {
    api: Api<Lease>,
    settings: Settings,
    leadership: Arc<Leadership>,
    observed: Option<Observed>,
    /// The Lease as this instance last wrote it, for renewals without a read.
    written: Option<Lease>,
}

/// The watch of the one Lease, retried with backoff when the API fails.
fn lease_watch(
    api: &Api<Lease>,
    fields: &str,
) -> std::pin::Pin<Box<dyn futures::Stream<Item = Result<watcher::Event<Lease>, watcher::Error>> + Send>> {
    Box::pin(watcher(api.clone(), watcher::Config::default().fields(fields)).default_backoff())
}

fn micro_now() -> MicroTime {
    MicroTime(Timestamp::now())
}

/// Whole seconds, rounded up: a standby never waits less than the leader assumes.
fn whole_seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs() + u64::from(d.subsec_nanos() > 0)).unwrap_or(i32::MAX)
}

impl Elector {
    /// `tokensource_leader` follows `leadership` (the controller sets it on every change).
    pub fn new(client: kube::Client, settings: Settings, leadership: Arc<Leadership>) -> Self {
        let api = Api::namespaced(client, &settings.namespace);
        Self { api, settings, leadership, observed: None, written: None }
    }

    /// Takes part in the election until `stop` turns true, then releases the Lease if held.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let s = &self.settings;
        tracing::info!(identity = %s.identity, lease = %format!("{}/{}", s.namespace, s.lease_name), "leader election: standing by");
        // Changes of the Lease wake a standby at once (a release is taken without waiting).
        let fields = format!("metadata.name={}", s.lease_name);
        let mut changes = lease_watch(&self.api, &fields);
        loop {
            let leading = self.leadership.is_leading();
            let pause = if leading {
                self.settings.retry_period
            } else {
                self.settings.retry_period.mul_f64(1.0 + rand::random::<f64>() * 0.2)
            };
            let started = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(true) => self.leadership_held(started),
                Ok(false) => self.not_held(),
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: cannot reach the Lease");
                    self.not_held();
                }
            }
            let wake = Instant::now() + pause;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => break,
                    _ = stop.changed() => {
                        self.release().await;
                        return;
                    }
                    // The watch is drained while leading too, so it never backs up.
                    event = changes.next() => match event {
                        // A change of the record (a release, another holder): a standby looks
                        // again now.
                        Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)))
                            if !self.leadership.is_leading() => break,
                        Some(_) => {}
                        None => changes = lease_watch(&self.api, &fields),
                    },
                }
            }
        }
    }

    fn leadership_held(&mut self, started: Instant) {
        if !self.leadership.is_leading() {
            tracing::info!(identity = %self.settings.identity, "leader election: leading");
        }
        self.leadership.renewed(started, self.settings.renew_deadline);
    }

    /// A failed renewal: the leader keeps leading until its fence, then steps down.
    fn not_held(&mut self) {
        if self.leadership.is_leading() {
            return;
        }
        if *self.leadership.leading.borrow() {
            tracing::warn!(identity = %self.settings.identity, "leader election: lost the Lease; every write stopped");
            self.leadership.step_down();
            self.written = None;
        }
    }

    /// One round of client-go's `tryAcquireOrRenew`: `Ok(true)` when this instance holds the Lease.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let deadline = self.settings.renew_deadline;
        let round = async {
            // Renewing what this instance wrote last needs no read; a conflict falls back to one.
            if let Some(mut lease) = self.written.clone().filter(|_| self.leadership.is_leading()) {
                if let Some(spec) = lease.spec.as_mut() {
                    spec.renew_time = Some(micro_now());
                }
                match self.api.replace(&self.settings.lease_name, &PostParams::default(), &lease).await {
                    Ok(l) => {
                        self.written = Some(l);
                        return Ok(true);
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
            let Some(current) = self.api.get_opt(&self.settings.lease_name).await? else {
                return self.create().await;
            };
            self.acquire_or_renew(current).await
        };
        // A round never outlives the renew deadline (a hung API must not hold the loop).
        tokio::time::timeout(deadline, round).await.unwrap_or(Ok(false))
    }

    async fn create(&mut self) -> Result<bool, kube::Error> {
        let now = micro_now();
        let lease = Lease {
            metadata: ObjectMeta { name: Some(self.settings.lease_name.clone()), ..Default::default() },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.settings.identity.clone()),
                lease_duration_seconds: Some(whole_seconds(self.settings.lease_duration)),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(l) => {
                self.written = Some(l);
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn acquire_or_renew(&mut self, mut current: Lease) -> Result<bool, kube::Error> {
        let spec = current.spec.clone().unwrap_or_default();
        if self.observed.as_ref().is_none_or(|o| o.spec != spec) {
            self.observed = Some(Observed { spec: spec.clone(), at: Instant::now() });
        }
        let me = self.settings.identity.as_str();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let held_by_me = holder == Some(me);
        if let (Some(_), false) = (holder, held_by_me) {
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.settings.lease_duration, Duration::from_secs);
            let seen = self.observed.as_ref().map_or_else(Instant::now, |o| o.at);
            if Instant::now() < seen + duration {
                return Ok(false);
            }
        }
        let now = micro_now();
        let mut next = spec.clone();
        next.holder_identity = Some(me.to_string());
        next.lease_duration_seconds = Some(whole_seconds(self.settings.lease_duration));
        next.renew_time = Some(now.clone());
        if !held_by_me {
            next.acquire_time = Some(now);
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        current.spec = Some(next);
        // The resourceVersion read above makes this a compare-and-swap.
        match self.api.replace(&self.settings.lease_name, &PostParams::default(), &current).await {
            Ok(l) => {
                if !held_by_me {
                    tracing::info!(identity = %me, previous = holder.unwrap_or("<none>"), "leader election: acquired the Lease");
                }
                self.observed = l.spec.clone().map(|spec| Observed { spec, at: Instant::now() });
                self.written = Some(l);
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Stops writing, then hands the Lease back (empty holder) so a standby takes it at once.
    async fn release(&mut self) {
        let was_leading = self.leadership.is_leading();
        self.leadership.step_down();
        let Some(mut lease) = self.written.take().filter(|_| was_leading) else { return };
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(micro_now());
        }
        let params = PostParams::default();
        let put = self.api.replace(&self.settings.lease_name, &params, &lease);
        match tokio::time::timeout(self.settings.renew_deadline, put).await {
            Ok(Ok(_)) => tracing::info!(identity = %self.settings.identity, "leader election: released the Lease"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "leader election: could not release the Lease; a standby takes it when it expires")
            }
            Err(_) => {
                tracing::warn!("leader election: releasing the Lease timed out; a standby takes it when it expires")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(lease: u64, renew: u64, retry: u64) -> Settings {
        Settings {
            namespace: "ns".into(),
            lease_name: LEASE_NAME.into(),
            identity: "a".into(),
            lease_duration: Duration::from_millis(lease),
            renew_deadline: Duration::from_millis(renew),
            retry_period: Duration::from_millis(retry),
        }
    }

    #[test]
    fn durations_are_checked_against_each_other() {
        assert!(settings(15_000, 10_000, 2_000).check().is_ok());
        assert!(settings(10_000, 10_000, 2_000).check().unwrap_err().contains("lease-duration"));
        assert!(settings(15_000, 2_000, 2_000).check().unwrap_err().contains("renew-deadline"));
        assert!(settings(15_000, 10_000, 0).check().is_err());
    }

    #[test]
    fn lease_seconds_round_up() {
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(15)), 15);
    }

    #[tokio::test]
    async fn writes_stop_at_the_fence_and_a_slow_write_is_cut_off() {
        let l = Leadership::elected();
        assert!(!l.is_leading());
        assert!(matches!(l.fenced(async { Ok(()) }).await, Err(Error::NotLeader)));
        l.renewed(Instant::now(), Duration::from_millis(300));
        assert!(l.is_leading() && *l.changes().borrow());
        assert!(l.fenced(async { Ok(1) }).await.is_ok());
        // A write that would end after the fence is cancelled at the fence.
        let slow = l.fenced(async {
            tokio::time::sleep(Duration::from_secs(20)).await;
            Ok(())
        });
        let started = Instant::now();
        assert!(matches!(slow.await, Err(Error::NotLeader)));
        assert!(started.elapsed() < Duration::from_secs(5), "cut off after {:?}", started.elapsed());
        // Past the fence nothing is written, whether or not anyone noticed.
        assert!(!l.is_leading());
        assert!(matches!(l.fenced(async { Ok(()) }).await, Err(Error::NotLeader)));
        l.step_down();
        assert!(!*l.changes().borrow());
    }

    #[tokio::test]
    async fn a_single_instance_always_writes() {
        let l = Leadership::single();
        assert!(l.is_leading());
        assert_eq!(l.fenced(async { Ok(7) }).await.ok(), Some(7));
    }
}
