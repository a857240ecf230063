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
//!   at that instant unless a renewal moved the fence meanwhile. A standby can take over no
//!   earlier than `lease_duration` after it saw that renewal, which it cannot have seen before the
//!   renewal started; since `renew_deadline < lease_duration`, no write of the old leader is
//!   started after another instance may lead. The fence is a point in time, not a flag: a leader
//!   whose election task is stuck stops writing all the same. Provider calls are fenced the same
//!   way, so an old leader never has a request in flight once another instance may lead.
//! - A slow API (a Lease round trip longer than `renew_deadline − retry_period`) lets the fence
//!   lapse between renewals that all succeed. The leader writes nothing in such a gap, but it has
//!   not lost the Lease: when the renewal under way succeeds it announces a resumption, and the
//!   controller does the work it refused in the gap. Rounds start `retry_period` apart (back to
//!   back when slower), and a leader renews with one request per round.
//! - A leader steps down at once, whatever its fence says, when it learns that another instance
//!   holds the Lease: from a renewal that finds another holder, loses a compare-and-swap or finds
//!   the Lease deleted, or from the Lease's watch (once the watch has shown this instance's own
//!   acquisition, so an event from before it is not taken for news).
//! - On shutdown the leader stops writing, then releases the Lease (empty holder), and a standby
//!   that watches the Lease takes it at once.
//!
//! The maintained `kube-lease-manager` crate was considered and not used: it keeps reporting
//! leadership while renewals fail (it retries with backoff and says nothing), so it cannot fence;
//! it has no renew deadline or retry period (whole seconds, one renewal per period); and it
//! judges expiry by the holder's `renewTime` against the local clock.

use std::sync::Arc;
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
///
/// Three states: a standby (no fence), a leader whose fence holds, and a leader whose fence has
/// lapsed while a renewal is still under way (a slow API): it starts nothing then, but it has not
/// lost the Lease, and when the renewal succeeds the work it refused is done (see
/// [`Leadership::resumptions`]).
#[derive(Debug)]
pub struct Leadership {
    /// False for a single instance without election: it always leads.
    elected: bool,
    /// While leading, the fence. A watch, so that work in flight is cut off at once when the
    /// instance steps down and carries on when the fence moves.
    fence: watch::Sender<Option<Fence>>,
    leading: watch::Sender<bool>,
    /// How many times the fence was renewed after it had lapsed.
    resumed: watch::Sender<u64>,
}

/// The two instants a successful renewal (sent at `s`) sets.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Fence {
    /// `s + renew_deadline`: nothing new (a write, a provider call) starts after it.
    start_by: Instant,
    /// Halfway from `start_by` to `s + lease_duration`, the earliest another instance can lead:
    /// work in flight is cut off here unless a renewal moved the fence. The other half is the
    /// margin for the clocks of the two nodes running at different rates, and for a request on
    /// the wire to land.
    cut_at: Instant,
}

impl Fence {
    fn after(sent: Instant, renew_deadline: Duration, lease_duration: Duration) -> Self {
        let start_by = sent + renew_deadline;
        let cut_at = start_by + lease_duration.saturating_sub(renew_deadline) / 2;
        Self { start_by, cut_at }
    }
}

impl Default for Leadership {
    fn default() -> Self {
        Self::single()
    }
}

impl Leadership {
    /// A single instance: leads from the start, with no fence.
    pub fn single() -> Self {
        Self::new(false)
    }

    /// An instance that leads only while it holds the Lease.
    pub fn elected() -> Self {
        Self::new(true)
    }

    fn new(elected: bool) -> Self {
        Self {
            elected,
            fence: watch::channel(None).0,
            leading: watch::channel(!elected).0,
            resumed: watch::channel(0).0,
        }
    }

    /// Whether this instance may start a provider call or a write now.
    pub fn is_leading(&self) -> bool {
        !self.elected || self.fence.borrow().is_some_and(|f| Instant::now() < f.start_by)
    }

    /// Whether this instance holds the Lease as far as it knows, fence or no fence: work it
    /// refuses while the fence has lapsed is due again when the renewal under way succeeds.
    pub fn holds_lease(&self) -> bool {
        *self.leading.borrow()
    }

