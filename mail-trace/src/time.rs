//! Timestamps: nanoseconds since the Unix epoch, as one `u64` everywhere.
//!
//! Time is always passed in (never read from a clock) below the capture layer, so
//! replay and live capture behave the same and tests are deterministic.

/// Nanoseconds since 1970-01-01T00:00:00Z.
pub type Ts = u64;

/// Formats a timestamp as RFC 3339 UTC with microseconds, e.g.
/// `2026-11-27T23:01:40.123456Z`.
pub fn rfc3339_micros(ts: Ts) -> String {
    let dt = ::time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts))
        .unwrap_or(::time::OffsetDateTime::UNIX_EPOCH);
    let fmt = ::time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    dt.format(&fmt).unwrap_or_default()
}

/// Milliseconds between two timestamps, as a float with µs precision.
pub fn millis_between(from: Ts, to: Ts) -> f64 {
    (to.saturating_sub(from) / 1_000) as f64 / 1_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_micros() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_micros(1_795_906_900_123_456_789),
            "2026-11-28T23:01:40.123456Z"
        );
        assert_eq!(millis_between(1_000_000, 3_512_345), 2.512);
    }
}
