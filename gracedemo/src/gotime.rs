//! A time printed as Go prints a `time.Time` with `%s`:
//! `2026-11-25 03:18:21.123456789 +0000 UTC` (the fraction without trailing zeros).

use chrono::{DateTime, Local, Offset};

/// A local time, as [`go_time`] takes it.
pub type LocalTime = DateTime<Local>;

/// Now, in local time.
pub fn now() -> LocalTime {
    Local::now()
}

/// Formats `t` in Go's `Time.String` layout, without the monotonic-clock suffix. The zone is
/// `UTC` at offset zero; elsewhere it is the numeric offset, as Go writes a zone it has no
/// abbreviation for (chrono cannot read the system's abbreviations).
pub fn go_time(t: DateTime<Local>) -> String {
    let nanos = t.timestamp_subsec_nanos();
    let fraction = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}").trim_end_matches('0').to_owned()
    };
    let offset = t.offset().fix().local_minus_utc();
    let sign = if offset < 0 { '-' } else { '+' };
    let numeric = format!("{sign}{:02}{:02}", offset.abs() / 3600, offset.abs() % 3600 / 60);
    let zone = if offset == 0 {
        "UTC".to_owned()
    } else {
        numeric.clone()
    };
    format!("{}{fraction} {numeric} {zone}", t.format("%Y-%m-%d %H:%M:%S"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn trims_the_fraction_as_go_does() {
        let utc = chrono::FixedOffset::east_opt(0).unwrap();
        let at = |nanos| {
            utc.with_ymd_and_hms(2026, 11, 25, 3, 18, 21).unwrap() + chrono::Duration::nanoseconds(nanos)
        };
        let local = |t: DateTime<chrono::FixedOffset>| t.with_timezone(&Local);
        // Run under TZ=UTC these are exact; elsewhere only the shape is checked.
        let s = go_time(local(at(123_456_789)));
        if Local::now().offset().fix().local_minus_utc() == 0 {
            assert_eq!(s, "2026-11-25 03:18:21.123456789 +0000 UTC");
            assert_eq!(
                go_time(local(at(120_000_000))),
                "2026-11-25 03:18:21.12 +0000 UTC"
            );
            assert_eq!(go_time(local(at(0))), "2026-11-25 03:18:21 +0000 UTC");
        } else {
            assert!(s.contains(".123456789 "), "{s}");
        }
    }
}
