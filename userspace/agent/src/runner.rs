//! When the agent syncs: kube-proxy's bounded-frequency runner. A change wakes it, but never
//! sooner than `min` after the previous run (a burst of changes becomes one run); a full sync
//! happens at least every `max` without any change; a failed step can ask to be retried after a
//! delay of its own.

use std::{future::Future, time::Duration};

use tokio::time::{Instant, sleep_until};

/// Why a run is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Changed,
    FullSync,
    Retry,
}

#[derive(Debug)]
pub struct BoundedFrequency {
    min: Duration,
    max: Duration,
    last_run: Option<Instant>,
    next_full: Instant,
    retry: Option<Instant>,
}

impl BoundedFrequency {
    pub fn new(min: Duration, max: Duration) -> Self {
        BoundedFrequency {
            min,
            max,
            last_run: None,
            next_full: Instant::now() + max,
            retry: None,
        }
    }

    /// Waits until a run is due: `changed` resolved, the periodic full sync is due, or the
    /// retry asked for at the last run is. Cancel-safe as long as `changed` is (nothing is
    /// recorded until it returns).
    pub async fn wait(&mut self, changed: impl Future<Output = ()>) -> Trigger {
        let retry = self.retry;
        let trigger = tokio::select! {
            () = changed => Trigger::Changed,
            () = sleep_until(self.next_full) => Trigger::FullSync,
            () = async {
                match retry {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => Trigger::Retry,
        };
        match trigger {
            // Counted from the wake-up, so a run that is then skipped (nothing listed yet)
            // does not make the timer fire again at once.
            Trigger::FullSync => self.next_full = Instant::now() + self.max,
            Trigger::Retry => self.retry = None,
            Trigger::Changed => {}
        }
        trigger
    }

    /// Sleeps what remains of the minimum interval since the last run: changes that arrive
    /// meanwhile are taken by the same run.
    pub async fn throttle(&self) {
        if let Some(last) = self.last_run {
            sleep_until(last + self.min).await;
        }
    }

    /// Records a run. `retry_in`: run again after this long even without a change.
    pub fn ran(&mut self, retry_in: Option<Duration>) {
        let now = Instant::now();
        self.last_run = Some(now);
        self.next_full = now + self.max;
        self.retry = retry_in.map(|d| now + d);
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::watch;

    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(30);

    /// Runs the way the agent's loop does (a run reads the latest value, which marks it seen)
    /// for `total` of (paused) time; returns when each run happened and why.
    async fn runs(
        mut rx: watch::Receiver<u32>,
        total: Duration,
        retry: Option<Duration>,
    ) -> Vec<(Duration, Trigger)> {
        let start = Instant::now();
        let end = start + total;
        let mut r = BoundedFrequency::new(MIN, MAX);
        let mut out = Vec::new();
        loop {
            let changed = async {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            let t = tokio::select! {
                t = r.wait(changed) => t,
                () = sleep_until(end) => return out,
            };
            r.throttle().await;
            rx.borrow_and_update();
            out.push((start.elapsed(), t));
            r.ran(retry.filter(|_| out.len() == 1));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_changes_is_coalesced_into_runs_min_apart() {
        let (tx, rx) = watch::channel(0);
        tokio::spawn(async move {
            // 50 changes, 7 ms apart, from t = 0 (no change falls on a run's instant).
            for i in 1..=50 {
                tx.send_replace(i);
                tokio::time::sleep(Duration::from_millis(7)).await;
            }
            std::future::pending::<()>().await;
        });
        let got = runs(rx, Duration::from_secs(1), None).await;
        // The first change runs at once; the rest of the 343 ms burst is taken by runs MIN
        // apart: 5 runs for 50 changes.
        let times: Vec<u128> = got.iter().map(|(t, _)| t.as_millis()).collect();
        assert_eq!(times, [0, 100, 200, 300, 400], "{got:?}");
        assert!(got.iter().all(|(_, t)| *t == Trigger::Changed));
    }

    #[tokio::test(start_paused = true)]
    async fn without_changes_a_full_sync_runs_every_max() {
        let (_tx, rx) = watch::channel(0);
        let got = runs(rx, Duration::from_secs(95), None).await;
        let secs: Vec<u64> = got.iter().map(|(t, _)| t.as_secs()).collect();
        assert_eq!(secs, [30, 60, 90]);
        assert!(got.iter().all(|(_, t)| *t == Trigger::FullSync));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_runs_on_its_own_clock() {
        let (tx, rx) = watch::channel(0);
        tx.send_replace(1);
        let got = runs(rx, Duration::from_secs(10), Some(Duration::from_secs(5))).await;
        assert_eq!(
            got,
            [
                (Duration::ZERO, Trigger::Changed),
                (Duration::from_secs(5), Trigger::Retry)
            ]
        );
    }
}
