//! Values SQLite kept and PostgreSQL rejects: found per column before anything is touched
//! (`scan`), fitted on request in a working copy (`fit`), every changed row recorded.
//!
//! SQLite enforces neither `varchar(n)` nor what a text holds, and Sentry 4.10 stores what
//! clients send. The column types come from SQLite's declared types, which the same South
//! migrations wrote that build the PostgreSQL schema (`sentry_projectoptions.key` is
//! varchar(32) there even where the model says 64).

use std::{
    collections::BTreeMap,
    fmt,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use rusqlite::{types::ValueRef, Connection, OpenFlags};
use serde::{Deserialize, Serialize};

/// What kind of value PostgreSQL (or Django reading SQLite) would reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Longer than the column's `varchar(n)`, in characters as PostgreSQL counts them.
    TooLong,
    /// A NUL character: PostgreSQL text cannot hold one.
    Nul,
    /// Not valid UTF-8: Django cannot even read it from SQLite (`Could not decode to UTF-8`).
    InvalidUtf8,
    /// An integer outside the PostgreSQL column's range (or negative in an unsigned one).
    IntegerOutOfRange,
    /// Something other than an integer in an integer column.
    NotAnInteger,
    /// A date or datetime Django 1.4's `dateparse` reads as None (loaddata loads NULL, or fails
    /// on a NOT NULL column) or raises on (dumpdata fails).
    BadDate,
}

impl Kind {
    /// Whether `--fit-values` fits it.
    pub fn fittable(self) -> bool {
        matches!(self, Kind::TooLong | Kind::Nul | Kind::InvalidUtf8)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::TooLong => "longer than the column allows",
            Kind::Nul => "with NUL characters",
            Kind::InvalidUtf8 => "that are not valid UTF-8",
            Kind::IntegerOutOfRange => "outside the column's integer range",
            Kind::NotAnInteger => "that are not integers",
            Kind::BadDate => "that Django 1.4 reads as None (NULL) or cannot read as dates",
        })
    }
}

/// A column's type as far as the checks go, from SQLite's declared type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `varchar(n)` / `char(n)`: at most `n` characters.
    Varchar(u64),
    Text,
    Integer {
        min: i64,
        max: i64,
    },
    Datetime,
    Date,
    /// Floats, blobs, booleans: nothing PostgreSQL rejects that SQLite keeps.
    Other,
}

/// Django 1.4's SQLite types (and South's `INTEGER` for keys) to what PostgreSQL will hold.
pub fn column_type(declared: &str) -> ColumnType {
    let lower = declared.trim().to_ascii_lowercase();
    let unsigned = lower.ends_with(" unsigned");
    let base = lower.trim_end_matches(" unsigned");
    if let Some(rest) = base
        .strip_prefix("varchar(")
        .or_else(|| base.strip_prefix("char("))
    {
        if let Some(n) = rest.strip_suffix(')').and_then(|n| n.trim().parse().ok()) {
            return ColumnType::Varchar(n);
        }
    }
    let min = |min: i64| if unsigned { 0 } else { min };
    match base {
        "text" => ColumnType::Text,
        "integer" => ColumnType::Integer {
            min: min(i32::MIN.into()),
            max: i32::MAX.into(),
        },
        "smallint" => ColumnType::Integer {
            min: min(i16::MIN.into()),
            max: i16::MAX.into(),
        },
        "bigint" => ColumnType::Integer {
            min: min(i64::MIN),
            max: i64::MAX,
        },
        "datetime" => ColumnType::Datetime,
        "date" => ColumnType::Date,
        _ => ColumnType::Other,
    }
}

/// The first problem of one value, if any (`longest` gets its length in characters).
fn check_value(ty: ColumnType, value: ValueRef<'_>) -> Option<(Kind, Option<u64>)> {
    match (ty, value) {
        (_, ValueRef::Null) | (ColumnType::Other, _) => None,
        (
            ColumnType::Varchar(_) | ColumnType::Text,
            ValueRef::Text(bytes) | ValueRef::Blob(bytes),
        ) => {
            let Ok(text) = std::str::from_utf8(bytes) else {
                return Some((Kind::InvalidUtf8, None));
            };
            if bytes.contains(&0) {
                return Some((Kind::Nul, None));
            }
            match ty {
                // Fewer bytes than the limit: fewer characters too, no need to count.
                ColumnType::Varchar(limit) if bytes.len() as u64 > limit => {
                    let chars = text.chars().count() as u64;
                    (chars > limit).then_some((Kind::TooLong, Some(chars)))
                }
                _ => None,
            }
        }
        (ColumnType::Varchar(_) | ColumnType::Text, _) => None,
        (ColumnType::Integer { min, max }, ValueRef::Integer(n)) => {
            (n < min || n > max).then_some((Kind::IntegerOutOfRange, None))
        }
        (ColumnType::Integer { min, max }, ValueRef::Real(x)) => match whole_i64(x) {
            None if x.fract() != 0.0 || x.is_nan() => Some((Kind::NotAnInteger, None)),
            Some(n) if (min..=max).contains(&n) => None,
            _ => Some((Kind::IntegerOutOfRange, None)),
        },
        (ColumnType::Integer { .. }, _) => Some((Kind::NotAnInteger, None)),
        // What Django reads as None (loaddata loads NULL) or cannot read at all.
        (ColumnType::Datetime | ColumnType::Date, value) => {
            let text = sqlite_text(value)?;
            let read = if ty == ColumnType::Datetime {
                django_datetime(&text)
            } else {
                django_date(&text)
            };
            (!matches!(read, DjangoRead::Value(_))).then_some((Kind::BadDate, None))
        }
    }
}

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

