//! The elector against kubesim with every Lease request slowed by a round-trip time from a table,
//! with the same timings scaled down: however slow the Lease, no lapse of the fence goes
//! unnoticed. Either the renewal under way succeeds and the elector announces a resumption (the
//! controller then does what it refused in the gap), or the elector steps down visibly. Below
//! the renew deadline it never steps down.
#![cfg(test)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kube::Client;
use tokensource_operator::leader::{Elector, Leadership, Settings};

/// What a run of the elector showed, sampled every 2ms.
#[derive(Debug, Default)]
struct Seen {
    /// Gaps where the fence had lapsed while the Lease was still held, that ended leading again.
    lapses_resumed: u64,
    /// Resumptions the elector announced.
    resumptions: u64,
    /// Times it stepped down (stopped holding the Lease as far as it knew).
    step_downs: u64,
    /// The longest gap without a valid fence while holding the Lease.
    longest_lapse: Duration,
    /// Lapses that ended leading again with no resumption announced since they began.
    unannounced: u64,
    /// How long before the end of the run the Lease was last renewed (by its renewTime).
    last_renewal_ago: Duration,
}

async fn run(rtt: Duration, lease: Duration, renew: Duration, retry: Duration) -> Seen {
    let sim = kubesim::KubeSim::start().await.unwrap();
    let client: Client = sim.client();
    let settings = Settings {
        namespace: "default".into(),
        lease_name: "tokensource-operator".into(),
        identity: "elector_1".into(),
        lease_duration: lease,
        renew_deadline: renew,
        retry_period: retry,
    };
    settings.check().unwrap();
    let leadership = Arc::new(Leadership::elected());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let elector = tokio::spawn(Elector::new(client, settings, leadership.clone()).run(stop_rx));
    // Leading first, then every Lease request slowed.
    let started = tokio::time::Instant::now();
    while !leadership.is_leading() {
        assert!(started.elapsed() < Duration::from_secs(5), "never led");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let leases = kubesim::Matcher { resource: Some("leases".into()), ..Default::default() };
    sim.faults().add_latency(leases, rtt);
    let resumptions = leadership.resumptions();
    let initial = *resumptions.borrow();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (l, done, resumptions) = (leadership.clone(), done.clone(), resumptions.clone());
        tokio::spawn(async move {
            let mut seen = Seen::default();
            let (mut lapse_from, mut held) = (None::<tokio::time::Instant>, true);
            // The resumption count when each lapse that ended leading again began: each needs a
            // resumption of its own, announced before the next lapse begins (or the run ends).
            let mut counts: Vec<u64> = Vec::new();
            let mut counted_at = 0;
            while !done.load(Ordering::Relaxed) {
                let (leading, holds) = (l.is_leading(), l.holds_lease());
                if held && !holds {
                    seen.step_downs += 1;
                }
                held = holds;
                match (leading, holds, lapse_from) {
                    (false, true, None) => {
                        lapse_from = Some(tokio::time::Instant::now());
                        counted_at = *resumptions.borrow();
                    }
                    (true, _, Some(from)) => {
                        counts.push(counted_at);
                        seen.lapses_resumed += 1;
                        seen.longest_lapse = seen.longest_lapse.max(from.elapsed());
                        lapse_from = None;
                    }
                    (_, false, Some(_)) => lapse_from = None,
                    _ => {}
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            // A resumption may be announced a moment after the fence is valid again.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let last = *resumptions.borrow();
            let after: Vec<u64> = counts.iter().skip(1).copied().chain([last]).collect();
            seen.unannounced = counts.iter().zip(&after).filter(|(began, next)| next <= began).count() as u64;
            seen
        })
    };
    tokio::time::sleep(lease * 4).await;
    done.store(true, Ordering::Relaxed);
    let mut seen = sampler.await.unwrap();
    seen.resumptions = *resumptions.borrow() - initial;
    sim.faults().clear();
    let lease: kube::Api<k8s_openapi::api::coordination::v1::Lease> = kube::Api::namespaced(sim.client(), "default");
    let renewed = lease.get("tokensource-operator").await.unwrap().spec.and_then(|s| s.renew_time);
    seen.last_renewal_ago = renewed
        .map_or(Duration::MAX, |t| Duration::try_from(jiff::Timestamp::now().duration_since(t.0)).unwrap_or_default());
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), elector).await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lapse_of_the_fence_goes_unnoticed_whatever_the_lease_round_trip() {
    let ms = Duration::from_millis;
    // (round trip, lease duration, renew deadline, retry period)
    let table = [
        (ms(0), ms(1500), ms(1000), ms(200)),
        (ms(300), ms(1500), ms(1000), ms(200)),
        (ms(600), ms(1500), ms(1000), ms(200)),
        (ms(900), ms(1500), ms(1000), ms(200)),
        // Round trips just under the renew deadline: the fence holds for a moment per round.
        (ms(950), ms(1500), ms(1000), ms(200)),
        (ms(990), ms(1500), ms(1000), ms(200)),
        (ms(400), ms(1500), ms(1000), ms(700)),
        (ms(700), ms(3000), ms(1000), ms(500)),
        (ms(1200), ms(1500), ms(1000), ms(200)),
    ];
    let runs =
        futures::future::join_all(table.iter().map(|&(rtt, lease, renew, retry)| run(rtt, lease, renew, retry))).await;
    for (&(rtt, lease, renew, retry), seen) in table.iter().zip(&runs) {
        eprintln!("round trip {rtt:?}, lease {lease:?}, renew deadline {renew:?}, retry {retry:?}: {seen:?}");
        assert!(
            seen.resumptions >= seen.lapses_resumed && seen.unannounced == 0,
            "a lapse ended without a resumption: {seen:?} (round trip {rtt:?})"
        );
        if rtt < renew {
            assert_eq!(
                seen.step_downs, 0,
                "stepped down although every renewal succeeded: {seen:?} (round trip {rtt:?})"
            );
            // Renewals went on to the end: the stored renewTime is at most the one in flight, the
            // one before it and the read's own trip old.
            let round = rtt.max(retry) * 3 + ms(300);
            assert!(seen.last_renewal_ago <= round, "renewals stopped: {seen:?} (round trip {rtt:?})");
        } else {
            assert!(seen.step_downs > 0, "renewals slower than the renew deadline must step down visibly: {seen:?}");
        }
        // A round trip beyond what the deadline leaves for renewals lapses the fence: it must
        // have been seen, or the table proves nothing.
        if rtt + retry > renew && rtt < renew {
            assert!(seen.lapses_resumed > 0, "expected lapses at round trip {rtt:?}: {seen:?}");
        }
    }
}
