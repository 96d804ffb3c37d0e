//! Django 1.4's readers of what SQLite stores: booleans, the dates and datetimes grammar of
//! `dateparse`, whole integers. The scan and the copy engine both read with these, so both
//! engines load the same thing.

use rusqlite::types::ValueRef;

/// What Django 1.4's SQLite backend reads from a stored value: a value, `None` (its parsers
/// return None on a string their pattern does not match; loaddata then loads NULL), or an
/// exception (dumpdata fails). Both the scan and the copy engine use these, so both engines
/// load the same thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DjangoRead {
    /// The value as PostgreSQL text (`YYYY-MM-DD HH:MM:SS.ffffff[+HH:MM]`, `YYYY-MM-DD`).
    Value(String),
    None,
    Error(String),
}

/// The bytes Python's sqlite3 hands a converter: the value as SQLite renders it as text.
pub fn sqlite_text(value: ValueRef<'_>) -> Option<std::borrow::Cow<'_, [u8]>> {
    use std::borrow::Cow;
    match value {
        ValueRef::Null => None,
        ValueRef::Integer(n) => Some(Cow::Owned(n.to_string().into_bytes())),
        ValueRef::Real(x) => Some(Cow::Owned(format!("{x:?}").into_bytes())),
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => Some(Cow::Borrowed(bytes)),
    }
}

/// Django 1.4's `register_converter("bool", lambda s: str(s) == '1')`: only the text `1` is
/// true (an INTEGER 1 arrives as `b'1'`; a `bool` column's NUMERIC affinity stores a REAL 1.0
/// as the INTEGER 1); `t`, `true`, 2 are false.
pub fn django_bool(value: ValueRef<'_>) -> Option<bool> {
    sqlite_text(value).map(|text| &*text == b"1")
}

/// A REAL that is a whole number an i64 holds exactly (never saturated: 2^63 is not one).
pub fn whole_i64(x: f64) -> Option<i64> {
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    (x.fract() == 0.0 && (-TWO_63..TWO_63).contains(&x)).then_some(x as i64)
}

/// Greedy `\d{min,max}` (the same as the regex's backtracking here: each group is followed by
/// a non-digit, or by the end).
fn digits(text: &[u8], at: &mut usize, min: usize, max: usize) -> Option<(u32, usize)> {
    let start = *at;
    while *at < text.len() && *at - start < max && text[*at].is_ascii_digit() {
        *at += 1;
    }
    if *at - start < min {
        return None;
    }
    let taken = &text[start..*at];
    let value = taken
        .iter()
        .take(9)
        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    Some((value, *at - start))
}

fn eat(text: &[u8], at: &mut usize, byte: u8) -> bool {
    let ok = text.get(*at) == Some(&byte);
    if ok {
        *at += 1;
    }
    ok
}

/// Python's `$`: the end, or just before a newline that ends the string.
fn at_end(text: &[u8], at: usize) -> bool {
    at == text.len() || (at + 1 == text.len() && text[at] == b'\n')
}

/// `(?P<year>\d{4})-(?P<month>\d{1,2})-(?P<day>\d{1,2})`
fn date_groups(text: &[u8], at: &mut usize) -> Option<(u32, u32, u32)> {
    let (year, _) = digits(text, at, 4, 4)?;
    eat(text, at, b'-').then_some(())?;
    let (month, _) = digits(text, at, 1, 2)?;
    eat(text, at, b'-').then_some(())?;
    let (day, _) = digits(text, at, 1, 2)?;
    Some((year, month, day))
}

/// `datetime.date(year, month, day)`'s checks.
fn python_date(year: u32, month: u32, day: u32) -> Result<String, String> {
    if !(1..=9999).contains(&year) {
        return Err("year is out of range".into());
    }
    if !(1..=12).contains(&month) {
        return Err("month must be in 1..12".into());
    }
    jiff::civil::Date::new(year as i16, month as i8, day as i8)
        .map_err(|_| "day is out of range for month".to_string())?;
    Ok(format!("{year:04}-{month:02}-{day:02}"))
}

/// `django.utils.dateparse.parse_date` (Django 1.4): `date_re.match`, then `datetime.date`.
pub fn django_date(text: &[u8]) -> DjangoRead {
    let mut at = 0;
    match date_groups(text, &mut at) {
        Some((y, m, d)) if at_end(text, at) => match python_date(y, m, d) {
            Ok(value) => DjangoRead::Value(value),
            Err(why) => DjangoRead::Error(why),
        },
        _ => DjangoRead::None,
    }
}

/// `django.utils.dateparse.parse_datetime` (Django 1.4, `USE_TZ` off as in Sentry 4):
/// `datetime_re.match` with
/// `\d{4}-\d{1,2}-\d{1,2}[T ]\d{1,2}:\d{1,2}(?::\d{1,2}(?:\.\d{1,6}\d{0,6})?)?(Z|[+-]\d{1,2}:\d{1,2})?$`,
/// then the offset as `int(tz[1:3])` and `int(tz[4:6])` (so `+1:0` raises) and `datetime(..)`.
pub fn django_datetime(text: &[u8]) -> DjangoRead {
    let mut at = 0;
    let groups = (|| {
        let date = date_groups(text, &mut at)?;
        (eat(text, &mut at, b'T') || eat(text, &mut at, b' ')).then_some(())?;
        let (hour, _) = digits(text, &mut at, 1, 2)?;
        eat(text, &mut at, b':').then_some(())?;
        let (minute, _) = digits(text, &mut at, 1, 2)?;
        let mut second = 0;
        let mut micro = 0;
        let mark = at;
        if eat(text, &mut at, b':') {
            match digits(text, &mut at, 1, 2) {
                Some((s, _)) => {
                    second = s;
                    let mark = at;
                    if eat(text, &mut at, b'.') {
                        let start = at;
                        match digits(text, &mut at, 1, 12) {
                            Some(_) => {
                                let used = &text[start..at.min(start + 6)];
                                let (n, len) = digits(used, &mut 0, 1, 6)?;
                                micro = n * 10u32.pow(6 - len as u32);
                            }
                            None => at = mark,
                        }
                    }
                }
                None => at = mark,
            }
        }
        let tz_start = at;
        let mut tz = None;
        if eat(text, &mut at, b'Z') {
            tz = Some(&text[tz_start..at]);
        } else if eat(text, &mut at, b'+') || eat(text, &mut at, b'-') {
            let ok = digits(text, &mut at, 1, 2).is_some()
                && eat(text, &mut at, b':')
                && digits(text, &mut at, 1, 2).is_some();
            if ok {
                tz = Some(&text[tz_start..at]);
            } else {
                at = tz_start;
            }
        }
        at_end(text, at).then_some((date, hour, minute, second, micro, tz))
    })();
    let Some(((year, month, day), hour, minute, second, micro, tz)) = groups else {
        return DjangoRead::None;
    };
    let offset = match tz {
        None => String::new(),
        Some(b"Z") => "+00:00".into(),
        Some(tz) => {
            // `int(tzinfo[1:3])`, `int(tzinfo[4:6])`: slices of digits and `:`.
            let int = |from: usize, to: usize| -> Option<u32> {
                let part = tz.get(from..to.min(tz.len()))?;
                (!part.is_empty() && part.iter().all(u8::is_ascii_digit))
                    .then(|| part.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
            };
            let (Some(h), Some(m)) = (int(1, 3), int(4, 6)) else {
                return DjangoRead::Error(format!(
                    "invalid literal for int() in the offset `{}`",
                    String::from_utf8_lossy(tz)
                ));
            };
            let minutes = 60 * h + m;
            if minutes >= 1440 {
                return DjangoRead::Error(format!("offset of {minutes} minutes"));
            }
            format!("{}{:02}:{:02}", tz[0] as char, minutes / 60, minutes % 60)
        }
    };
    let date = match python_date(year, month, day) {
        Ok(date) => date,
        Err(why) => return DjangoRead::Error(why),
    };
    for (value, limit, what) in [
        (hour, 23, "hour must be in 0..23"),
        (minute, 59, "minute must be in 0..59"),
        (second, 59, "second must be in 0..59"),
    ] {
        if value > limit {
            return DjangoRead::Error(what.into());
        }
    }
    DjangoRead::Value(format!(
        "{date} {hour:02}:{minute:02}:{second:02}.{micro:06}{offset}"
    ))
}

#[cfg(test)]
mod tests {
    use rusqlite::types::ValueRef;

    use super::{django_bool, django_date, django_datetime, DjangoRead};

    /// Each expected value is what Django 1.4.22's `django/utils/dateparse.py` returned under
    /// Python 2.7.18 (`settings.configure(USE_TZ=False)`); `E` is an exception, `-` is None.
    #[test]
    fn dates_as_django_1_4_parses_them() {
        for (text, expected) in [
            ("2012-04-23T09:15:00", "2012-04-23 09:15:00.000000"),
            ("2012-4-9 4:8:16", "2012-04-09 04:08:16.000000"),
            (
                "2012-04-23T10:20:30.400+02:30",
                "2012-04-23 10:20:30.400000+02:30",
            ),
            ("2012-04-23T10:20:30.400-02", "-"),
            ("2012-04-23T10:20:30.400+0100", "-"),
            ("2012-04-23 10:20:30+1:0", "E"),
            ("2012-04-23 10:20:30-1:30", "E"),
            (
                "2012-04-23 10:20:30+01:7",
                "2012-04-23 10:20:30.000000+01:07",
            ),
            ("2012-04-23 10:20:30+25:00", "E"),
            ("2012-04-23 10:20:30\n", "2012-04-23 10:20:30.000000"),
            (
                "2012-04-23 10:20:30+01:00\n",
                "2012-04-23 10:20:30.000000+01:00",
            ),
            ("2012-04-23 10:20:30\n\n", "-"),
            ("2012-04-23 10:20:30.1234567890123", "-"),
            ("2012-04-23 10:20:30.1234567", "2012-04-23 10:20:30.123456"),
            ("2012-04-23 10:20:30.4", "2012-04-23 10:20:30.400000"),
            ("2012-04-23 10:20:30Z", "2012-04-23 10:20:30.000000+00:00"),
            ("2012-04-23 10:20", "2012-04-23 10:20:00.000000"),
            ("2012-04-23 10:20:", "-"),
            ("2012-04-23 10:20:30.", "-"),
            ("2012-04-23", "-"),
            ("2012-04-23 10:20:30 junk", "-"),
            (" 2012-04-23 10:20:30", "-"),
            ("04/03/2012 05:06", "-"),
            ("", "-"),
            ("2012-13-04 05:06:07", "E"),
            ("2011-02-29 00:00:00", "E"),
            ("2000-02-29 00:00:00", "2000-02-29 00:00:00.000000"),
            ("2012-04-23 24:00:00", "E"),
            ("2012-04-23 10:60:00", "E"),
            ("0000-01-01 00:00:00", "E"),
        ] {
            let got = match django_datetime(text.as_bytes()) {
                DjangoRead::Value(value) => value,
                DjangoRead::None => "-".into(),
                DjangoRead::Error(_) => "E".into(),
            };
            assert_eq!(got, expected, "{text:?}");
        }
        for (text, expected) in [
            ("2012-04-23", "2012-04-23"),
            ("2012-4-9", "2012-04-09"),
            ("2012-04-23\n", "2012-04-23"),
            ("2012-04-23 10:00", "-"),
            ("2012-02-30", "E"),
        ] {
            let got = match django_date(text.as_bytes()) {
                DjangoRead::Value(value) => value,
                DjangoRead::None => "-".into(),
                DjangoRead::Error(_) => "E".into(),
            };
            assert_eq!(got, expected, "{text:?}");
        }
    }

    /// Python 2.7.18's sqlite3 with Django 1.4's `bool` converter on a `bool` column.
    #[test]
    fn booleans_as_django_1_4_reads_them() {
        for (value, expected) in [
            (ValueRef::Integer(1), true),
            (ValueRef::Integer(0), false),
            (ValueRef::Integer(2), false),
            (ValueRef::Integer(-1), false),
            (ValueRef::Real(1.5), false),
            (ValueRef::Text(b"1"), true),
            (ValueRef::Text(b"t"), false),
            (ValueRef::Text(b"true"), false),
            (ValueRef::Text(b"True"), false),
            (ValueRef::Blob(b"1"), true),
        ] {
            assert_eq!(django_bool(value), Some(expected), "{value:?}");
        }
        assert_eq!(django_bool(ValueRef::Null), None);
    }
}
