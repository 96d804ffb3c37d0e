//! Values as COPY's text format reads them, converted by the target column's type as Django 1.4
//! reads SQLite's (`values::django_*`): integers outside the column's range refused, never
//! saturated.

use rusqlite::types::ValueRef;

use crate::values;

/// How a column's values are written for COPY's text format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    /// As Django 1.4 reads a SQLite `bool`: only `1` is true.
    Boolean,
    /// The PostgreSQL column's range: a value outside it is refused, never saturated.
    Integer {
        min: i64,
        max: i64,
    },
    Bytea,
    /// Parsed as Django 1.4 parses them (`values::django_datetime`, `django_date`).
    Datetime,
    Date,
    /// Text, numbers as text, times (read by PostgreSQL in the session's zone).
    Text,
}

pub(super) fn target_of(data_type: &str) -> Target {
    let range = |min: i64, max: i64| Target::Integer { min, max };
    match data_type {
        "boolean" => Target::Boolean,
        "smallint" => range(i16::MIN.into(), i16::MAX.into()),
        "integer" => range(i32::MIN.into(), i32::MAX.into()),
        "bigint" => range(i64::MIN, i64::MAX),
        "bytea" => Target::Bytea,
        "timestamp with time zone" | "timestamp without time zone" => Target::Datetime,
        "date" => Target::Date,
        _ => Target::Text,
    }
}

