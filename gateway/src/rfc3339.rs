//! Parsing RFC 3339 timestamps (`since` of `/system/logs`) with any UTC offset, as Go's
//! `time.RFC3339` writes them (`2024-05-01T10:00:00+02:00`, `2024-05-01T08:00:00.5Z`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `t`/`z` and a space for `T` are accepted.
pub(crate) fn parse(text: &str) -> Result<SystemTime, String> {
    let bad = || format!("{text:?} is not an RFC 3339 time like 2024-05-01T10:00:00Z");
    let s = text.trim();
    if !s.is_ascii() || s.len() < 20 {
        return Err(bad());
    }
    let b = s.as_bytes();
    if b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let year = i64::from(digits(&s[0..4]).ok_or_else(bad)?);
    let month = digits(&s[5..7]).ok_or_else(bad)?;
    let day = digits(&s[8..10]).ok_or_else(bad)?;
    let hour = digits(&s[11..13]).ok_or_else(bad)?;
    let minute = digits(&s[14..16]).ok_or_else(bad)?;
    let second = digits(&s[17..19]).ok_or_else(bad)?;
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let mut rest = &s[19..];
    let mut nanos: u32 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let len = frac.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 {
            return Err(bad());
        }
        let kept = &frac[..len.min(9)];
        nanos = digits(kept).ok_or_else(bad)?
            * 10u32.pow(9 - u32::try_from(kept.len()).map_err(|_| bad())?);
        rest = &frac[len..];
    }
    let offset_seconds: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let rb = rest.as_bytes();
            if rb.len() != 6 || !matches!(rb[0], b'+' | b'-') || rb[3] != b':' {
                return Err(bad());
            }
            let oh = i64::from(digits(&rest[1..3]).ok_or_else(bad)?);
            let om = i64::from(digits(&rest[4..6]).ok_or_else(bad)?);
            if oh > 23 || om > 59 {
                return Err(bad());
            }
            let sign = if rb[0] == b'-' { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
    };
    let seconds = days_from_civil(year, month, day) * 86_400
        + i64::from(hour) * 3600
        + i64::from(minute) * 60
        + i64::from(second.min(59))
        - offset_seconds;
    if seconds >= 0 {
        let secs = u64::try_from(seconds).map_err(|_| bad())?;
        UNIX_EPOCH
            .checked_add(Duration::new(secs, nanos))
            .ok_or_else(bad)
    } else {
        let before =
            Duration::from_secs(seconds.unsigned_abs()) - Duration::from_nanos(u64::from(nanos));
        UNIX_EPOCH.checked_sub(before).ok_or_else(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(t: SystemTime) -> f64 {
        t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
    }

    #[test]
    fn parses_utc_offsets_and_fractions() {
        assert_eq!(unix(parse("1970-01-01T00:00:00Z").unwrap()), 0.0);
        assert_eq!(
            unix(parse("2024-05-01T10:00:00Z").unwrap()),
            1_714_557_600.0
        );
        assert_eq!(
            unix(parse("2024-05-01T12:00:00+02:00").unwrap()),
            1_714_557_600.0
        );
        assert_eq!(
            unix(parse("2024-05-01T05:30:00-04:30").unwrap()),
            1_714_557_600.0
        );
        assert_eq!(
            unix(parse("2024-05-01T10:00:00.25Z").unwrap()),
            1_714_557_600.25
        );
        let nanos = parse("2023-07-04T16:32:22.223912519Z")
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap();
        assert_eq!(nanos.subsec_nanos(), 223_912_519);
        assert_eq!(
            unix(parse("2024-02-29T00:00:00Z").unwrap()),
            1_709_164_800.0
        );
        let before = parse("1969-12-31T23:59:59Z").unwrap();
        assert_eq!(
            UNIX_EPOCH.duration_since(before).unwrap(),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn rejects_what_is_not_rfc3339() {
        for bad in [
            "",
            "yesterday",
            "2024-05-01",
            "2024-05-01T10:00:00",
            "2024-13-01T10:00:00Z",
            "2023-02-29T10:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T10:00:00+0200",
            "2024-05-01T10:00:00.Z",
            "1714557600",
            "2024-05-01T10:00:00Zjunk",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