/// All values of one kind in one column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub table: String,
    pub column: String,
    pub kind: Kind,
    /// The column's limit in characters, for `TooLong`.
    pub limit: Option<u64>,
    /// The longest value seen, in characters, for `TooLong`.
    pub longest: Option<u64>,
    /// Every row's id (the rowid where the table has no `id`); the journal keeps the first
    /// few as examples, so `count` is the number of values.
    pub ids: Vec<i64>,
    /// How many values (journals written before it existed: 0, read as `ids.len()`).
    #[serde(default)]
    pub count: u64,
}

impl Finding {
    /// How many values of this kind the column holds.
    pub fn count(&self) -> u64 {
        self.count.max(self.ids.len() as u64)
    }
}

/// What the scan of one database found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scan {
    pub tables: usize,
    pub rows: u64,
    pub secs: f64,
    pub findings: Vec<Finding>,
}

impl Scan {
    /// The scan with at most `n` ids per finding kept as examples (the counts stay whole).
    pub fn with_examples(&self, n: usize) -> Scan {
        let findings = self
            .findings
            .iter()
            .map(|f| Finding {
                ids: f.ids.iter().take(n).copied().collect(),
                count: f.count(),
                ..f.clone()
            })
            .collect();
        Scan {
            findings,
            ..self.clone()
        }
    }
}

pub fn open_read_only(path: &Path) -> Result<Connection> {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {} as a SQLite database", path.display()))
}

/// `(name, declared type)` of each column of `table`.
fn columns(conn: &Connection, table: &str) -> rusqlite::Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({})", quote(table)))?;
    let rows = stmt.query_map([], |row| Ok((row.get(1)?, row.get(2)?)))?;
    rows.collect()
}

/// An identifier from the db's own catalog, quoted for SQLite.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One pass per table over every column a check applies to. `tables`: the tables the model map
/// names (tables no model uses are not carried over, so not checked); missing ones are skipped.
pub fn scan(db: &Path, tables: &[String]) -> Result<Scan> {
    let started = Instant::now();
    let conn = open_read_only(db)?;
    let mut out = Scan::default();
    for table in tables {
        let cols = columns(&conn, table)
            .with_context(|| format!("cannot read the columns of {table} in {}", db.display()))?;
        if cols.is_empty() {
            continue;
        }
        out.tables += 1;
        let checked: Vec<(String, ColumnType)> = cols
            .iter()
            .map(|(name, declared)| (name.clone(), column_type(declared)))
            .filter(|(_, ty)| *ty != ColumnType::Other)
            .collect();
        let key = if cols.iter().any(|(name, _)| name == "id") {
            "\"id\""
        } else {
            "rowid"
        };
        let list: Vec<String> = checked.iter().map(|(name, _)| quote(name)).collect();
        let sql = format!(
            "SELECT {key}{}{} FROM {}",
            if list.is_empty() { "" } else { ", " },
            list.join(", "),
            quote(table)
        );
        let mut stmt = conn
            .prepare(&sql)
            .with_context(|| format!("cannot read {table} in {}", db.display()))?;
        let mut rows = stmt.query([])?;
        let mut found: BTreeMap<(usize, Kind), Finding> = BTreeMap::new();
        while let Some(row) = rows
            .next()
            .with_context(|| format!("cannot read {table} in {}", db.display()))?
        {
            out.rows += 1;
            for (index, (column, ty)) in checked.iter().enumerate() {
                let Some((kind, chars)) = check_value(*ty, row.get_ref(index + 1)?) else {
                    continue;
                };
                let id: i64 = row.get(0)?;
                let finding = found.entry((index, kind)).or_insert_with(|| Finding {
                    table: table.clone(),
                    column: column.clone(),
                    kind,
                    limit: match ty {
                        ColumnType::Varchar(n) if kind == Kind::TooLong => Some(*n),
                        _ => None,
                    },
                    longest: None,
                    ids: Vec::new(),
                    count: 0,
                });
                finding.ids.push(id);
                finding.count += 1;
                if let Some(chars) = chars {
                    finding.longest = Some(finding.longest.unwrap_or(0).max(chars));
                }
            }
        }
        out.findings.extend(found.into_values());
    }
    out.secs = started.elapsed().as_secs_f64();
    Ok(out)
}

