//! Go's `time.ParseDuration`, byte for byte: the same grammar, the same overflow rules, the
//! same error texts, so the demo answers exactly as Go's does.

/// Nanoseconds per unit, as Go's `unitMap`.
const UNITS: &[(&str, u64)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("\u{00b5}s", 1_000), // µ: micro sign
    ("\u{03bc}s", 1_000), // μ: Greek small letter mu
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

const LIMIT: u64 = 1 << 63;

/// A duration in nanoseconds, parsed as Go's `time.ParseDuration` does:
/// `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`, or `0`. The error text is Go's.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let orig = s;
    let invalid = || format!("time: invalid duration {}", quote(orig));
    let mut rest = s.as_bytes();
    let mut neg = false;
    if let Some(&c) = rest.first()
        && (c == b'-' || c == b'+')
    {
        neg = c == b'-';
        rest = &rest[1..];
    }
    if rest == b"0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        if !(rest[0] == b'.' || rest[0].is_ascii_digit()) {
            return Err(invalid());
        }
        let before = rest.len();
        let (mut v, r) = leading_int(rest).ok_or_else(invalid)?;
        rest = r;
        let pre = before != rest.len();
        let (mut f, mut scale, mut post) = (0u64, 1f64, false);
        if rest.first() == Some(&b'.') {
            rest = &rest[1..];
            let before = rest.len();
            let (ff, sc, r) = leading_fraction(rest);
            (f, scale, rest) = (ff, sc, r);
            post = before != rest.len();
        }
        if !pre && !post {
            return Err(invalid());
        }
        let unit_len = rest
            .iter()
            .position(|&c| c == b'.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {}", quote(orig)));
        }
        // The unit ends at an ASCII byte, so it is whole UTF-8.
        let unit_text = std::str::from_utf8(&rest[..unit_len]).unwrap_or_default();
        rest = &rest[unit_len..];
        let unit = UNITS
            .iter()
            .find(|(name, _)| *name == unit_text)
            .map(|&(_, ns)| ns)
            .ok_or_else(|| {
                format!(
                    "time: unknown unit {} in duration {}",
                    quote(unit_text),
                    quote(orig)
                )
            })?;
        if v > LIMIT / unit {
            return Err(invalid());
        }
        v *= unit;
        if f > 0 {
            // As Go: float64 keeps fractions of hours nanosecond-accurate.
            v += (f as f64 * (unit as f64 / scale)) as u64;
            if v > LIMIT {
                return Err(invalid());
            }
        }
        total += v;
        if total > LIMIT {
            return Err(invalid());
        }
    }
    if neg {
        // total <= 2^63, so its negation fits.
        return Ok((total as i128).wrapping_neg() as i64);
    }
    if total > LIMIT - 1 {
        return Err(invalid());
    }
    Ok(total as i64)
}

/// Go's `Duration.String`: `1h2m3.5s`, `1.5ms`, `2µs`, `0s`; the inverse of
/// [`parse_duration`] (`parse_duration(&format_duration(d)) == Ok(d)` for every `d`).
pub fn format_duration(nanos: i64) -> String {
    let neg = nanos < 0;
    let u = nanos.unsigned_abs();
    let sign = if neg { "-" } else { "" };
    // `v` as an integer part and a fraction of `prec` digits, trailing zeros (and a bare
    // point) dropped.
    let split = |v: u64, prec: u32| {
        let scale = 10u64.pow(prec);
        let frac = format!("{:0width$}", v % scale, width = prec as usize);
        let frac = frac.trim_end_matches('0');
        let frac = if frac.is_empty() {
            String::new()
        } else {
            format!(".{frac}")
        };
        (v / scale, frac)
    };
    if u < 1_000_000_000 {
        let (prec, unit) = match u {
            0 => return "0s".to_owned(),
            1..1_000 => (0, "ns"),
            1_000..1_000_000 => (3, "\u{00b5}s"),
            _ => (6, "ms"),
        };
        let (int, frac) = split(u, prec);
        return format!("{sign}{int}{frac}{unit}");
    }
    let (secs, frac) = split(u, 9);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{sign}{h}h{m}m{s}{frac}s")
    } else if secs >= 60 {
        format!("{sign}{m}m{s}{frac}s")
    } else {
        format!("{sign}{s}{frac}s")
    }
}

/// Consumes leading digits; `None` on overflow past 2^63, as Go's `leadingInt`.
fn leading_int(s: &[u8]) -> Option<(u64, &[u8])> {
    let mut x: u64 = 0;
    let mut i = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        if x > LIMIT / 10 {
            return None;
        }
        x = x * 10 + u64::from(s[i] - b'0');
        if x > LIMIT {
            return None;
        }
        i += 1;
    }
    Some((x, &s[i..]))
}

/// Consumes leading fraction digits, keeping what precision fits, as Go's `leadingFraction`.
fn leading_fraction(s: &[u8]) -> (u64, f64, &[u8]) {
    let (mut x, mut scale, mut overflow) = (0u64, 1f64, false);
    let mut i = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        if !overflow {
            if x > (LIMIT - 1) / 10 {
                overflow = true;
            } else {
                let y = x * 10 + u64::from(s[i] - b'0');
                if y > LIMIT {
                    overflow = true;
                } else {
                    x = y;
                    scale *= 10.0;
                }
            }
        }
        i += 1;
    }
    (x, scale, &s[i..])
}

