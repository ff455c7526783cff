//! A small JSON writer for the control socket's `status json`: a value tree rendered as one
//! line, strings escaped as RFC 8259 requires. Enough for what `status` reports; no parser,
//! no dependency.

use std::fmt::Write;

/// A JSON value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json {
    Null,
    Int(u64),
    /// Written with millisecond precision; a value that is not finite is written `null`.
    Float(f64),
    String(String),
    Array(Vec<Json>),
    /// Its members in order (keys are ours: written escaped all the same).
    Object(Vec<(&'static str, Json)>),
}

impl Json {
    /// The value as one line of JSON text.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Json::Float(x) if x.is_finite() => {
                let _ = write!(out, "{x:.3}");
            }
            Json::Float(_) => out.push_str("null"),
            Json::String(s) => escape(s, out),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Json::Object(members) => {
                out.push('{');
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    escape(key, out);
                    out.push(':');
                    value.write(out);
                }
                out.push('}');
            }
        }
    }
}

/// `s` as a JSON string, quotes included: `"` and `\` escaped, control characters as
/// `\n`, `\t`… or `\u00XX`; everything else (any Unicode) as it is.
fn escape(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_json_requires() {
        let cases = [
            ("plain", r#""plain""#),
            ("a \"quoted\" word", r#""a \"quoted\" word""#),
            (r"back\slash", r#""back\\slash""#),
            ("line\nbreak\r\ttab", r#""line\nbreak\r\ttab""#),
            ("\u{0}\u{1f}\u{8}\u{c}", r#""\u0000\u001f\b\f""#),
            // Not control characters: as they are (DEL, and Unicode beyond ASCII).
            ("\u{7f}é☃", "\"\u{7f}é☃\""),
            ("/", r#""/""#),
        ];
        for (input, expected) in cases {
            assert_eq!(Json::String(input.into()).render(), expected, "{input:?}");
        }
    }

    #[test]
    fn values_nest_into_one_line() {
        let value = Json::Object(vec![
            ("n", Json::Int(3)),
            ("x", Json::Float(1.23456)),
            ("nan", Json::Float(f64::NAN)),
            ("none", Json::Null),
            ("list", Json::Array(vec![Json::Int(1), Json::String("a".into())])),
            ("empty", Json::Array(Vec::new())),
            ("inner", Json::Object(vec![("k", Json::Null)])),
        ]);
        assert_eq!(
            value.render(),
            r#"{"n":3,"x":1.235,"nan":null,"none":null,"list":[1,"a"],"empty":[],"inner":{"k":null}}"#
        );
    }
}
