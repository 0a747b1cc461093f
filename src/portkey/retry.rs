//! Retry rules of the Admin API client.
//!
//! * Retried: transport errors, HTTP 429 (honouring `Retry-After`), and 5xx except 501.
//! * Never retried: any other 4xx (400, 401, 403, 404, 409, …).
//! * Delays grow exponentially from `initial_backoff`, capped at `max_backoff`, with "equal
//!   jitter" (a random delay between half and all of the step) so that many clients do not retry
//!   in lock-step. A 429's `Retry-After` is waited exactly; one longer than `max_retry_after` is
//!   not waited in-process: the error goes back to the caller (the controller requeues).
//! * A create (`POST`) is not idempotent: Portkey has no idempotency key, so a create that may
//!   have reached the server (a timeout, a reset connection, a 5xx) is **not** retried; doing so
//!   could make a duplicate policy. Only a 429 or a failed connect (nothing was sent) is retried.
//!   The controller recovers the other cases by looking for its ownership marker before creating.

use std::time::Duration;

use rand::Rng;

use super::error::PortkeyError;

/// How late the kernel may wake this process for a timer (Linux's timer slack, 50 µs by
/// default): a timer due within this much of another wake-up (a response arriving, another
/// timer) runs in that wake-up instead of a wake-up of its own. The operator's timers are rate
/// limiter slots (a few milliseconds apart), refreshes and timeouts (seconds): none needs
/// better. At 1,000 policies refreshed every 20 s it took settled idle CPU from 1.07 and
/// 1.12 % of a core to 0.80 to 0.97 % in runs back to back; 20 ms did no better. A late wake-up
/// costs the Admin API limiter nothing: it counts requests in a window (see
/// `PortkeyClient::new`).
pub const TIMER_SLACK: Duration = Duration::from_millis(5);

/// Sets [`TIMER_SLACK`] for the calling thread and the threads it starts later (Linux only;
/// elsewhere nothing happens).
pub fn allow_timer_slack() {
    #[cfg(target_os = "linux")]
    {
        let nanos = libc::c_ulong::try_from(TIMER_SLACK.as_nanos()).unwrap_or(libc::c_ulong::MAX);
        // SAFETY: PR_SET_TIMERSLACK only sets a scheduling parameter of the calling thread.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, nanos, 0, 0, 0);
        }
    }
}

/// A rate limiter whose waiters queue: they leave in the order they arrived, and only the
/// one at the head of the queue sleeps, until the limiter admits it.
///
/// Without the queue every waiter slept until the next free slot, all woke together, one got
/// through and the others slept again: ten waiters slept 55 times (the unit test below), and
/// strace at 1,000 policies counted 3.3 wake-ups of the runtime (eventfd writes) per request,
/// 1.2 with the queue. The limiter decides exactly as before; the queue only decides who asks
/// it.
pub struct Pacer {
    gate: Gate,
    queue: tokio::sync::Mutex<()>,
}

/// What a [`Pacer`] admits.
enum Gate {
    /// `governor`'s cell rate: requests spaced by the quota's period, after its burst.
    Spaced(governor::DefaultDirectRateLimiter),
    /// At most `limit` requests in any `window`: the times of the last `limit` admitted.
    Window {
        limit: usize,
        window: Duration,
        sent: std::sync::Mutex<std::collections::VecDeque<tokio::time::Instant>>,
    },
}

impl Gate {
    /// `None` when a request may go now (and it is counted), else how long until one may.
    fn admit(&self) -> Option<Duration> {
        match self {
            Gate::Spaced(limiter) => {
                use governor::clock::Clock;
                // The limiter's own clock: a new `DefaultClock` checks the CPU's counter
                // support (CPUID, which traps to the hypervisor in a VM) every time.
                let not_until = limiter.check().err()?;
                Some(not_until.wait_time_from(limiter.clock().now()))
            }
            Gate::Window {
                limit,
                window,
                sent,
            } => {
                let now = tokio::time::Instant::now();
                let mut sent = sent.lock().expect("window lock");
                while sent.front().is_some_and(|t| now - *t >= *window) {
                    sent.pop_front();
                }
                match sent.front() {
                    Some(oldest) if sent.len() >= *limit => Some(*oldest + *window - now),
                    _ => {
                        sent.push_back(now);
                        None
                    }
                }
            }
        }
    }
}

impl Pacer {
    /// Requests at `quota`'s rate, evenly spaced after its burst.
    pub fn new(quota: governor::Quota) -> Self {
        Pacer {
            gate: Gate::Spaced(governor::RateLimiter::direct(quota)),
            queue: tokio::sync::Mutex::new(()),
        }
    }