/// One value in COPY's text format (`\N` for NULL; backslash, tab, newline, CR escaped).
pub(super) fn encode(out: &mut Vec<u8>, target: Target, value: ValueRef<'_>) -> Result<(), String> {
    match (target, value) {
        (_, ValueRef::Null) => out.extend_from_slice(b"\\N"),
        (Target::Boolean, value) => {
            out.push(if values::django_bool(value) == Some(true) {
                b't'
            } else {
                b'f'
            })
        }
        (Target::Datetime | Target::Date, value) => {
            let text = values::sqlite_text(value).unwrap_or_default();
            let read = if target == Target::Datetime {
                values::django_datetime(&text)
            } else {
                values::django_date(&text)
            };
            match read {
                values::DjangoRead::Value(value) => out.extend_from_slice(value.as_bytes()),
                // Django reads None: loaddata loads NULL (scan-values reports it).
                values::DjangoRead::None => out.extend_from_slice(b"\\N"),
                values::DjangoRead::Error(why) => {
                    return Err(format!(
                        "Django 1.4 cannot read `{}` as a date ({why}; scan-values reports it)",
                        String::from_utf8_lossy(&text).escape_debug()
                    ))
                }
            }
        }
        (Target::Integer { min, max }, ValueRef::Integer(n)) => {
            if !(min..=max).contains(&n) {
                return Err(format!(
                    "{n} is outside the column's range {min}..={max} (scan-values reports it)"
                ));
            }
            out.extend_from_slice(n.to_string().as_bytes())
        }
        (Target::Integer { min, max }, ValueRef::Real(x)) => match values::whole_i64(x) {
            Some(n) if (min..=max).contains(&n) => out.extend_from_slice(n.to_string().as_bytes()),
            _ => {
                return Err(format!(
                    "{x:?} is not an integer in the column's range {min}..={max} (scan-values reports it)"
                ))
            }
        },
        (Target::Bytea, ValueRef::Integer(_) | ValueRef::Real(_)) => {
            return Err("a number in a bytea column: no Sentry 4 model writes one".into())
        }
        (_, ValueRef::Integer(n)) => out.extend_from_slice(n.to_string().as_bytes()),
        (_, ValueRef::Real(x)) => out.extend_from_slice(format!("{x:?}").as_bytes()),
        (Target::Bytea, ValueRef::Blob(bytes) | ValueRef::Text(bytes)) => {
            out.extend_from_slice(b"\\\\x");
            for byte in bytes {
                out.extend_from_slice(format!("{byte:02x}").as_bytes());
            }
        }
        (_, ValueRef::Text(bytes) | ValueRef::Blob(bytes)) => {
            if std::str::from_utf8(bytes).is_err() {
                return Err(
                    "text that is not valid UTF-8 (scan-values finds it; --fit-values fits it)"
                        .into(),
                );
            }
            for &byte in bytes {
                match byte {
                    0 => {
                        return Err(
                            "a NUL character (scan-values finds it; --fit-values fits it)".into(),
                        )
                    }
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    _ => out.push(byte),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(target: Target, value: ValueRef<'_>) -> String {
        let mut out = Vec::new();
        encode(&mut out, target, value).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn values_are_written_as_copy_text_reads_them() {
        const INT: Target = Target::Integer {
            min: i32::MIN as i64,
            max: i32::MAX as i64,
        };
        assert_eq!(enc(Target::Boolean, ValueRef::Integer(1)), "t");
        assert_eq!(enc(Target::Boolean, ValueRef::Integer(0)), "f");
        assert_eq!(enc(INT, ValueRef::Integer(-42)), "-42");
        assert_eq!(enc(INT, ValueRef::Real(3.0)), "3");
        assert_eq!(enc(Target::Text, ValueRef::Real(0.25)), "0.25");
        assert_eq!(enc(Target::Text, ValueRef::Null), "\\N");
        assert_eq!(
            enc(Target::Text, ValueRef::Text("a\tb\nc\\d\re ✓".as_bytes())),
            "a\\tb\\nc\\\\d\\re ✓"
        );
        assert_eq!(
            enc(Target::Datetime, ValueRef::Text(b"2012-03-04 05:06:07.5")),
            "2012-03-04 05:06:07.500000"
        );
        assert_eq!(enc(Target::Bytea, ValueRef::Blob(&[0, 255])), "\\\\x00ff");
        let mut out = Vec::new();
        assert!(encode(&mut out, Target::Text, ValueRef::Text(b"a\0b"))
            .unwrap_err()
            .contains("NUL"));
        assert!(encode(&mut out, Target::Text, ValueRef::Text(b"\xff"))
            .unwrap_err()
            .contains("UTF-8"));
    }

    /// The copy reads what Django 1.4 reads (cases checked against Django 1.4.22 under Python
    /// 2.7.18; see `values::tests`), never saturates, never writes a number as bytea.
    #[test]
    fn values_are_read_as_django_1_4_reads_them() {
        const INT: Target = Target::Integer {
            min: i32::MIN as i64,
            max: i32::MAX as i64,
        };
        const BIG: Target = Target::Integer {
            min: i64::MIN,
            max: i64::MAX,
        };
        for (value, expected) in [
            (ValueRef::Integer(2), "f"),
            (ValueRef::Integer(-1), "f"),
            (ValueRef::Text(b"t"), "f"),
            (ValueRef::Text(b"true"), "f"),
            (ValueRef::Text(b"1"), "t"),
            (ValueRef::Real(1.5), "f"),
            (ValueRef::Text(b"maybe"), "f"),
        ] {
            assert_eq!(enc(Target::Boolean, value), expected, "{value:?}");
        }
        for (text, expected) in [
            ("2012-4-9 4:8:16", "2012-04-09 04:08:16.000000"),
            ("2012-04-23 10:20:30+0100", "\\N"),
            ("2012-04-23 10:20:30\n", "2012-04-23 10:20:30.000000"),
            (
                "2012-04-23T10:20:30.400+02:30",
                "2012-04-23 10:20:30.400000+02:30",
            ),
            ("yesterday", "\\N"),
        ] {
            assert_eq!(
                enc(Target::Datetime, ValueRef::Text(text.as_bytes())),
                expected,
                "{text:?}"
            );
        }
        assert_eq!(
            enc(Target::Date, ValueRef::Text(b"2012-4-9\n")),
            "2012-04-09"
        );
        let mut out = Vec::new();
        assert!(encode(
            &mut out,
            Target::Datetime,
            ValueRef::Text(b"2012-04-23 10:20:30+1:0")
        )
        .is_err());
        assert!(encode(
            &mut out,
            Target::Datetime,
            ValueRef::Text(b"2012-13-01 00:00")
        )
        .is_err());
        assert!(encode(&mut out, BIG, ValueRef::Real(9_223_372_036_854_775_808.0)).is_err());
        assert!(encode(&mut out, INT, ValueRef::Integer(1 << 31)).is_err());
        assert!(encode(&mut out, INT, ValueRef::Real(2.5)).is_err());
        assert!(encode(&mut out, Target::Bytea, ValueRef::Integer(7)).is_err());
        assert_eq!(enc(BIG, ValueRef::Integer(i64::MAX)), i64::MAX.to_string());
    }
}
