//! The outlier state machine in virtual time: thresholds, doubling and its cap, probes,
//! successes that clear, failures ignored while ejected, and the switch that turns it off.

use super::*;

fn policy(consecutive_failures: u32) -> Outlier {
    Outlier {
        consecutive_failures,
        base_ejection: Duration::from_secs(1),
        max_ejection: Duration::from_secs(5),
        gateway_errors: vec![502, 503, 504],
    }
}

const MS: Duration = Duration::from_millis(1);

/// Fail `n` times at `at`; the last result.
fn fail(s: &OutlierState, n: u32, at: Instant, p: &Outlier) -> Option<Ejection> {
    (0..n).map(|_| s.failed(at, p)).last().flatten()
}

#[test]
fn ejected_on_the_threshold_for_the_base_time() {
    let (s, p, t0) = (OutlierState::default(), policy(5), Instant::now());
    assert_eq!(fail(&s, 4, t0, &p), None);
    assert!(!s.ejected(t0) && !s.probing(t0));
    let e = s.failed(t0, &p).expect("the fifth failure ejects");
    assert_eq!(e.length, Duration::from_secs(1));
    assert_eq!(e.nth, 1);
    assert!(s.ejected(t0));
    assert!(s.ejected(t0 + 999 * MS));
    assert!(!s.ejected(t0 + 1000 * MS));
    assert!(s.probing(t0 + 1000 * MS), "its probe is due");
    assert!(s.held(), "held until a probe passes");
}

#[test]
fn a_success_below_the_threshold_resets_the_count() {
    let (s, p, t0) = (OutlierState::default(), policy(3), Instant::now());
    fail(&s, 2, t0, &p);
    assert_eq!(s.failures(), 2);
    s.succeeded_at(t0);
    assert_eq!(s.failures(), 0);
    assert_eq!(fail(&s, 2, t0, &p), None, "counting starts again");
    assert!(s.failed(t0, &p).is_some());
}

#[test]
fn a_failed_probe_ejects_again_for_twice_as_long_up_to_the_cap() {
    let (s, p, t0) = (OutlierState::default(), policy(2), Instant::now());
    let mut now = t0;
    let first = fail(&s, 2, now, &p).expect("ejected");
    let mut lengths = vec![first.length.as_secs()];
    for _ in 0..5 {
        now += Duration::from_secs(lengths[lengths.len() - 1]);
        assert!(!s.ejected(now) && s.probing(now));
        // One failure is enough: the probe.
        let e = s.failed(now, &p).expect("the failed probe ejects at once");
        lengths.push(e.length.as_secs());
    }
    assert_eq!(lengths, vec![1, 2, 4, 5, 5, 5]);
}

#[test]
fn a_successful_probe_clears_everything() {
    let (s, p, t0) = (OutlierState::default(), policy(2), Instant::now());
    fail(&s, 2, t0, &p);
    let t1 = t0 + Duration::from_secs(1);
    s.failed(t1, &p).expect("probe failed: 2 s");
    let t2 = t1 + Duration::from_secs(2);
    s.succeeded_at(t2);
    assert!(!s.ejected(t2) && !s.probing(t2));
    assert_eq!(s.failures(), 0);
    assert_eq!(
        s.failed(t2, &p),
        None,
        "one failure is not the threshold any more"
    );
    let e = s.failed(t2, &p).expect("ejected again");
    assert_eq!(
        (e.length, e.nth),
        (Duration::from_secs(1), 1),
        "from the base again"
    );
}

#[test]
fn failures_and_successes_while_ejected_change_nothing() {
    let (s, p, t0) = (OutlierState::default(), policy(2), Instant::now());
    fail(&s, 2, t0, &p).expect("ejected");
    // Requests placed before the ejection (or sent as the last resort) come back.
    assert_eq!(fail(&s, 10, t0 + 500 * MS, &p), None);
    s.succeeded_at(t0 + 600 * MS);
    assert!(s.ejected(t0 + 900 * MS), "not lifted early, not extended");
    assert!(!s.ejected(t0 + 1000 * MS));
    let e = s.failed(t0 + 1000 * MS, &p).expect("the probe fails");
    assert_eq!(e.nth, 2, "the ignored failures did not count as ejections");
}

#[test]
fn the_fast_success_path_clears_when_something_failed() {
    let (s, p) = (OutlierState::default(), policy(3));
    s.succeeded();
    assert_eq!(s.failures(), 0);
    fail(&s, 2, Instant::now(), &p);
    s.succeeded();
    assert_eq!(s.failures(), 0);
}

#[test]
fn zero_consecutive_failures_is_off() {
    let (s, p, t0) = (OutlierState::default(), policy(0), Instant::now());
    assert_eq!(fail(&s, 100, t0, &p), None);
    assert!(!s.ejected(t0));
    assert_eq!(s.failures(), 0);
}

#[test]
fn a_threshold_of_one_ejects_on_the_first_failure() {
    let (s, p, t0) = (OutlierState::default(), policy(1), Instant::now());
    assert!(s.failed(t0, &p).is_some());
}

#[test]
fn held_out_until_a_success_and_one_prober_at_a_time() {
    let live = crate::InstanceLive::default();
    let (p, t0) = (policy(1), Instant::now());
    live.outlier.failed(t0, &p).expect("ejected");
    assert!(live.outlier_held(t0), "ejected");
    let t1 = t0 + Duration::from_secs(1);
    assert!(live.outlier.probing(t1));
    assert!(
        live.outlier_held(t1),
        "the ejection is over, but no client request is the probe: held until one passes"
    );
    assert!(live.outlier.claim_prober());
    assert!(!live.outlier.claim_prober(), "one prober at a time");
    live.outlier.succeeded_at(t1);
    live.outlier.release_prober();
    assert!(!live.outlier_held(t1) && !live.outlier.probing(t1));
    assert!(
        live.outlier.claim_prober(),
        "the next ejection gets its prober"
    );
}
