//! Background work with no request of the caller's in flight: the executor performs the
//! engine's own commands (whole-image prefetch, the timed commit of metadata) on its pool,
//! many at once, and sleeps while the engine only waits for a time.

use super::{Executor, ExecutorError};
use std::time::{Duration, Instant};

impl Executor {
    /// Runs the engine's background work (whole-image prefetch, the timed commit of
    /// metadata) while no request of the caller's needs it: performs the engine's commands,
    /// many in flight, waits for them no later than the engine next wants the time or
    /// `max_wait` has passed, and gives the engine the time. An engine with nothing in
    /// flight that waits for a time (a throttle window, a pause) is idle, not stalled: the
    /// calling thread sleeps until then. Returns once `max_wait` has passed, or earlier
    /// when the engine has nothing in flight and wants no time (its background work is
    /// done or was never on). Completions of the caller's requests that arrive meanwhile
    /// are kept for [`Self::wait_some`] and the other waits.
    pub fn run_background(&mut self, max_wait: Duration) -> Result<(), ExecutorError> {
        let until = Instant::now().checked_add(max_wait);
        let over = |until: Option<Instant>| until.is_some_and(|until| Instant::now() >= until);
        loop {
            self.tick();
            self.dispatch_and_send();
            if self.pool.outstanding > 0 {
                self.turn_until(until)?;
            } else {
                let Some(f) = self.fvd() else {
                    return Ok(());
                };
                let Some(deadline) = f.chain.poll_timeout() else {
                    if f.chain.requests_in_flight() > 0 {
                        // A request waits with no command and no time to wait for.
                        return Err(ExecutorError::Stalled(self.in_flight));
                    }
                    return Ok(());
                };
                let mut sleep =
                    Duration::from_millis(deadline.saturating_sub(self.now_ms()).max(1));
                if let Some(until) = until {
                    sleep = sleep.min(until.saturating_duration_since(Instant::now()));
                }
                std::thread::sleep(sleep);
            }
            if over(until) {
                // The time it slept or waited is the engine's too, and what that starts
                // goes out now: the workers go on while the caller does something else.
                self.tick();
                self.dispatch_and_send();
                return Ok(());
            }
        }
    }

    /// Takes the operating system's reason for the last job that failed on a file (a
    /// request or background work failed with the engine's bare I/O error).
    pub fn take_os_error(&mut self) -> Option<std::io::Error> {
        self.last_os_error.take()
    }
}