    /// At most `limit` requests in any `window` (measured when they leave), at once if there
    /// is room: a server that admits `limit` a window (counted in fixed or sliding windows, or
    /// a token bucket holding at least `limit`) admits all of them.
    pub fn per_window(limit: std::num::NonZeroU32, window: Duration) -> Self {
        let limit = usize::try_from(limit.get()).unwrap_or(usize::MAX);
        Pacer {
            gate: Gate::Window {
                limit,
                window,
                sent: std::sync::Mutex::new(std::collections::VecDeque::new()),
            },
            queue: tokio::sync::Mutex::new(()),
        }
    }

    /// Waits for this request's turn, then until the limiter admits it, sleeping on the
    /// tokio timer; returns how many times it slept. A waiter dropped while it waits gives its
    /// place to the next one.
    ///
    /// `governor`'s own `until_ready` sleeps on `futures-timer`, which runs a timer thread of
    /// its own: every wait was two cross-thread wake-ups (a few percent of the operator's idle
    /// CPU).
    pub async fn until_ready(&self) -> u32 {
        // The queue is a fair (first in, first out) lock, held while waiting for the limiter.
        let _turn = self.queue.lock().await;
        let mut sleeps = 0;
        while let Some(wait) = self.gate.admit() {
            tokio::time::sleep(wait).await;
            sleeps += 1;
        }
        sleeps
    }
}

/// Whether a request may be repeated safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// GET, PUT (the same body twice is the same state), DELETE (archive).
    Idempotent,
    /// POST create: repeat only when the server certainly did not act on it.
    CreateOnce,
}