/// One screen: per `table.column` and kind, how many, the longest against the limit, a few
/// ids, and what to do.
pub fn summary(scan: &Scan) -> String {
    let lines: Vec<String> = scan.findings.iter().map(finding_line).collect();
    lines.join("\n")
}

fn finding_line(f: &Finding) -> String {
    let sample: Vec<String> = f.ids.iter().take(5).map(|id| id.to_string()).collect();
    let more = if f.count() > 5 { ", …" } else { "" };
    let length = match (f.longest, f.limit) {
        (Some(longest), Some(limit)) => format!(", longest {longest} > {limit} characters"),
        _ => String::new(),
    };
    format!(
        "{}.{}: {} value(s) {}{length} (ids {}{more})",
        f.table,
        f.column,
        f.count(),
        f.kind,
        sample.join(", ")
    )
}

/// What `--fit-values` does to a text value, as Sentry 6 does it where it does: NUL characters
/// removed, invalid UTF-8 replaced with U+FFFD, and a value over `limit` characters cut the way
/// Sentry 6's `truncatechars` cuts culprits (the first `limit - 3` characters and `...`).
/// Returns the new text and what was done, or `None` when the value is fine.
pub fn fit_text(bytes: &[u8], limit: Option<u64>) -> Option<(String, Vec<String>)> {
    let mut done = Vec::new();
    let mut text = match std::str::from_utf8(bytes) {
        Ok(text) => text.to_string(),
        Err(_) => {
            done.push("replaced invalid UTF-8 with U+FFFD".to_string());
            String::from_utf8_lossy(bytes).into_owned()
        }
    };
    let nuls = text.matches('\0').count();
    if nuls > 0 {
        text = text.replace('\0', "");
        done.push(format!("removed {nuls} NUL character(s)"));
    }
    if let Some(limit) = limit {
        let chars = text.chars().count() as u64;
        if chars > limit {
            text = cut(&text, limit as usize);
            done.push(format!(
                "cut from {chars} to {limit} characters (first {} and `...`, as Sentry 6 truncates)",
                limit.saturating_sub(3)
            ));
        }
    }
    (!done.is_empty()).then_some((text, done))
}

/// `text` in at most `limit` characters, on a character boundary: the first `limit - 3`
/// characters and `...` (Sentry 6's `truncatechars`); a limit under 4 keeps a plain prefix.
pub fn cut(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_string();
    }
    if limit < 4 {
        return text.chars().take(limit).collect();
    }
    let mut out: String = text.chars().take(limit - 3).collect();
    out.push_str("...");
    out
}

/// A changed row, as the report and the journal list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub table: String,
    pub id: i64,
    pub column: String,
    pub kind: Kind,
    pub detail: String,
}

/// Rows folded into another after a cut made them equal on a unique key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merge {
    pub table: String,
    /// The row that stays (the lowest id).
    pub kept: i64,
    pub removed: Vec<i64>,
    pub detail: String,
}

/// Everything the fit did to the working copy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fit {
    pub changes: Vec<Change>,
    pub merges: Vec<Merge>,
    /// Rows removed by merges, per table: how far a table may differ from the source.
    pub merged: BTreeMap<String, u64>,
}

/// PostgreSQL's unique keys of Sentry 4.10's tables that hold text a fit may change (SQLite
/// keeps other, sometimes stale, unique indexes: they are not the target's rules).
const UNIQUE_KEYS: &[(&str, &[&str])] = &[
    ("sentry_filtervalue", &["project_id", "key", "value"]),
    (
        "sentry_messagefiltervalue",
        &["project_id", "group_id", "key", "value"],
    ),
    ("sentry_filterkey", &["project_id", "key"]),
    (
        "sentry_groupedmessage",
        &["project_id", "checksum", "logger", "view"],
    ),
    ("sentry_message", &["project_id", "message_id"]),
    ("sentry_searchtoken", &["document_id", "field", "token"]),
    ("sentry_projectoptions", &["project_id", "key"]),
    ("sentry_useroption", &["user_id", "project_id", "key"]),
    ("sentry_groupmeta", &["group_id", "key"]),
    ("sentry_option", &["key"]),
    ("sentry_team", &["slug"]),
    ("sentry_project", &["slug"]),
    ("sentry_projectkey", &["public_key"]),
    ("sentry_projectkey", &["secret_key"]),
    ("sentry_view", &["path"]),
    ("auth_user", &["username"]),
];

