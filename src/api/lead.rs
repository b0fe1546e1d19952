//! The deadline lead: how long before its deadline a call stops waiting, so that its answer is written by
//! the deadline and not after it.
//!
//! A strategy waits with a timer, and its answer can be written only once a worker thread has run the task
//! the timer woke. On an idle machine that takes well under a millisecond, and [`FLOOR`], tokio's timer
//! resolution, is all the margin needed. Under load it is not: when many calls fall due together (callers
//! in lockstep, a burst) or the CPUs are shared with other processes, a woken task waits for a CPU, and the
//! last answers of a wave went out 5-15 ms after their deadlines, some over 25 ms (DESIGN.md, "The
//! deadline lead").
//!
//! So the margin follows what is measured. Every call that waited until its aimed time records its
//! *delay*: how long after that time its answer was ready. At the end of each second that had at least
//! [`MIN_SAMPLES`] delays, the lead becomes their 99.9th percentile: all but the slowest thousandth of
//! those answers would have been ready by their deadlines. It rises at once, but a second falls it to no
//! less than half of what it was; a second with fewer delays halves it, so a machine that is no longer
//! loaded soon gets the whole wait back: calls that finish early record nothing, and a quiet hour is 3,600
//! such seconds. The window is rolled over by whichever call records a delay or reads the lead first once it
//! is over. A call aims its timer the lead before its deadline, never more than `--max-deadline-lead-ms`
//! ([`DEFAULT_MAX`]) or a tenth of its timeout, and never less than [`FLOOR`], which wins for a timeout
//! under 10 ms ([`Lead::for_timeout`]). With `--max-deadline-lead-ms 1` the lead is the floor, always.
//!
//! Why the 99.9th and not the 99th: measured in the `overshoot` benchmark (500 callers in lockstep,
//! `timeout=250`), with the 99th the lead settled at about 5 ms and 96-97.5% of answers were in time;
//! with the 99.9th at 5.5-11 ms, and 97.8-99.8% were within 5 ms of the deadline in five runs, against
//! 86-98% with a fixed 1 ms (DESIGN.md, "The deadline lead").
//!
//! The delay is measured from the aimed time, not the deadline, so it does not depend on the lead itself:
//! moving every timer earlier moves the queue at the CPU earlier with it. The price is paid only under
//! load: an upstream answer arriving within the last `lead` before the deadline is not waited for. That is
//! the contract's own order of things: an answer by the deadline first, the most complete answer second.
//!
//! Lock-free: recording is one `fetch_add` on a bucket, and the first call to see that the second is
//! over claims the rollover with one compare-exchange; a delay recorded during a rollover counts in the
//! next second.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::{Duration, Instant};

use super::clock::{micros, Period};

/// The least lead: tokio's timer fires on whole milliseconds, rounding up, so a timer aimed at the
/// deadline itself fires up to 1 ms after it; aimed 1 ms earlier it fires by the deadline.
pub const FLOOR: Duration = Duration::from_millis(1);

/// The most lead by default, whatever the delays (`--max-deadline-lead-ms`): a machine that wakes tasks
/// later than this is overloaded past what an earlier timer should hide, and the overshoot histogram and
/// its alert show it. 20 ms is 2% of a one-second timeout; a tenth of the timeout bounds it for short ones.
pub const DEFAULT_MAX: Duration = Duration::from_millis(20);

/// The largest `--max-deadline-lead-ms`: the delays are counted in buckets up to this.
pub const LARGEST_MAX: Duration = Duration::from_millis(100);

/// The delays of at least this many calls in a second set the lead for the next; fewer halve it.
pub const MIN_SAMPLES: u64 = 100;

/// How long one window of delays lasts.
const WINDOW: Duration = Duration::from_secs(1);

/// The width of a histogram bucket, in µs: the lead is a whole number of these.
const STEP_US: u64 = 250;

/// Buckets `[i * STEP_US, (i + 1) * STEP_US)` up to [`LARGEST_MAX`]; the last holds every delay at or over
/// it.
const BUCKETS: usize = (LARGEST_MAX.as_micros() as u64 / STEP_US) as usize + 1;

