//! Retries for transient errors: exponential backoff with full jitter, bounded by a number of
//! attempts and by total elapsed time, honouring server-given delays (`Retry-After`).
//!
//! Full jitter (the delay is drawn uniformly from `[0, min(max_delay, initial × multiplier^n)]`)
//! spreads a crowd of clients that failed together, as AWS's architecture blog measured. It is
//! written here rather than taken from `backon` because the runtime needs three things at once
//! that are awkward there: the server hint as a floor, the elapsed-time budget checked *before*
//! sleeping (so we never sleep past it), and a seedable RNG for deterministic tests.
//!
//! Connectors never write their own retry loops: they classify errors ([`crate::error`]) and
//! the runtime calls [`retry`].

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::config::duration;
use crate::error::{Classify, ErrorClass};

/// How long and how often to retry a transient failure.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Upper bound of the first delay (`200ms`).
    #[serde(with = "duration")]
    pub initial_delay: Duration,
    /// Upper bound of any delay (`30s`).
    #[serde(with = "duration")]
    pub max_delay: Duration,
    /// Growth of the bound per attempt (`2.0`).
    pub multiplier: f64,
    /// Attempts in all, the first included (`10`).
    pub max_attempts: u32,
    /// Give up when the next delay would end past this much time since the first attempt (`5m`).
    #[serde(with = "duration")]
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            max_attempts: 10,
            max_elapsed: Duration::from_secs(300),
        }
    }
}

/// The delay schedule of one retried operation.
#[derive(Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    attempts: u32,
    started: Instant,
    rng: fastrand::Rng,
}

impl Backoff {
    /// Starts a schedule now.
    pub fn new(policy: RetryPolicy) -> Self {
        Self::with_rng(policy, fastrand::Rng::new())
    }

    /// Starts a schedule with a seeded RNG (tests).
    pub fn with_rng(policy: RetryPolicy, rng: fastrand::Rng) -> Self {
        Backoff {
            policy,
            attempts: 1,
            started: Instant::now(),
            rng,
        }
    }

    /// Attempts made so far (the first included).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The jitter bound for the current attempt: `min(max_delay, initial × multiplier^(n-1))`.
    pub fn current_cap(&self) -> Duration {
        let exp = self
            .policy
            .multiplier
            .max(1.0)
            .powi(self.attempts.saturating_sub(1).min(64) as i32);
        let cap = self.policy.initial_delay.as_secs_f64() * exp;
        Duration::from_secs_f64(cap.min(self.policy.max_delay.as_secs_f64()))
    }

    /// The delay before the next attempt, or `None` when the budget is spent. A server hint is
    /// a floor: we never call back sooner than the server asked.
    pub fn next_delay(&mut self, server_hint: Option<Duration>) -> Option<Duration> {
        if self.attempts >= self.policy.max_attempts {
            return None;
        }
        let jittered = self.current_cap().mul_f64(self.rng.f64());
        let delay = server_hint.map_or(jittered, |hint| hint.max(jittered));
        if self.started.elapsed() + delay > self.policy.max_elapsed {
            return None;
        }
        self.attempts += 1;
        Some(delay)
    }
}

/// A retried operation that did not succeed.
#[derive(Debug)]
pub struct RetryError<E> {
    /// The last error.
    pub error: E,
    /// Attempts made.
    pub attempts: u32,
    /// Whether it stopped because the retry budget ran out (as opposed to a non-transient error).
    pub exhausted: bool,
}