/// Bounded exponential backoff with jitter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (so at most `max_retries + 1` calls).
    pub max_retries: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// The longest `Retry-After` waited in-process.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..Default::default()
        }
    }

    /// The capped exponential step for retry number `attempt` (0 = first retry), before jitter.
    pub fn step(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// The step with equal jitter: uniformly in `[step/2, step]`.
    pub fn jittered(&self, attempt: u32) -> Duration {
        let step = self.step(attempt);
        let half = step / 2;
        let extra_nanos = step.saturating_sub(half).as_nanos() as u64;
        let extra = if extra_nanos == 0 {
            0
        } else {
            rand::rng().random_range(0..=extra_nanos)
        };
        half + Duration::from_nanos(extra)
    }

    /// How long to wait before retry number `attempt` after `err`, or `None` to give up.
    pub fn delay_for(
        &self,
        err: &PortkeyError,
        attempt: u32,
        idempotency: Idempotency,
    ) -> Option<Duration> {
        if attempt >= self.max_retries || !err.is_retryable() {
            return None;
        }
        if idempotency == Idempotency::CreateOnce {
            let never_reached_server = matches!(err, PortkeyError::RateLimited { .. })
                || matches!(err, PortkeyError::Transport { connect: true, .. });
            if !never_reached_server {
                return None;
            }
        }
        match err.retry_after() {
            Some(wait) if wait > self.max_retry_after => None,
            Some(wait) => Some(wait),
            None => Some(self.jittered(attempt)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error() -> PortkeyError {
        PortkeyError::from_response(503, "", None)
    }

    /// Waiters leave in the order they came, at the limiter's rate, and each sleeps about
    /// once: without the queue all of them slept until each free slot and asked again (55
    /// sleeps for 10 waiters, not 10).
    #[tokio::test]
    async fn pacer_waiters_queue_and_sleep_once() {
        let rate = std::num::NonZeroU32::new(200).unwrap();
        let quota = governor::Quota::per_second(rate).allow_burst(std::num::NonZeroU32::MIN);
        let pacer = std::sync::Arc::new(Pacer::new(quota));
        assert_eq!(pacer.until_ready().await, 0, "a free slot is taken at once");
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let started = tokio::time::Instant::now();
        let mut waiters = tokio::task::JoinSet::new();
        for i in 0..10 {
            let (pacer, order) = (pacer.clone(), order.clone());
            waiters.spawn(async move {
                let sleeps = pacer.until_ready().await;
                order.lock().unwrap().push(i);
                sleeps
            });
            // Each waiter joins the queue before the next is spawned.
            tokio::task::yield_now().await;
        }
        let mut sleeps = 0;
        while let Some(done) = waiters.join_next().await {
            sleeps += done.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..10).collect::<Vec<_>>());
        assert!(sleeps <= 20, "{sleeps} sleeps for 10 waiters");
        // Ten more requests at 200 a second cannot all pass in less than 45 ms.
        assert!(started.elapsed() >= Duration::from_millis(45));
    }

    /// The window mode lets its limit through at once and the next request only when the
    /// oldest of them is a window old: never more than the limit in any window, one sleep per
    /// window for a queue of waiters (the clock is tokio's, paused: times are exact).
    #[tokio::test(start_paused = true)]
    async fn window_admits_its_limit_at_once_and_no_more_in_any_window() {
        let window = Duration::from_secs(1);
        let pacer = std::sync::Arc::new(Pacer::per_window(
            std::num::NonZeroU32::new(5).unwrap(),
            window,
        ));
        let started = tokio::time::Instant::now();
        let mut waiters = tokio::task::JoinSet::new();
        for i in 0..12u32 {
            let pacer = pacer.clone();
            waiters.spawn(async move {
                let sleeps = pacer.until_ready().await;
                (i, started.elapsed(), sleeps)
            });
            tokio::task::yield_now().await;
        }
        let mut admitted = Vec::new();
        while let Some(done) = waiters.join_next().await {
            admitted.push(done.unwrap());
        }
        admitted.sort_by_key(|(i, ..)| *i);
        let at: Vec<u64> = admitted.iter().map(|(_, t, _)| t.as_secs()).collect();
        assert_eq!(at, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2], "admitted at (s)");
        for (_, t, _) in &admitted {
            let within = admitted
                .iter()
                .filter(|(_, u, _)| *u >= *t && *u < *t + window)
                .count();
            assert!(within <= 5, "{within} requests within a second of {t:?}");
        }
        let sleeps: u32 = admitted.iter().map(|(.., s)| s).sum();
        assert_eq!(sleeps, 2, "the head of the queue sleeps once a window");
    }

    /// The slack is set for the calling thread (and the threads it starts), which the kernel
    /// reports back.
    #[cfg(target_os = "linux")]
    #[test]
    fn timer_slack_is_set_for_the_thread() {
        let slack = || {
            // SAFETY: PR_GET_TIMERSLACK only reads a parameter of the calling thread.
            unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) }
        };
        let (before, after, child) = std::thread::spawn(move || {
            // SAFETY: as in `allow_timer_slack`; a value of its own, whatever the default.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000_000, 0, 0, 0) };
            let before = slack();
            allow_timer_slack();
            let after = slack();
            (before, after, std::thread::spawn(slack).join().unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(before, 1_000_000);
        assert_eq!(after, 5_000_000);
        assert_eq!(child, 5_000_000, "inherited");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_retries: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(5),
        };
        assert_eq!(p.step(0), Duration::from_millis(100));
        assert_eq!(p.step(3), Duration::from_millis(800));
        assert_eq!(p.step(4), Duration::from_secs(1));
        assert_eq!(p.step(60), Duration::from_secs(1));
        for attempt in 0..8 {
            let d = p.jittered(attempt);
            assert!(d >= p.step(attempt) / 2 && d <= p.step(attempt), "{d:?}");
        }
    }

    #[test]
    fn decides_what_to_retry() {
        let p = RetryPolicy::default();
        assert!(
            p.delay_for(&server_error(), 0, Idempotency::Idempotent)
                .is_some()
        );
        assert!(
            p.delay_for(&server_error(), p.max_retries, Idempotency::Idempotent)
                .is_none()
        );
        let not_found = PortkeyError::from_response(404, "", None);
        assert!(
            p.delay_for(&not_found, 0, Idempotency::Idempotent)
                .is_none()
        );
        let limited = PortkeyError::from_response(429, "", Some(Duration::from_secs(2)));
        assert_eq!(
            p.delay_for(&limited, 0, Idempotency::Idempotent),
            Some(Duration::from_secs(2))
        );
        let too_long = PortkeyError::from_response(429, "", Some(Duration::from_secs(3600)));
        assert_eq!(p.delay_for(&too_long, 0, Idempotency::Idempotent), None);
    }

    #[test]
    fn creates_are_retried_only_when_nothing_reached_the_server() {
        let p = RetryPolicy::default();
        assert!(
            p.delay_for(&server_error(), 0, Idempotency::CreateOnce)
                .is_none()
        );
        let timeout = PortkeyError::Transport {
            message: "timed out".into(),
            timeout: true,
            connect: false,
        };
        assert!(p.delay_for(&timeout, 0, Idempotency::CreateOnce).is_none());
        let refused = PortkeyError::Transport {
            message: "refused".into(),
            timeout: false,
            connect: true,
        };
        assert!(p.delay_for(&refused, 0, Idempotency::CreateOnce).is_some());
        let limited = PortkeyError::from_response(429, "", None);
        assert!(p.delay_for(&limited, 0, Idempotency::CreateOnce).is_some());
    }
}
