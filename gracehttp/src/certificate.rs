//! The validity period of a certificate, read from its DER (X.509 `tbsCertificate.validity`),
//! so a server can warn at start when it is about to serve an expired or not-yet-valid one.
//! A few dozen lines of DER reading rather than a full X.509 crate: nothing else is needed.

use std::time::{SystemTime, UNIX_EPOCH};

/// `notBefore` and `notAfter`, in seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// Reads it from a DER certificate; `None` when the DER is not the expected shape.
    pub(crate) fn of(der: &[u8]) -> Option<Validity> {
        let (tag, cert, _) = tlv(der)?;
        if tag != 0x30 {
            return None;
        }
        let (tag, mut tbs, _) = tlv(cert)?;
        if tag != 0x30 {
            return None;
        }
        // version [0] (optional), serialNumber, signature, issuer, then validity.
        let (tag, _, rest) = tlv(tbs)?;
        if tag == 0xa0 {
            tbs = rest;
            tbs = tlv(tbs)?.2; // serialNumber
        } else {
            tbs = rest; // that was serialNumber
        }
        tbs = tlv(tbs)?.2; // signature
        tbs = tlv(tbs)?.2; // issuer
        let (tag, validity, _) = tlv(tbs)?;
        if tag != 0x30 {
            return None;
        }
        let (t1, before, rest) = tlv(validity)?;
        let (t2, after, _) = tlv(rest)?;
        Some(Validity {
            not_before: time(t1, before)?,
            not_after: time(t2, after)?,
        })
    }

    /// What is wrong with it now, if anything ("expired on 2024-01-31 12:00:00 UTC").
    pub(crate) fn problem(&self, now: SystemTime) -> Option<String> {
        let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64;
        if now > self.not_after {
            Some(format!("expired on {}", show(self.not_after)))
        } else if now < self.not_before {
            Some(format!("not valid until {}", show(self.not_before)))
        } else {
            None
        }
    }
}

/// One DER element: its tag, its contents, and what follows it.
fn tlv(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`), as Unix seconds.
fn time(tag: u8, text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let digits = |s: &str| s.parse::<i64>().ok();
    let (year, rest) = match (tag, text.len()) {
        (0x17, 12) => {
            let yy = digits(&text[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        (0x18, 14) => (digits(&text[..4])?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| digits(&rest[i..i + 2]);
    let (month, day) = (field(0)?, field(2)?);
    let (h, m, s) = (field(4)?, field(6)?, field(8)?);
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD HH:MM:SS UTC` of Unix seconds.
fn show(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // The inverse of days_from_civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_validity_rcgen_wrote() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2001, 2, 3);
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.clone().self_signed(&key).unwrap();
        let v = Validity::of(cert.der()).expect("parsed");
        assert_eq!(show(v.not_before), "2001-02-03 00:00:00 UTC");
        assert_eq!(show(v.not_after), "2049-12-31 00:00:00 UTC");
        let at = |secs: i64| UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
        assert_eq!(v.problem(at(v.not_after - 1)), None);
        assert_eq!(
            v.problem(at(v.not_after + 1)),
            Some("expired on 2049-12-31 00:00:00 UTC".into())
        );
        assert_eq!(
            v.problem(at(v.not_before - 1)),
            Some("not valid until 2001-02-03 00:00:00 UTC".into())
        );
        // GeneralizedTime for years from 2050 on.
        params.not_after = rcgen::date_time_ymd(2051, 6, 7);
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            show(Validity::of(cert.der()).unwrap().not_after),
            "2051-06-07 00:00:00 UTC"
        );
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\x30",
            b"\x30\x84\xff\xff\xff\xff",
            b"\x30\x03\x30\x01\x02",
            &[0xff; 64],
        ] {
            assert_eq!(Validity::of(bytes), None);
        }
    }
}