impl<E: fmt::Display> fmt::Display for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.exhausted {
            write!(
                f,
                "{} (gave up after {} attempts)",
                self.error, self.attempts
            )
        } else {
            self.error.fmt(f)
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for RetryError<E> {}

/// Runs `op` until it succeeds, fails with a non-transient error, or the policy's budget is
/// spent. `on_retry(error, attempt, delay)` is called before each sleep (logs, metrics).
///
/// (`op` is an async closure; the runtime, whose futures must be `Send`, drives
/// [`Backoff::after_failure`] in its own loop instead.)
pub async fn retry<T, E, F>(
    policy: &RetryPolicy,
    mut on_retry: impl FnMut(&E, u32, Duration),
    mut op: F,
) -> Result<T, RetryError<E>>
where
    E: Classify,
    F: AsyncFnMut() -> Result<T, E>,
{
    let mut backoff = Backoff::new(policy.clone());
    loop {
        let error = match op().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let (error, delay) = backoff.after_failure(error)?;
        on_retry(&error, backoff.attempts(), delay);
        tokio::time::sleep(delay).await;
    }
}

impl Backoff {
    /// Decides what follows a failed attempt: `Ok((error, delay))` to sleep and try again, or
    /// `Err` to give up (a non-transient error, or the budget is spent).
    pub fn after_failure<E: Classify>(&mut self, error: E) -> Result<(E, Duration), RetryError<E>> {
        if error.class() != ErrorClass::Transient {
            return Err(RetryError {
                error,
                attempts: self.attempts(),
                exhausted: false,
            });
        }
        match self.next_delay(error.retry_after()) {
            Some(delay) => Ok((error, delay)),
            None => Err(RetryError {
                error,
                attempts: self.attempts(),
                exhausted: true,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[derive(Debug)]
    struct E(ErrorClass, Option<Duration>);
    impl Classify for E {
        fn class(&self) -> ErrorClass {
            self.0
        }
        fn retry_after(&self) -> Option<Duration> {
            self.1
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            multiplier: 2.0,
            max_attempts: 6,
            max_elapsed: Duration::from_secs(60),
        }
    }

    #[test]
    fn delays_are_full_jitter_under_an_exponential_cap() {
        for seed in 0..200 {
            let mut b = Backoff::with_rng(policy(), fastrand::Rng::with_seed(seed));
            let caps = [100, 200, 400, 800, 1000];
            for cap in caps {
                assert_eq!(b.current_cap(), Duration::from_millis(cap));
                let d = b.next_delay(None).expect("within budget");
                assert!(d <= Duration::from_millis(cap), "{d:?} > {cap}ms");
            }
            assert_eq!(b.next_delay(None), None, "max_attempts = 6 reached");
        }
        // Full jitter really spreads: over many seeds the first delay covers most of [0, cap].
        let firsts: Vec<_> = (0..200)
            .map(|s| {
                Backoff::with_rng(policy(), fastrand::Rng::with_seed(s))
                    .next_delay(None)
                    .unwrap()
            })
            .collect();
        assert!(firsts.iter().any(|d| *d < Duration::from_millis(10)));
        assert!(firsts.iter().any(|d| *d > Duration::from_millis(90)));
    }

    #[test]
    fn a_server_hint_is_a_floor_and_counts_against_the_budget() {
        let mut b = Backoff::with_rng(policy(), fastrand::Rng::with_seed(1));
        assert_eq!(
            b.next_delay(Some(Duration::from_secs(7))),
            Some(Duration::from_secs(7))
        );
        // A hint past max_elapsed means giving up now rather than sleeping into the void.
        assert_eq!(b.next_delay(Some(Duration::from_secs(61))), None);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_until_success() {
        let calls = Cell::new(0);
        let start = Instant::now();
        let mut retries = Vec::new();
        let out = retry(
            &policy(),
            |_, n, d| retries.push((n, d)),
            async || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                if n < 3 {
                    Err(E(ErrorClass::Transient, None))
                } else {
                    Ok(n)
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(out, 3);
        assert_eq!(retries.len(), 2);
        let slept: Duration = retries.iter().map(|r| r.1).sum();
        // Paused time advances by the delays (tokio rounds each sleep up to a millisecond).
        let elapsed = start.elapsed();
        assert!(
            elapsed >= slept && elapsed <= slept + Duration::from_millis(2),
            "{elapsed:?} vs {slept:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured() {
        let calls = Cell::new(0);
        let start = Instant::now();
        retry(
            &policy(),
            |_, _, _| {},
            async || {
                calls.set(calls.get() + 1);
                if calls.get() == 1 {
                    Err(E(ErrorClass::Transient, Some(Duration::from_secs(5))))
                } else {
                    Ok(())
                }
            },
        )
        .await
        .unwrap();
        assert!(start.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn fatal_and_record_errors_are_not_retried_and_budgets_end() {
        let calls = Cell::new(0);
        let err = retry(
            &policy(),
            |_, _, _| {},
            async || {
                calls.set(calls.get() + 1);
                Err::<(), _>(E(ErrorClass::Fatal, None))
            },
        )
        .await
        .unwrap_err();
        assert_eq!((calls.get(), err.attempts, err.exhausted), (1, 1, false));

        calls.set(0);
        let err = retry(
            &policy(),
            |_, _, _| {},
            async || {
                calls.set(calls.get() + 1);
                Err::<(), _>(E(ErrorClass::Transient, None))
            },
        )
        .await
        .unwrap_err();
        assert_eq!((calls.get(), err.attempts, err.exhausted), (6, 6, true));
    }
}