/// Tables whose collided rows are merged the way Sentry counts them (tag values per project and
/// per group); a collision anywhere else stops the fit.
const MERGEABLE: &[&str] = &["sentry_filtervalue", "sentry_messagefiltervalue"];

/// Fits every fittable finding of `scan` in `working` (a copy of the source, never the source):
/// one transaction, then an integrity check. Refuses findings it cannot fit.
pub fn fit(working: &Path, scan: &Scan) -> Result<Fit> {
    let unfittable: Vec<&Finding> = scan
        .findings
        .iter()
        .filter(|f| !f.kind.fittable())
        .collect();
    if !unfittable.is_empty() {
        let lines: Vec<String> = unfittable.iter().map(|f| finding_line(f)).collect();
        bail!(
            "these values cannot be fitted automatically (fix them in the source with Sentry 4 stopped, then redo):\n    {}",
            lines.join("\n    ")
        );
    }
    let mut conn = Connection::open(working)
        .with_context(|| format!("cannot open the working copy {}", working.display()))?;
    let tx = conn.transaction()?;
    // Text findings of one row are fitted together (a value may be long and hold a NUL).
    let mut rows: BTreeMap<(String, String), BTreeMap<i64, Vec<Kind>>> = BTreeMap::new();
    let mut limits: BTreeMap<(String, String), Option<u64>> = BTreeMap::new();
    for f in &scan.findings {
        let key = (f.table.clone(), f.column.clone());
        if f.limit.is_some() {
            limits.insert(key.clone(), f.limit);
        }
        limits.entry(key.clone()).or_insert(None);
        for id in &f.ids {
            rows.entry(key.clone())
                .or_default()
                .entry(*id)
                .or_default()
                .push(f.kind);
        }
    }
    // SQLite's own unique indexes are not the target's rules (long-lived dbs keep stale ones,
    // such as `sentry_filtervalue (key, value)` without the project): in the working copy they
    // go, and PostgreSQL's keys are checked below instead. The dumps carry no indexes.
    let fitted_tables: std::collections::BTreeSet<&String> = rows.keys().map(|(t, _)| t).collect();
    for table in fitted_tables {
        let indexes: Vec<String> = tx
            .prepare(&format!("PRAGMA index_list({})", quote(table)))?
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(1)?,
                    row.get::<_, bool>(2)?,
                    row.get::<_, String>(3)?,
                ))
            })?
            .filter_map(|it| it.ok())
            .filter(|(_, unique, origin)| *unique && origin == "c")
            .map(|(name, _, _)| name)
            .collect();
        for index in indexes {
            tx.execute_batch(&format!("DROP INDEX {}", quote(&index)))
                .with_context(|| format!("cannot drop index {index} in the working copy"))?;
        }
    }
    let mut out = Fit::default();
    for ((table, column), ids) in &rows {
        let limit = limit_of(&tx, table, column)?.or(limits[&(table.clone(), column.clone())]);
        let key = row_key(&tx, table)?;
        for (id, kinds) in ids {
            let bytes: Option<Vec<u8>> = tx
                .query_row(
                    &format!(
                        "SELECT CAST({} AS BLOB) FROM {} WHERE {key} = ?1",
                        quote(column),
                        quote(table)
                    ),
                    [id],
                    |row| row.get(0),
                )
                .with_context(|| format!("cannot read {table}.{column} of row {id}"))?;
            // The row may be gone already, merged into another.
            let Some(bytes) = bytes else { continue };
            let Some((text, done)) = fit_text(&bytes, limit) else {
                continue;
            };
            let kind = kinds.iter().copied().min().unwrap_or(Kind::TooLong);
            if MERGEABLE.contains(&table.as_str()) && column == "value" {
                if let Some(merge) = merge_into(&tx, table, *id, column, &text)? {
                    let folded = merge.kept != *id;
                    out.merges.push(merge);
                    if folded {
                        // This row now lives on in its twin, which holds the fitted text.
                        continue;
                    }
                }
            }
            set_text(&tx, table, key, column, *id, &text)?;
            out.changes.push(Change {
                table: table.clone(),
                id: *id,
                column: column.clone(),
                kind,
                detail: done.join("; "),
            });
        }
    }
    check_unique_keys(&tx, &out.changes)?;
    for merge in &out.merges {
        *out.merged.entry(merge.table.clone()).or_default() += merge.removed.len() as u64;
    }
    tx.commit()
        .with_context(|| format!("cannot save the fitted values in {}", working.display()))?;
    let check: String = conn.query_row("PRAGMA integrity_check", [], |row| row.get(0))?;
    if check != "ok" {
        bail!(
            "the working copy {} fails its integrity check after the fit: {check}",
            working.display()
        );
    }
    Ok(out)
}

