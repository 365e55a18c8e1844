//! The part of a log line before the message: timestamp, host, `program[pid]:`.
//!
//! Three shapes are read:
//! - BSD syslog and Postfix's `maillog_file`: `Nov 27 23:39:55 mx postfix/smtpd[14344]: …`
//!   (no year, local time; the year is inferred from a reference time).
//! - RFC 3339 timestamps (rsyslog's high-precision format, `journalctl -o short-iso`):
//!   `2026-11-27T23:15:02.118183+00:00 mx postfix/smtpd[123]: …`.
//! - Dovecot's own `log_path`: `Nov 27 23:40:02 imap-login: Info: Login: …` (no host, no pid).
use crate::time::Ts;

/// What turns a log's wall-clock time into a [`Ts`]: the local UTC offset and a
/// reference time (now, or a file's modification time) that no line is later than.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    /// Seconds east of UTC of the log's local time.
    pub utc_offset: i32,
    /// No BSD-format line is assumed to be more than a day after this.
    pub reference: Ts,
}

impl Clock {
    /// UTC logs, reference `reference`.
    pub fn utc(reference: Ts) -> Clock {
        Clock {
            utc_offset: 0,
            reference,
        }
    }

    /// This host's local offset at `reference` (from the C library, which reads TZ).
    pub fn local(reference: Ts) -> Clock {
        // Its type is the C library's time_t, inferred from localtime_r (naming `libc::time_t`
        // is deprecated on musl, whose time_t is changing to 64 bits).
        let Ok(secs) = (reference / 1_000_000_000).try_into() else {
            return Clock {
                utc_offset: 0,
                reference,
            };
        };
        // SAFETY: localtime_r writes only into the tm we pass; both pointers are valid.
        let offset = unsafe {
            let mut tm: libc::tm = std::mem::zeroed();
            if libc::localtime_r(&secs, &mut tm).is_null() {
                0
            } else {
                tm.tm_gmtoff as i32
            }
        };
        Clock {
            utc_offset: offset,
            reference,
        }
    }
}

/// A line split into its header and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefix<'a> {
    pub ts: Ts,
    pub host: Option<&'a str>,
    pub program: &'a str,
    pub pid: Option<u32>,
    pub message: &'a str,
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Splits a log line; None when it does not start with a timestamp and a program.
pub fn split<'a>(line: &'a str, clock: &Clock) -> Option<Prefix<'a>> {
    let (ts, rest) = match line.as_bytes().first() {
        Some(b'0'..=b'9') => iso(line)?,
        _ => bsd(line, clock)?,
    };
    let rest = rest.trim_start_matches(' ');
    let (first, after) = rest.split_once(' ')?;
    // Dovecot's log_path has no host: the first word is already `program:`.
    // A host name never ends with a colon; a tag always does.
    let (host, tag, message) = if first.ends_with(':') {
        (None, first, after)
    } else {
        let (tag, message) = after.split_once(' ').unwrap_or((after, ""));
        (Some(first), tag, message)
    };
    let tag = tag.strip_suffix(':')?;
    let (program, pid) = match tag.strip_suffix(']').and_then(|t| t.rsplit_once('[')) {
        Some((p, pid)) => (p, Some(pid.parse().ok()?)),
        None => (tag, None),
    };
    if program.is_empty() {
        return None;
    }
    Some(Prefix {
        ts,
        host,
        program,
        pid,
        message,
    })
}

/// `Nov 27 23:39:55 ` (day space-padded or not).
fn bsd<'a>(line: &'a str, clock: &Clock) -> Option<(Ts, &'a str)> {
    let month = MONTHS.iter().position(|m| line.starts_with(m))? as u8 + 1;
    let rest = line.get(3..)?.trim_start_matches(' ');
    let (day, rest) = rest.split_once(' ')?;
    let day: u8 = day.parse().ok()?;
    let (hms, rest) = rest.split_once(' ')?;
    let (h, m, s) = hms_of(hms)?;
    let reference =
        ::time::OffsetDateTime::from_unix_timestamp((clock.reference / 1_000_000_000) as i64)
            .ok()?;
    let mut year = reference.year();
    // A line dated more than a day after the reference belongs to last year
    // (a December log read in January).
    let mut t = epoch(year, month, day, h, m, s, clock.utc_offset)?;
    if t > clock.reference / 1_000_000_000 + 86_400 {
        year -= 1;
        t = epoch(year, month, day, h, m, s, clock.utc_offset)?;
    }
    Some((t * 1_000_000_000, rest))
}

fn hms_of(hms: &str) -> Option<(u8, u8, u8)> {
    let mut it = hms.split(':').map(|x| x.parse::<u8>().ok());
    let r = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(r)
}

fn epoch(year: i32, month: u8, day: u8, h: u8, m: u8, s: u8, offset: i32) -> Option<u64> {
    let date = ::time::Date::from_calendar_date(year, month.try_into().ok()?, day).ok()?;
    let t = ::time::Time::from_hms(h, m, s).ok()?;
    let secs = date.with_time(t).assume_utc().unix_timestamp() - i64::from(offset);
    u64::try_from(secs).ok()
}