/// Go's `time.quote`: double quotes, `"` and `\` escaped, every byte of a non-ASCII or
/// control character as `\xNN`.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for (i, c) in s.char_indices() {
        if (c as u32) < 0x20 || (c as u32) >= 0x80 {
            for b in &s.as_bytes()[i..i + c.len_utf8()] {
                out.push_str(&format!("\\x{b:02x}"));
            }
        } else {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_as_go_does() {
        for (nanos, go) in [
            (0, "0s"),
            (1, "1ns"),
            (1_100, "1.1\u{00b5}s"),
            (2_200_000, "2.2ms"),
            (3_300_000_000, "3.3s"),
            (4 * 60_000_000_000 + 5_000_000_000, "4m5s"),
            (3_600_000_000_000, "1h0m0s"),
            (5_400_000_000_000, "1h30m0s"),
            (-1_000_000_000, "-1s"),
            (i64::MAX, "2562047h47m16.854775807s"),
            (i64::MIN, "-2562047h47m16.854775808s"),
        ] {
            assert_eq!(format_duration(nanos), go, "{nanos}");
        }
    }

    // Bounded in CI (proptest's default case count); PROPTEST_CASES=1000000 runs longer.
    proptest! {
        #[test]
        fn parse_inverts_format(nanos in any::<i64>()) {
            prop_assert_eq!(parse_duration(&format_duration(nanos)), Ok(nanos));
        }

        #[test]
        fn nanoseconds_round_trip(nanos in any::<i64>()) {
            prop_assert_eq!(parse_duration(&format!("{nanos}ns")), Ok(nanos));
        }

        #[test]
        fn any_input_is_an_answer_never_a_panic(s in "\\PC{0,40}") {
            let _ = parse_duration(&s);
        }

        #[test]
        fn duration_like_input_is_an_answer_never_a_panic(s in "[-+]?([0-9]{0,22}(\\.[0-9]{0,22})?(ns|us|µs|μs|ms|s|m|h|x|)){1,4}") {
            match parse_duration(&s) {
                Ok(_) => {}
                Err(e) => prop_assert!(e.starts_with("time: "), "{}", e),
            }
        }
    }

    /// Inputs and what Go 1.22's `time.ParseDuration` returns for them (nanoseconds, or the
    /// error's text).
    #[test]
    fn matches_go_byte_for_byte() {
        let ok: &[(&str, i64)] = &[
            ("20s", 20_000_000_000),
            ("0s", 0),
            ("0", 0),
            ("-0", 0),
            ("+0", 0),
            ("1.5h", 5_400_000_000_000),
            ("300ms", 300_000_000),
            ("2h45m", 9_900_000_000_000),
            ("-1s", -1_000_000_000),
            ("+5s", 5_000_000_000),
            ("1us", 1_000),
            ("1µs", 1_000),
            ("1μs", 1_000),
            ("1ns", 1),
            (".5s", 500_000_000),
            ("1.s", 1_000_000_000),
            ("1.0000000001s", 1_000_000_000),
            ("1h1m1s1ms1us1ns", 3_661_001_001_001),
            ("9223372036854775807ns", i64::MAX),
            ("-9223372036854775808ns", i64::MIN),
            ("2562047h47m16.854775807s", i64::MAX),
        ];
        for (input, want) in ok {
            assert_eq!(parse_duration(input), Ok(*want), "{input:?}");
        }
        let err: &[(&str, &str)] = &[
            ("abc", r#"time: invalid duration "abc""#),
            ("5", r#"time: missing unit in duration "5""#),
            ("5x", r#"time: unknown unit "x" in duration "5x""#),
            ("", r#"time: invalid duration """#),
            ("-", r#"time: invalid duration "-""#),
            (".s", r#"time: invalid duration ".s""#),
            ("s", r#"time: invalid duration "s""#),
            ("1.5", r#"time: missing unit in duration "1.5""#),
            ("3000000h", r#"time: invalid duration "3000000h""#),
            (
                "9223372036854775808ns",
                r#"time: invalid duration "9223372036854775808ns""#,
            ),
            (
                "99999999999999999999s",
                r#"time: invalid duration "99999999999999999999s""#,
            ),
            ("1sx", r#"time: unknown unit "sx" in duration "1sx""#),
            ("1S", r#"time: unknown unit "S" in duration "1S""#),
            ("1 s", r#"time: unknown unit " s" in duration "1 s""#),
            ("1é", r#"time: unknown unit "\xc3\xa9" in duration "1\xc3\xa9""#),
            ("1\"s", r#"time: unknown unit "\"s" in duration "1\"s""#),
            ("1\ts", r#"time: unknown unit "\x09s" in duration "1\x09s""#),
        ];
        for (input, want) in err {
            assert_eq!(parse_duration(input), Err((*want).to_owned()), "{input:?}");
        }
    }
}