/// The lead now, and this second's delays.
pub struct Lead {
    /// This second's window.
    window: Period,
    /// This second's delays, by bucket.
    delays: [AtomicU64; BUCKETS],
    /// The lead, in µs.
    lead_us: AtomicU64,
    /// The most it may be, in µs (`--max-deadline-lead-ms`).
    max_us: u64,
}

impl Lead {
    /// A lead of [`FLOOR`] to start with, and at most `max` (between [`FLOOR`] and [`LARGEST_MAX`]).
    pub fn new(now: Instant, max: Duration) -> Lead {
        Lead {
            window: Period::new(now, WINDOW, WINDOW),
            delays: std::array::from_fn(|_| AtomicU64::new(0)),
            lead_us: AtomicU64::new(micros(FLOOR)),
            max_us: micros(max.clamp(FLOOR, LARGEST_MAX)),
        }
    }

    /// The lead at `now`, as measured, before any call's bounds.
    pub fn current(&self, now: Instant) -> Duration {
        self.roll_over(now);
        Duration::from_micros(self.lead_us.load(Ordering::Relaxed))
    }

    /// How long before its deadline a call with this timeout, starting at `now`, aims its timer.
    pub fn for_timeout(&self, timeout: Duration, now: Instant) -> Duration {
        self.current(now).min(timeout / 10).max(FLOOR)
    }

