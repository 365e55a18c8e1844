//! Timestamps: nanoseconds since the Unix epoch, as one `u64` everywhere.
//!
//! Time is always passed in (never read from a clock) below the capture layer, so
//! replay and live capture behave the same and tests are deterministic.

/// Nanoseconds since 1970-01-01T00:00:00Z.
pub type Ts = u64;

/// Formats a timestamp as RFC 3339 UTC with microseconds, e.g.
/// `2026-11-27T23:01:40.123456Z`.
pub fn rfc3339_micros(ts: Ts) -> String {
    Rfc3339::new(ts).as_str().to_owned()
}

/// A timestamp formatted as RFC 3339 UTC with microseconds, on the stack: every
/// record and event carries one or two, and a general date formatter costs ~2,000
/// instructions each.
pub struct Rfc3339([u8; 27]);

impl Rfc3339 {
    pub fn new(ts: Ts) -> Self {
        let secs = ts / 1_000_000_000;
        let micros = (ts % 1_000_000_000) / 1_000;
        let (y, mo, d) = civil_from_days(secs / 86_400);
        let sod = secs % 86_400;
        let mut b = *b"0000-00-00T00:00:00.000000Z";
        put(&mut b[0..4], y);
        put(&mut b[5..7], mo);
        put(&mut b[8..10], d);
        put(&mut b[11..13], sod / 3_600);
        put(&mut b[14..16], sod / 60 % 60);
        put(&mut b[17..19], sod % 60);
        put(&mut b[20..26], micros);
        Rfc3339(b)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl serde::Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Writes `n` as decimal digits filling `out` (zero-padded, high digits dropped).
fn put(out: &mut [u8], mut n: u64) {
    for c in out.iter_mut().rev() {
        *c = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Year, month, day of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`,
/// for days on or after the epoch: a u64 of nanoseconds ends in the year 2554).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
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

    /// The general formatter this one replaced, as the oracle.
    fn oracle(ts: Ts) -> String {
        let dt = ::time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts)).unwrap();
        let fmt = ::time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        );
        dt.format(&fmt).unwrap()
    }

    #[test]
    fn agrees_with_the_general_formatter() {
        const DAY: u64 = 86_400_000_000_000;
        // Every day from 1970 to 2110 (leap years, 2000, 2100, year ends), at a moment
        // that moves through the day, and the last nanosecond of each day.
        for day in 0..51_500u64 {
            let t = day * DAY + (day * 7_919_000_123_457) % DAY;
            assert_eq!(Rfc3339::new(t).as_str(), oracle(t), "{t}");
            let end = day * DAY + DAY - 1;
            assert_eq!(Rfc3339::new(end).as_str(), oracle(end), "{end}");
        }
        // Spread over the whole u64 range, up to its end in 2554.
        for i in 0..20_000u64 {
            let t = i * (u64::MAX / 20_000) + i * 12_345_678_901;
            assert_eq!(Rfc3339::new(t).as_str(), oracle(t), "{t}");
        }
        for t in [
            u64::MAX,
            u64::MAX - 999,
            951_782_400_000_000_000,
            4_107_542_400_000_000_000,
        ] {
            assert_eq!(Rfc3339::new(t).as_str(), oracle(t), "{t}");
        }
        assert_eq!(
            Rfc3339::new(u64::MAX).as_str(),
            "2554-07-21T23:34:33.709551Z"
        );
        assert_eq!(
            Rfc3339::new(951_782_400_000_000_000).as_str(),
            "2000-02-29T00:00:00.000000Z"
        );
    }
}