fn limit_of(conn: &Connection, table: &str, column: &str) -> Result<Option<u64>> {
    Ok(columns(conn, table)?
        .into_iter()
        .find(|(name, _)| name == column)
        .and_then(|(_, declared)| match column_type(&declared) {
            ColumnType::Varchar(n) => Some(n),
            _ => None,
        }))
}

fn row_key(conn: &Connection, table: &str) -> Result<&'static str> {
    Ok(
        if columns(conn, table)?.iter().any(|(name, _)| name == "id") {
            "\"id\""
        } else {
            "rowid"
        },
    )
}

fn set_text(
    conn: &Connection,
    table: &str,
    key: &str,
    column: &str,
    id: i64,
    text: &str,
) -> Result<()> {
    conn.execute(
        &format!(
            "UPDATE {} SET {} = ?1 WHERE {key} = ?2",
            quote(table),
            quote(column)
        ),
        rusqlite::params![text, id],
    )
    .with_context(|| {
        format!(
            "cannot write the fitted {table}.{column} of row {id} into the working copy: it collides with another row on a unique index; \
             this row needs a decision by hand"
        )
    })?;
    Ok(())
}

/// Before `id`'s `column` becomes `text`: the rows of `table` that would then be equal to it on
/// PostgreSQL's unique key are folded into the lowest id, as Sentry counts them (`times_seen`
/// summed, earliest `first_seen`, latest `last_seen`), and whatever pointed at a removed row
/// points at the kept one.
fn merge_into(
    conn: &Connection,
    table: &str,
    id: i64,
    column: &str,
    text: &str,
) -> Result<Option<Merge>> {
    let key = UNIQUE_KEYS
        .iter()
        .find(|(t, _)| *t == table)
        .map(|(_, cols)| *cols)
        .unwrap_or_default();
    let others: Vec<&str> = key.iter().copied().filter(|c| *c != column).collect();
    let mut condition = vec![format!("{} = ?1", quote(column))];
    for other in &others {
        condition.push(format!(
            "{c} IS (SELECT {c} FROM {t} WHERE id = ?2)",
            c = quote(other),
            t = quote(table)
        ));
    }
    let sql = format!(
        "SELECT id FROM {} WHERE id <> ?2 AND {}",
        quote(table),
        condition.join(" AND ")
    );
    let twins: Vec<i64> = conn
        .prepare(&sql)?
        .query_map(rusqlite::params![text, id], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if twins.is_empty() {
        return Ok(None);
    }
    let mut all = twins.clone();
    all.push(id);
    all.sort_unstable();
    let kept = all[0];
    let removed: Vec<i64> = all[1..].to_vec();
    let cols: Vec<String> = columns(conn, table)?.into_iter().map(|(n, _)| n).collect();
    let ids = all
        .iter()
        .map(|it| it.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut sets = Vec::new();
    let mut detail = Vec::new();
    for (col, agg, what) in [
        ("times_seen", "SUM", "times_seen summed"),
        ("first_seen", "MIN", "earliest first_seen"),
        ("last_seen", "MAX", "latest last_seen"),
    ] {
        if cols.iter().any(|c| c == col) {
            sets.push(format!(
                "{c} = (SELECT {agg}({c}) FROM {t} WHERE id IN ({ids}))",
                c = quote(col),
                t = quote(table)
            ));
            detail.push(what);
        }
    }
    if !sets.is_empty() {
        conn.execute(
            &format!(
                "UPDATE {} SET {} WHERE id = ?1",
                quote(table),
                sets.join(", ")
            ),
            [kept],
        )?;
    }
    let removed_list = removed
        .iter()
        .map(|it| it.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    for (referrer, fk) in references_to(conn, table)? {
        conn.execute(
            &format!(
                "UPDATE {} SET {} = ?1 WHERE {} IN ({removed_list})",
                quote(&referrer),
                quote(&fk),
                quote(&fk)
            ),
            [kept],
        )?;
        detail.push("references re-pointed");
    }
    conn.execute(
        &format!("DELETE FROM {} WHERE id IN ({removed_list})", quote(table)),
        [],
    )?;
    Ok(Some(Merge {
        table: table.to_string(),
        kept,
        removed,
        detail: if detail.is_empty() {
            "equal after the cut: duplicates removed".into()
        } else {
            format!("equal after the cut: {}", detail.join(", "))
        },
    }))
}

/// `(table, column)` pairs whose foreign key points at `table`.
fn references_to(conn: &Connection, table: &str) -> Result<Vec<(String, String)>> {
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::new();
    for other in tables {
        let mut stmt = conn.prepare(&format!("PRAGMA foreign_key_list({})", quote(&other)))?;
        let fks: Vec<(String, String)> = stmt
            .query_map([], |row| Ok((row.get(2)?, row.get(3)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (target, from) in fks {
            if target == table {
                out.push((other.clone(), from));
            }
        }
    }
    Ok(out)
}

/// After the fit, no changed row may share PostgreSQL's unique key with another row: the load
/// would fail on it. (Tag values were merged; anything else needs a decision by hand.)
fn check_unique_keys(conn: &Connection, changes: &[Change]) -> Result<()> {
    let mut problems = Vec::new();
    for change in changes {
        for (table, key) in UNIQUE_KEYS {
            if *table != change.table || !key.contains(&change.column.as_str()) {
                continue;
            }
            let condition: Vec<String> = key
                .iter()
                .map(|c| {
                    format!(
                        "{c} IS (SELECT {c} FROM {t} WHERE id = ?1)",
                        c = quote(c),
                        t = quote(table)
                    )
                })
                .collect();
            let twins: i64 = conn.query_row(
                &format!(
                    "SELECT count(*) FROM {} WHERE id <> ?1 AND {}",
                    quote(table),
                    condition.join(" AND ")
                ),
                [change.id],
                |row| row.get(0),
            )?;
            if twins > 0 {
                problems.push(format!(
                    "{table} row {}: after fitting {} it equals {twins} other row(s) on ({})",
                    change.id,
                    change.column,
                    key.join(", ")
                ));
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "fitting would break a unique key PostgreSQL enforces, and these rows are not merged automatically:\n    {}",
            problems.join("\n    ")
        );
    }
    Ok(())
}

/// How long a scan of `rows` rows took, for humans.
pub fn rate(scan: &Scan) -> String {
    let secs = Duration::from_secs_f64(scan.secs);
    format!(
        "{} tables, {} rows in {}",
        scan.tables,
        scan.rows,
        crate::util::human_duration(secs)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_character_boundaries_the_way_sentry_6_truncates() {
        assert_eq!(cut("abcdef", 6), "abcdef");
        assert_eq!(cut("abcdefg", 6), "abc...");
        // 4-byte characters count as one, as PostgreSQL counts them.
        let emoji = "😀".repeat(10);
        let cut_emoji = cut(&emoji, 8);
        assert_eq!(cut_emoji, format!("{}...", "😀".repeat(5)));
        assert_eq!(cut_emoji.chars().count(), 8);
        assert_eq!(cut("ünïcödé", 3), "ünï");
        let (text, done) = fit_text("é".repeat(130).as_bytes(), Some(128)).unwrap();
        assert_eq!(text.chars().count(), 128);
        assert!(text.ends_with("é..."), "{text}");
        assert_eq!(
            done,
            ["cut from 130 to 128 characters (first 125 and `...`, as Sentry 6 truncates)"]
        );
        assert_eq!(fit_text("é".repeat(128).as_bytes(), Some(128)), None);
    }

    #[test]
    fn nul_and_invalid_utf8_are_fitted() {
        let (text, done) = fit_text(b"before\0after\0", None).unwrap();
        assert_eq!(text, "beforeafter");
        assert_eq!(done, ["removed 2 NUL character(s)"]);
        let (text, done) = fit_text(b"caf\xe9 \xff", None).unwrap();
        assert_eq!(text, "caf\u{FFFD} \u{FFFD}");
        assert_eq!(done, ["replaced invalid UTF-8 with U+FFFD"]);
        assert_eq!(fit_text("fine ✓".as_bytes(), Some(10)), None);
    }

    #[test]
    fn declared_types_map_to_postgres_limits() {
        assert_eq!(column_type("varchar(128)"), ColumnType::Varchar(128));
        assert_eq!(column_type("TEXT"), ColumnType::Text);
        assert_eq!(
            column_type("integer unsigned"),
            ColumnType::Integer {
                min: 0,
                max: i32::MAX.into()
            }
        );
        assert_eq!(
            column_type("INTEGER"),
            ColumnType::Integer {
                min: i32::MIN.into(),
                max: i32::MAX.into()
            }
        );
        assert_eq!(column_type("datetime"), ColumnType::Datetime);
        assert_eq!(column_type("bool"), ColumnType::Other);
        assert_eq!(column_type("REAL"), ColumnType::Other);
    }

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

    #[test]
    fn integers_are_never_saturated() {
        assert_eq!(whole_i64(3.0), Some(3));
        assert_eq!(whole_i64(-9_223_372_036_854_775_808.0), Some(i64::MIN));
        assert_eq!(whole_i64(9_223_372_036_854_775_808.0), None);
        assert_eq!(whole_i64(0.5), None);
        let big = ColumnType::Integer {
            min: i64::MIN,
            max: i64::MAX,
        };
        assert_eq!(
            check_value(big, ValueRef::Real(9_223_372_036_854_775_808.0)),
            Some((Kind::IntegerOutOfRange, None))
        );
        assert_eq!(check_value(big, ValueRef::Real(2.0)), None);
        assert_eq!(
            check_value(big, ValueRef::Real(2.5)),
            Some((Kind::NotAnInteger, None))
        );
    }

    /// A tiny Sentry-like db with one bad value of each kind.
    fn sample_db(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("sample.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE sentry_message (id integer PRIMARY KEY, server_name varchar(8), message TEXT, level integer unsigned, datetime datetime, time_spent REAL);
             CREATE TABLE sentry_messagefiltervalue (id integer PRIMARY KEY, project_id INTEGER, group_id INTEGER, key varchar(32), value varchar(8), times_seen integer unsigned, first_seen datetime, last_seen datetime);
             CREATE UNIQUE INDEX mfv_key ON sentry_messagefiltervalue (project_id, group_id, value, key);
             CREATE TABLE sentry_pointer (id integer PRIMARY KEY, mfv_id INTEGER REFERENCES sentry_messagefiltervalue (id));
             INSERT INTO sentry_message VALUES (1, 'short', 'fine', 40, '2012-01-01 10:00:00', 0.5);
             INSERT INTO sentry_message VALUES (2, 'much-too-long', 'fine', 40, '2012-01-01 10:00:00', 1);
             INSERT INTO sentry_message VALUES (3, 'ok', 'a' || char(0) || 'b', -1, 'yesterday', 1);
             INSERT INTO sentry_message VALUES (4, 'ok', CAST(X'636166e9' AS TEXT), 99999999999, '2012-01-01 10:00:00', 1);
             INSERT INTO sentry_messagefiltervalue VALUES (10, 1, 7, 'url', 'http://a/one', 2, '2012-01-02 00:00:00', '2012-01-05 00:00:00');
             INSERT INTO sentry_messagefiltervalue VALUES (11, 1, 7, 'url', 'http://a/two', 3, '2012-01-01 00:00:00', '2012-01-03 00:00:00');
             INSERT INTO sentry_messagefiltervalue VALUES (12, 1, 8, 'url', 'http://a/three', 4, '2012-01-01 00:00:00', '2012-01-09 00:00:00');
             INSERT INTO sentry_pointer VALUES (1, 11);",
        )
        .unwrap();
        path
    }

    #[test]
    fn each_kind_of_bad_value_is_found_once_per_column() {
        let dir = tempfile::tempdir().unwrap();
        let db = sample_db(dir.path());
        let tables = [
            "sentry_message".to_string(),
            "sentry_messagefiltervalue".to_string(),
            "no_such_table".to_string(),
        ];
        let scan = scan(&db, &tables).unwrap();
        let found: Vec<(String, Kind, Vec<i64>)> = scan
            .findings
            .iter()
            .map(|f| (format!("{}.{}", f.table, f.column), f.kind, f.ids.clone()))
            .collect();
        assert_eq!(
            found,
            [
                ("sentry_message.server_name".into(), Kind::TooLong, vec![2]),
                ("sentry_message.message".into(), Kind::Nul, vec![3]),
                ("sentry_message.message".into(), Kind::InvalidUtf8, vec![4]),
                (
                    "sentry_message.level".into(),
                    Kind::IntegerOutOfRange,
                    vec![3, 4]
                ),
                ("sentry_message.datetime".into(), Kind::BadDate, vec![3]),
                (
                    "sentry_messagefiltervalue.value".into(),
                    Kind::TooLong,
                    vec![10, 11, 12]
                ),
            ]
        );
        assert_eq!((scan.tables, scan.rows), (2, 7));
        let text = summary(&scan);
        assert!(
            text.contains("sentry_message.server_name: 1 value(s) longer than the column allows, longest 13 > 8 characters (ids 2)"),
            "{text}"
        );
        // Unfittable kinds stop the fit, naming them; nothing is written.
        let err = fit(&db, &scan).unwrap_err().to_string();
        assert!(
            err.contains(
                "sentry_message.level: 2 value(s) outside the column's integer range (ids 3, 4)"
            ),
            "{err}"
        );
    }

    /// The scan flags what Django reads as None (loaddata would load NULL, or fail on NOT NULL)
    /// or cannot read, and passes what Django reads, with the same reader as the copy engine.
    #[test]
    fn the_scan_flags_dates_as_django_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("dates.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE sentry_message (id integer PRIMARY KEY, datetime datetime NOT NULL, day date);
             INSERT INTO sentry_message VALUES
               (1, '2012-04-23 10:20:30+0100', '2012-4-9'),
               (2, '2012-04-23 10:20:30' || char(10), '2012-04-09' || char(10)),
               (3, '2012-04-23 10:20:30+1:0', '2012-02-30'),
               (4, '2012-4-9 4:8:16', '2012-04-09 10:00'),
               (5, 20120423, 'yesterday');",
        )
        .unwrap();
        drop(conn);
        let found: Vec<(String, Vec<i64>)> = scan(&db, &["sentry_message".to_string()])
            .unwrap()
            .findings
            .iter()
            .map(|f| (f.column.clone(), f.ids.clone()))
            .collect();
        assert_eq!(
            found,
            [
                ("datetime".to_string(), vec![1, 3, 5]),
                ("day".to_string(), vec![3, 4, 5])
            ]
        );
    }

    #[test]
    fn counts_are_whole_where_only_a_few_ids_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("many.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE sentry_message (id integer PRIMARY KEY, server_name varchar(2));
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
             INSERT INTO sentry_message SELECT i, 'too long' FROM n;",
        )
        .unwrap();
        drop(conn);
        let kept = scan(&db, &["sentry_message".to_string()])
            .unwrap()
            .with_examples(20);
        assert_eq!(kept.findings[0].ids.len(), 20);
        let text = summary(&kept);
        assert!(
            text.starts_with("sentry_message.server_name: 500 value(s) longer"),
            "{text}"
        );
        // What the journal stores reads back the same.
        let json = serde_json::to_string(&kept).unwrap();
        let back: Scan = serde_json::from_str(&json).unwrap();
        assert_eq!(summary(&back), text);
    }

    #[test]
    fn collided_tag_values_merge_as_sentry_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = sample_db(dir.path());
        let conn = Connection::open(&db).unwrap();
        // Only fittable problems left.
        conn.execute_batch("DELETE FROM sentry_message WHERE id IN (3, 4)")
            .unwrap();
        drop(conn);
        let tables = [
            "sentry_message".to_string(),
            "sentry_messagefiltervalue".to_string(),
        ];
        let found = scan(&db, &tables).unwrap();
        let fitted = fit(&db, &found).unwrap();
        // 10 and 11 (same project, group and key) both become `http:...`: 11 folds into 10;
        // 12 is another group: cut, not merged.
        assert_eq!(
            fitted.merged,
            BTreeMap::from([("sentry_messagefiltervalue".to_string(), 1)])
        );
        assert_eq!(fitted.merges[0].kept, 10);
        assert_eq!(fitted.merges[0].removed, [11]);
        let conn = Connection::open(&db).unwrap();
        let row: (String, i64, String, String) = conn
            .query_row(
                "SELECT value, times_seen, first_seen, last_seen FROM sentry_messagefiltervalue WHERE id = 10",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(
            row,
            (
                "http:...".to_string(),
                5,
                "2012-01-01 00:00:00".to_string(),
                "2012-01-05 00:00:00".to_string()
            )
        );
        let pointer: i64 = conn
            .query_row("SELECT mfv_id FROM sentry_pointer", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            pointer, 10,
            "references to the removed row point at the kept one"
        );
        let value: String = conn
            .query_row(
                "SELECT value FROM sentry_messagefiltervalue WHERE id = 12",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(value, "http:...");
        let server: String = conn
            .query_row(
                "SELECT server_name FROM sentry_message WHERE id = 2",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(server, "much-...");
        let changed: Vec<(String, i64)> = fitted
            .changes
            .iter()
            .map(|c| (format!("{}.{}", c.table, c.column), c.id))
            .collect();
        assert_eq!(
            changed,
            [
                ("sentry_message.server_name".to_string(), 2),
                ("sentry_messagefiltervalue.value".to_string(), 10),
                ("sentry_messagefiltervalue.value".to_string(), 12),
            ]
        );
        // Fitted: a second scan finds nothing.
        assert!(scan(&db, &tables).unwrap().findings.is_empty());
    }

    #[test]
    fn a_stale_sqlite_index_does_not_block_values_postgres_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("stale.db");
        let conn = Connection::open(&db).unwrap();
        // A long-lived db's SQLite-only UNIQUE (key, value), without the project.
        conn.execute_batch(
            "CREATE TABLE sentry_filtervalue (id integer PRIMARY KEY, project_id INTEGER, key varchar(32), value varchar(8));
             CREATE UNIQUE INDEX stale ON sentry_filtervalue (key, value);
             INSERT INTO sentry_filtervalue VALUES (1, 1, 'url', 'http://a/1'), (2, 2, 'url', 'http://a/2');",
        )
        .unwrap();
        drop(conn);
        let tables = ["sentry_filtervalue".to_string()];
        let fitted = fit(&db, &scan(&db, &tables).unwrap()).unwrap();
        // Two projects: equal values are fine on PostgreSQL's key, so nothing merges.
        assert!(fitted.merges.is_empty(), "{fitted:?}");
        assert_eq!(fitted.changes.len(), 2);
    }
}