    /// Records that a call's answer was ready `delay` after the time its timer was aimed at.
    pub fn record(&self, delay: Duration, now: Instant) {
        self.roll_over(now);
        let bucket = (micros(delay) / STEP_US).min(BUCKETS as u64 - 1) as usize;
        self.delays[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// Ends the window if its second is over: the lead becomes its 99.9th percentile, or half the lead if
    /// that is more; and each whole second since, which nobody rolled over and so had no delays, halves it.
    fn roll_over(&self, now: Instant) {
        let Some(overdue) = self.window.claim(now) else {
            return; // not over, or another call is rolling it over
        };
        let quiet_seconds = micros(overdue) / micros(WINDOW);
        let counts: [u64; BUCKETS] =
            std::array::from_fn(|i| self.delays[i].swap(0, Ordering::Relaxed));
        let total: u64 = counts.iter().sum();
        let half = self.lead_us.load(Ordering::Relaxed) / 2;
        let lead_us = if total >= MIN_SAMPLES {
            // The upper bound of the bucket holding the 99.9th percentile: 99.9% of delays were below it.
            let wanted = total - total / 1000;
            let mut seen = 0;
            let bucket = counts
                .iter()
                .position(|&n| {
                    seen += n;
                    seen >= wanted
                })
                .unwrap_or(BUCKETS - 1);
            ((bucket as u64 + 1) * STEP_US).max(half)
        } else {
            half
        };
        let lead_us = lead_us.checked_shr(quiet_seconds.try_into().unwrap_or(u32::MAX));
        let lead_us = lead_us.unwrap_or(0).clamp(micros(FLOOR), self.max_us);
        self.lead_us.store(lead_us, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// `n` delays of `delay` recorded 100 ms into the second from `start`; returns the instant just after
    /// that second, when the window has been rolled over.
    fn after_a_second_of(lead: &Lead, start: Instant, samples: &[(u64, Duration)]) -> Instant {
        for &(n, delay) in samples {
            for _ in 0..n {
                lead.record(delay, start + 100 * MS);
            }
        }
        let end = start + 1001 * MS;
        lead.roll_over(end);
        end
    }

    #[test]
    fn starts_at_the_floor() {
        let start = Instant::now();
        let lead = Lead::new(start, DEFAULT_MAX);
        assert_eq!(lead.for_timeout(250 * MS, start), FLOOR);
    }

    #[test]
    fn becomes_the_99_9th_percentile_of_the_last_seconds_delays() {
        let start = Instant::now();
        let lead = Lead::new(start, DEFAULT_MAX);
        // 1998 quick answers and 2 that waited 30 ms: the 99.9th percentile is the quick ones' bucket.
        let t = after_a_second_of(&lead, start, &[(1998, 2 * MS), (2, 30 * MS)]);
        assert_eq!(lead.current(t), Duration::from_micros(2250));
        // One more slow one and the percentile is among the slow ones, which are over the bound.
        let t = after_a_second_of(&lead, t, &[(1997, 2 * MS), (3, 30 * MS)]);
        assert_eq!(lead.current(t), DEFAULT_MAX);
    }

    #[test]
    fn rises_at_once_and_falls_by_at_most_half_a_second() {
        let start = Instant::now();
        let lead = Lead::new(start, DEFAULT_MAX);
        let t = after_a_second_of(&lead, start, &[(200, 8 * MS)]);
        assert_eq!(lead.current(t), Duration::from_micros(8250));
        let t = after_a_second_of(&lead, t, &[(200, Duration::ZERO)]);
        assert_eq!(lead.current(t), Duration::from_micros(4125));
        let t = after_a_second_of(&lead, t, &[(200, 16 * MS)]);
        assert_eq!(lead.current(t), Duration::from_micros(16250));
    }

    #[test]
    fn is_at_most_a_tenth_of_the_timeout_and_at_least_the_floor() {
        let start = Instant::now();
        let lead = Lead::new(start, DEFAULT_MAX);
        let t = after_a_second_of(&lead, start, &[(200, 8 * MS)]);
        assert_eq!(lead.for_timeout(250 * MS, t), Duration::from_micros(8250));
        assert_eq!(lead.for_timeout(50 * MS, t), 5 * MS);
        assert_eq!(lead.for_timeout(5 * MS, t), FLOOR);
    }

    #[test]
    fn a_second_with_too_few_delays_halves_it_down_to_the_floor() {
        let start = Instant::now();
        let lead = Lead::new(start, DEFAULT_MAX);
        let t = after_a_second_of(&lead, start, &[(200, 8 * MS)]);
        let mut t = after_a_second_of(&lead, t, &[(MIN_SAMPLES - 1, 8 * MS)]);
        assert_eq!(lead.current(t), Duration::from_micros(4125));
        for _ in 2..10 {
            t = after_a_second_of(&lead, t, &[]);
        }
        assert_eq!(lead.current(t), FLOOR);
    }

    #[test]
    fn a_delay_recorded_after_the_second_counts_in_the_next_one() {
        let start = Instant::now();
        let lead = Lead::new(start, DEFAULT_MAX);
        for _ in 0..MIN_SAMPLES {
            lead.record(8 * MS, start + 1500 * MS); // each one after the first window's end
        }
        // The first window had none: the lead stayed at the floor; the second has them all.
        assert_eq!(lead.current(start + 1500 * MS), FLOOR);
        assert_eq!(lead.current(start + 2501 * MS), Duration::from_micros(8250));
    }

    #[test]
    fn a_max_of_one_millisecond_keeps_it_at_the_floor() {
        let start = Instant::now();
        let lead = Lead::new(start, FLOOR);
        let t = after_a_second_of(&lead, start, &[(200, 8 * MS)]);
        assert_eq!(lead.for_timeout(250 * MS, t), FLOOR);
    }

    /// The lead falls with time, not only with calls that record a delay: after a burst, calls that finish
    /// early (and so record nothing) still see it halve every second, and an idle hour ends at the floor.
    #[tokio::test(start_paused = true)]
    async fn after_a_burst_it_falls_with_time_while_calls_finish_early_or_none_come() {
        let lead = Lead::new(Instant::now(), DEFAULT_MAX);
        // A burst: a second of answers ready 16 ms late.
        for _ in 0..200 {
            lead.record(16 * MS, Instant::now());
        }
        tokio::time::advance(1001 * MS).await;
        assert_eq!(lead.current(Instant::now()), Duration::from_micros(16250));
        // Then calls that finish early: each reads the lead (10 a second), none records a delay.
        let mut seen = Vec::new();
        for _ in 0..3 {
            for _ in 0..10 {
                tokio::time::advance(100 * MS).await;
                lead.for_timeout(Duration::from_secs(1), Instant::now());
            }
            seen.push(lead.current(Instant::now()));
        }
        let halves = [8125, 4062, 2031].map(Duration::from_micros);
        assert_eq!(seen, halves, "halved each second");
        // Then nothing for an hour, and a burst again: the first read after the hour is at the floor.
        for _ in 0..200 {
            lead.record(16 * MS, Instant::now());
        }
        tokio::time::advance(1001 * MS).await;
        assert_eq!(lead.current(Instant::now()), Duration::from_micros(16250));
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(
            lead.current(Instant::now()),
            FLOOR,
            "an idle hour is 3,600 quiet seconds"
        );
    }
}
