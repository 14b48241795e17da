//! Exponential backoff with jitter between attempts of one export request.

use std::time::Duration;

pub const INITIAL: Duration = Duration::from_millis(250);
pub const MAX: Duration = Duration::from_secs(30);

/// Delay before retry `attempt` (0-based): what the server asked for when it said
/// (capped at 5 minutes), else INITIAL·2^attempt capped at MAX, scaled by a random factor
/// in [0.5, 1.0) so that agents restarted together do not retry in lockstep.
pub fn delay(attempt: u32, server_asked: Option<Duration>) -> Duration {
    if let Some(d) = server_asked {
        return d.min(Duration::from_secs(300));
    }
    let base = INITIAL.saturating_mul(1u32 << attempt.min(16)).min(MAX);
    let jitter: f64 = 0.5 + rand::random::<f64>() * 0.5;
    base.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_honours_the_server() {
        for attempt in 0..20 {
            let d = delay(attempt, None);
            let base = INITIAL.saturating_mul(1 << attempt.min(16)).min(MAX);
            assert!(d >= base / 2 && d <= base, "{attempt}: {d:?}");
        }
        assert!(delay(30, None) <= MAX);
        assert_eq!(
            delay(0, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
    }
}