/// `2026-11-27T23:15:02.118183+00:00 ` (also `Z`, `+0000`, no fraction).
fn iso(line: &str) -> Option<(Ts, &str)> {
    let (stamp, rest) = line.split_once(' ')?;
    Some((rfc3339(stamp)?, rest))
}

/// An RFC 3339 timestamp (`Z`, `+00:00` or `+0000`; fraction optional) as a [`Ts`].
pub fn rfc3339(stamp: &str) -> Option<Ts> {
    let b = stamp.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| stamp.get(r)?.parse::<u32>().ok();
    let (year, month, day) = (num(0..4)? as i32, num(5..7)? as u8, num(8..10)? as u8);
    let (h, m, s) = hms_of(stamp.get(11..19)?)?;
    let mut i = 19;
    let mut nanos = 0u64;
    if b.get(i) == Some(&b'.') {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        let frac = stamp.get(i + 1..i + 1 + digits.min(9))?;
        nanos = frac.parse::<u64>().ok()? * 10u64.pow(9 - frac.len() as u32);
        i += 1 + digits;
    }
    let zone = stamp.get(i..)?;
    let offset = match zone {
        "Z" => 0,
        _ => {
            let sign = match zone.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let digits: String = zone[1..].chars().filter(|c| *c != ':').collect();
            if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let hh: i32 = digits[..2].parse().ok()?;
            let mm: i32 = digits[2..].parse().ok()?;
            sign * (hh * 3600 + mm * 60)
        }
    };
    let secs = epoch(year, month, day, h, m, s, offset)?;
    Some(secs * 1_000_000_000 + nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-27T23:45:00Z
    const NOW: Ts = 1_795_823_100_000_000_000;

    #[test]
    fn postfix_maillog_file_line() {
        let p = split(
            "Nov 27 23:39:56 mx postfix/smtpd[14344]: connect from unknown[10.99.152.1]:46226",
            &Clock::utc(NOW),
        )
        .unwrap();
        assert_eq!(
            crate::time::rfc3339_micros(p.ts),
            "2026-11-27T23:39:56.000000Z"
        );
        assert_eq!(p.host, Some("mx"));
        assert_eq!(p.program, "postfix/smtpd");
        assert_eq!(p.pid, Some(14344));
        assert_eq!(p.message, "connect from unknown[10.99.152.1]:46226");
    }

    #[test]
    fn dovecot_log_path_line_has_no_host() {
        let p = split(
            "Nov 27 23:40:02 imap-login: Info: Login: user=<alice@mx.test>",
            &Clock::utc(NOW),
        )
        .unwrap();
        assert_eq!((p.host, p.program, p.pid), (None, "imap-login", None));
        assert_eq!(p.message, "Info: Login: user=<alice@mx.test>");
        let p = split(
            "Nov 27 23:40:02 imap(alice@mx.test)<14430><uLc8lEphtMoKY5gB>: Info: Disconnected: Logged out in=103",
            &Clock::utc(NOW),
        )
        .unwrap();
        assert_eq!(p.program, "imap(alice@mx.test)<14430><uLc8lEphtMoKY5gB>");
    }

    #[test]
    fn padded_day_local_offset_and_last_year() {
        let clock = Clock {
            utc_offset: 3600,
            reference: NOW,
        };
        let p = split("Nov  7 01:00:00 mx postfix/qmgr[1]: x", &clock).unwrap();
        assert_eq!(
            crate::time::rfc3339_micros(p.ts),
            "2026-11-07T00:00:00.000000Z"
        );
        // December seen from late November is last December.
        let p = split("Dec 31 23:00:00 mx postfix/qmgr[1]: x", &Clock::utc(NOW)).unwrap();
        assert_eq!(
            crate::time::rfc3339_micros(p.ts),
            "2025-12-31T23:00:00.000000Z"
        );
    }

    #[test]
    fn iso_timestamps() {
        let p = split(
            "2026-11-27T23:15:02.118183+00:00 mx postfix/smtpd[123]: hello",
            &Clock::utc(0),
        )
        .unwrap();
        assert_eq!(
            crate::time::rfc3339_micros(p.ts),
            "2026-11-27T23:15:02.118183Z"
        );
        assert_eq!(
            (p.host, p.program, p.pid, p.message),
            (Some("mx"), "postfix/smtpd", Some(123), "hello")
        );
        let p = split(
            "2026-11-28T00:15:02+0100 mx dovecot: imap-login: x",
            &Clock::utc(0),
        )
        .unwrap();
        assert_eq!(
            crate::time::rfc3339_micros(p.ts),
            "2026-11-27T23:15:02.000000Z"
        );
        assert_eq!(p.program, "dovecot");
    }

    #[test]
    fn junk_is_none() {
        for l in [
            "",
            "hello world",
            "Nov 99 23:00:00 mx postfix/qmgr[1]: x",
            "Nov 27 25:00:00 mx postfix/qmgr[1]: x",
            "Nov 27 23:00:00 mx postfix/qmgr[x]: y",
            "2026-13-01T00:00:00Z mx a: b",
            "2026-11-27T00:00:00.5+1 mx a: b",
            "Nov 27 23:00:00",
            "2026-11-27T00:00:00+1é1 mx a: b",
        ] {
            assert_eq!(split(l, &Clock::utc(NOW)), None, "{l:?}");
        }
    }
}