    /// Runs `work` if this instance leads: `None`, and `work` cancelled, once the fence cuts it
    /// off or the instance steps down. A renewal that moves the fence meanwhile lets it go on.
    pub async fn while_leading<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        if !self.elected {
            return Some(work.await);
        }
        if !self.is_leading() {
            return None;
        }
        let mut fence = self.fence.subscribe();
        let mut work = std::pin::pin!(work);
        loop {
            let cut_at = (*fence.borrow_and_update()).map(|f| f.cut_at).filter(|t| Instant::now() < *t)?;
            tokio::select! {
                done = &mut work => return Some(done),
                () = tokio::time::sleep_until(cut_at) => {}
                changed = fence.changed() => changed.ok()?,
            }
        }
    }

    /// Runs one write if this instance leads, cancelling it at the fence.
    pub async fn fenced<T>(&self, write: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        self.while_leading(write).await.unwrap_or(Err(Error::NotLeader))
    }

    /// Leadership as it changes: `true` once the Lease is won, `false` once it is lost.
    pub fn changes(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Counts the renewals that came after the fence had lapsed: whatever was refused in the gap
    /// is to be done now.
    pub fn resumptions(&self) -> watch::Receiver<u64> {
        self.resumed.subscribe()
    }

    /// A renewal (or the acquisition) whose write was sent at `sent` succeeded.
    fn renewed(&self, sent: Instant, renew_deadline: Duration, lease_duration: Duration) {
        let now = Instant::now();
        let before = self.fence.send_replace(Some(Fence::after(sent, renew_deadline, lease_duration)));
        if before.is_some_and(|f| f.start_by <= now) {
            self.resumed.send_modify(|n| *n += 1);
        }
        self.leading.send_if_modified(|l| !std::mem::replace(l, true));
    }

    /// Stops every write at once, including writes in flight.
    fn step_down(&self) {
        self.fence.send_replace(None);
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
    /// The Lease's watch has shown one of this instance's own writes since it acquired the
    /// Lease: from then on the watch shows every later change, so another holder or a deletion it
    /// shows is news, not an event from before the acquisition.
    confirmed: bool,
    /// The resourceVersions of this instance's latest writes of the Lease in this term, to
    /// recognise them in the watch (an event showing this instance as the holder may be from an
    /// earlier term).
    own_versions: std::collections::VecDeque<String>,
}

/// What one round of the election found.
#[derive(Debug)]
enum Round {
    /// This instance holds the Lease: it renewed or acquired it with a write sent at this
    /// instant.
    Held(Instant),
    /// Another instance holds the Lease, or won the race for it.
    Taken,
    /// The round could not tell: the API failed or did not answer within the renew deadline.
    Unknown(String),
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

fn holder(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()).filter(|h| !h.is_empty())
}

impl Elector {
    /// `tokensource_leader` follows `leadership` (the controller sets it on every change).
    pub fn new(client: kube::Client, settings: Settings, leadership: Arc<Leadership>) -> Self {
        let api = Api::namespaced(client, &settings.namespace);
        Self {
            api,
            settings,
            leadership,
            observed: None,
            written: None,
            confirmed: false,
            own_versions: Default::default(),
        }
    }

    /// Takes part in the election until `stop` turns true, then releases the Lease if held.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let s = &self.settings;
        tracing::info!(identity = %s.identity, lease = %format!("{}/{}", s.namespace, s.lease_name), "leader election: standing by");
        // Changes of the Lease wake a standby at once (a release is taken without waiting), and
        // tell a leader at once that another instance took the Lease.
        let fields = format!("metadata.name={}", s.lease_name);
        let mut changes = lease_watch(&self.api, &fields);
        loop {
            let pause = if self.leadership.holds_lease() {
                self.settings.retry_period
            } else {
                self.settings.retry_period.mul_f64(1.0 + rand::random::<f64>() * 0.2)
            };
            let started = Instant::now();
            match self.try_acquire_or_renew().await {
                Round::Held(sent) => self.leadership_held(sent),
                Round::Taken => self.lost("another instance holds the Lease"),
                Round::Unknown(e) => {
                    tracing::warn!(error = %e, "leader election: cannot reach the Lease");
                    self.not_held();
                }
            }
            // Rounds start `pause` apart, or back to back when the API is slower than that: the
            // fence of a slow renewal lapses for as short a time as it can.
            let wake = started + pause;
            loop {
                // Biased: the watch's news is read before the next round even when a slow round
                // left no time to wait.
                tokio::select! {
                    biased;
                    _ = stop.changed() => {
                        self.release().await;
                        return;
                    }
                    event = changes.next() => match event {
                        Some(Ok(event)) => {
                            if self.seen(event) {
                                break;
                            }
                        }
                        Some(Err(_)) => {}
                        None => changes = lease_watch(&self.api, &fields),
                    },
                    _ = tokio::time::sleep_until(wake) => break,
                }
            }
        }
    }

    /// A change of the Lease as its watch shows it; `true` to look at the Lease again now.
    fn seen(&mut self, event: watcher::Event<Lease>) -> bool {
        let me = self.settings.identity.as_str();
        let (other, what) = match &event {
            watcher::Event::Apply(l) | watcher::Event::InitApply(l) => match holder(l) {
                Some(h) if h == me => {
                    let version = l.metadata.resource_version.as_deref();
                    if version.is_some_and(|v| self.own_versions.iter().any(|o| o == v)) {
                        self.confirmed = true;
                    }
                    return false;
                }
                Some(_) => (true, "another instance took the Lease"),
                None => (true, "the Lease was released by someone else"),
            },
            watcher::Event::Delete(_) => (true, "the Lease was deleted"),
            watcher::Event::Init | watcher::Event::InitDone => (false, ""),
        };
        if !other {
            return false;
        }
        if !self.leadership.holds_lease() {
            // A standby looks again now: the Lease may be free.
            return true;
        }
        if self.confirmed {
            // A leader stops writing at once, whatever its fence says, and looks again.
            self.lost(what);
            return true;
        }
        false
    }

    fn leadership_held(&mut self, sent: Instant) {
        if !self.leadership.holds_lease() {
            tracing::info!(identity = %self.settings.identity, "leader election: leading");
        }
        self.leadership.renewed(sent, self.settings.renew_deadline, self.settings.lease_duration);
    }

    /// Remembers what this instance wrote to the Lease, to renew it without a read and to
    /// recognise it in the watch.
    fn wrote(&mut self, lease: Lease) {
        if let Some(v) = &lease.metadata.resource_version {
            if self.own_versions.len() >= 16 {
                self.own_versions.pop_front();
            }
            self.own_versions.push_back(v.clone());
        }
        self.written = Some(lease);
    }

    /// Another instance holds the Lease (or may, any moment): every write stops now.
    fn lost(&mut self, why: &str) {
        if self.leadership.holds_lease() {
            tracing::warn!(identity = %self.settings.identity, why, "leader election: lost the Lease; every write stopped");
        }
        self.leadership.step_down();
        self.written = None;
        self.confirmed = false;
        self.own_versions.clear();
    }

    /// A failed renewal: the leader keeps leading until its fence, then steps down.
    fn not_held(&mut self) {
        if self.leadership.is_leading() || !self.leadership.holds_lease() {
            return;
        }
        self.lost("the Lease could not be renewed before the renew deadline");
    }

    /// One round of client-go's `tryAcquireOrRenew`. Each request is bounded by the renew
    /// deadline, not the round: an acquisition (a read, then a write) still succeeds when each
    /// round trip takes most of it. The fence counts from when the winning write was sent.
    async fn try_acquire_or_renew(&mut self) -> Round {
        match self.round().await {
            Ok(round) => round,
            Err(e) => Round::Unknown(e),
        }
    }

    /// `request` bounded by the renew deadline (a hung API must not hold the loop).
    async fn timed<T>(
        &self,
        request: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<Result<T, kube::Error>, String> {
        let deadline = self.settings.renew_deadline;
        tokio::time::timeout(deadline, request)
            .await
            .map_err(|_| format!("no answer within the renew deadline ({deadline:?})"))
    }

    async fn round(&mut self) -> Result<Round, String> {
        let name = self.settings.lease_name.clone();
        // Renewing what this instance wrote last needs no read (also while the fence has lapsed:
        // a slow API gets one round trip per round, not two); a conflict falls back to one.
        if let Some(mut lease) = self.written.clone().filter(|_| self.leadership.holds_lease()) {
            if let Some(spec) = lease.spec.as_mut() {
                spec.renew_time = Some(micro_now());
            }
            let sent = Instant::now();
            match self.timed(self.api.replace(&name, &PostParams::default(), &lease)).await? {
                Ok(l) => {
                    self.wrote(l);
                    return Ok(Round::Held(sent));
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                // Deleted under this leader: a standby may create it any moment.
                Err(kube::Error::Api(e)) if e.code == 404 => self.lost("the Lease was deleted"),
                Err(e) => return Err(e.to_string()),
            }
        }
        let current = self.timed(self.api.get_opt(&name)).await?.map_err(|e| e.to_string())?;
        match current {
            None => self.create().await,
            Some(current) => self.acquire_or_renew(current).await,
        }
    }

    async fn create(&mut self) -> Result<Round, String> {
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
        let sent = Instant::now();
        match self.timed(self.api.create(&PostParams::default(), &lease)).await? {
            Ok(l) => {
                tracing::info!(identity = %self.settings.identity, "leader election: created and acquired the Lease");
                self.acquired(l);
                Ok(Round::Held(sent))
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Round::Taken),
            Err(e) => Err(e.to_string()),
        }
    }

    /// This instance won the Lease: what it wrote, and a watch yet to show it.
    fn acquired(&mut self, lease: Lease) {
        self.observed = lease.spec.clone().map(|spec| Observed { spec, at: Instant::now() });
        self.confirmed = false;
        self.own_versions.clear();
        self.wrote(lease);
    }

    async fn acquire_or_renew(&mut self, mut current: Lease) -> Result<Round, String> {
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
                return Ok(Round::Taken);
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
        let sent = Instant::now();
        let name = self.settings.lease_name.clone();
        match self.timed(self.api.replace(&name, &PostParams::default(), &current)).await? {
            Ok(l) if held_by_me => {
                self.observed = l.spec.clone().map(|spec| Observed { spec, at: Instant::now() });
                self.wrote(l);
                Ok(Round::Held(sent))
            }
            Ok(l) => {
                let me = self.settings.identity.as_str();
                tracing::info!(identity = %me, previous = holder.unwrap_or("<none>"), "leader election: acquired the Lease");
                self.acquired(l);
                Ok(Round::Held(sent))
            }
            // Someone else wrote the Lease since it was read: maybe a takeover.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Round::Taken),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Stops writing, then hands the Lease back (empty holder) so a standby takes it at once.
    async fn release(&mut self) {
        let was_leading = self.leadership.holds_lease();
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
        l.renewed(Instant::now(), Duration::from_millis(300), Duration::from_millis(300));
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
    async fn work_goes_on_while_the_fence_moves_and_stops_at_a_step_down() {
        let l = Arc::new(Leadership::elected());
        l.renewed(Instant::now(), Duration::from_millis(300), Duration::from_millis(300));
        // Renewed every 100ms, the fence never lapses: work that takes a second finishes.
        let renewing = {
            let l = l.clone();
            tokio::spawn(async move {
                for _ in 0..15 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    l.renewed(Instant::now(), Duration::from_millis(300), Duration::from_millis(300));
                }
            })
        };
        let long = l.while_leading(tokio::time::sleep(Duration::from_secs(1))).await;
        assert!(long.is_some(), "cut off although the fence kept moving");
        renewing.await.unwrap();
        // A step-down cuts off work in flight at once, well before its fence.
        l.renewed(Instant::now(), Duration::from_secs(30), Duration::from_secs(30));
        let stepping = {
            let l = l.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                l.step_down();
            })
        };
        let started = Instant::now();
        assert!(l.while_leading(tokio::time::sleep(Duration::from_secs(20))).await.is_none());
        assert!(started.elapsed() < Duration::from_secs(2), "cut off after {:?}", started.elapsed());
        stepping.await.unwrap();
    }

    #[tokio::test]
    async fn a_renewal_after_a_lapse_is_announced_and_a_timely_one_is_not() {
        let l = Leadership::elected();
        let resumed = l.resumptions();
        l.renewed(Instant::now(), Duration::from_millis(200), Duration::from_millis(200));
        l.renewed(Instant::now(), Duration::from_millis(200), Duration::from_millis(200));
        assert_eq!(*resumed.borrow(), 0, "the first renewal and a timely one are not resumptions");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!l.is_leading() && l.holds_lease(), "lapsed, but still the holder as far as it knows");
        l.renewed(Instant::now(), Duration::from_millis(200), Duration::from_millis(200));
        assert_eq!(*resumed.borrow(), 1);
        assert!(l.is_leading());
    }

    #[tokio::test]
    async fn nothing_starts_after_the_renew_deadline_and_work_in_flight_runs_to_the_cut() {
        let l = Leadership::elected();
        // Renew deadline 200ms, lease 600ms: nothing starts after 200ms, work started before
        // runs until 400ms (halfway to the earliest takeover).
        l.renewed(Instant::now(), Duration::from_millis(200), Duration::from_millis(600));
        let started = Instant::now();
        let work = l.while_leading(tokio::time::sleep(Duration::from_millis(300))).await;
        assert!(work.is_some(), "cut off at {:?}", started.elapsed());
        assert!(!l.is_leading() && l.while_leading(async {}).await.is_none(), "nothing new starts");
        let cut = l.while_leading(async {}).await;
        assert!(cut.is_none());
    }

    #[tokio::test]
    async fn a_single_instance_always_writes() {
        let l = Leadership::single();
        assert!(l.is_leading());
        assert_eq!(l.fenced(async { Ok(7) }).await.ok(), Some(7));
    }
}
