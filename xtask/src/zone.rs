//! The time zone Sentry 4 wrote its dates in. Django 1.4 runs with `USE_TZ` off: every datetime
//! is naive text in the settings' `TIME_ZONE`. Read from the settings files (never guessed),
//! checked against the tz database, compared with what the db itself hints.

use std::{fs, path::Path, time::SystemTime};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::pyliteral;

/// Where `TIME_ZONE` may be set, in the order `bin/sentry` executes them: this repo's settings
/// (which must not set one on the user's behalf) and the user's own Sentry 4 settings, copied
/// beside it. `settings_local.py` is the tool's and holds only the database (and the key).
pub const SETTINGS_FILES: [&str; 2] = ["settings/settings.py", "settings/sentry_conf.py"];

/// What the settings say about the zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ZoneSetting {
    /// `TIME_ZONE = 'zone'` in `file`, a zone of the tz database.
    Set { zone: String, file: String },
    /// No settings file sets `TIME_ZONE`.
    Missing,
    /// Set, but not usable as it is: why.
    Invalid(String),
}

impl ZoneSetting {
    /// What the plan and the report say.
    pub fn describe(&self) -> String {
        match self {
            ZoneSetting::Set { zone, file } => format!("TIME_ZONE = '{zone}' (from {file})"),
            ZoneSetting::Missing => {
                "TIME_ZONE is not set in the settings: migrate stops in preflight".into()
            }
            ZoneSetting::Invalid(why) => format!("{why}: migrate stops in preflight"),
        }
    }

    /// The preflight problem, if any: why it matters and what to set.
    pub fn problem(&self) -> Option<String> {
        let why = "Sentry 4 (Django 1.4, USE_TZ off) stored every date as naive text in the TIME_ZONE it ran with; \
                   migrated with another zone, every date shifts by the difference and no row count can see it";
        match self {
            ZoneSetting::Set { .. } => None,
            ZoneSetting::Missing => Some(format!(
                "no settings file says which time zone Sentry 4 wrote its dates in: {why}. \
                 Copy TIME_ZONE from your Sentry 4 settings (with SECRET_KEY, SENTRY_URL_PREFIX and the mail settings, \
                 or the whole file) into settings/sentry_conf.py; if your settings never set it, Sentry 4 used its \
                 default, so write TIME_ZONE = 'UTC'"
            )),
            ZoneSetting::Invalid(problem) => Some(format!("{problem}: {why}")),
        }
    }

    pub fn zone(&self) -> Option<&str> {
        match self {
            ZoneSetting::Set { zone, .. } => Some(zone),
            _ => None,
        }
    }
}

/// Reads `TIME_ZONE` from the settings files under `root`.
pub fn read(root: &Path) -> ZoneSetting {
    let mut found: Vec<(String, String)> = Vec::new();
    for file in SETTINGS_FILES {
        let source = match fs::read_to_string(root.join(file)) {
            Ok(source) => source,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return ZoneSetting::Invalid(format!("cannot read {file}: {err}")),
        };
        match pyliteral::string_setting(&source, "TIME_ZONE", file) {
            Ok(Some(zone)) => found.push((zone, file.to_string())),
            Ok(None) => {}
            Err(err) => return ZoneSetting::Invalid(format!("{err:#}")),
        }
    }
    match found.as_slice() {
        [] => ZoneSetting::Missing,
        [(zone, file), rest @ ..] => {
            if let Some((other, other_file)) = rest.iter().find(|(z, _)| z != zone) {
                return ZoneSetting::Invalid(format!(
                    "{file} sets TIME_ZONE = '{zone}' and {other_file} sets '{other}': keep the one your Sentry 4 ran with"
                ));
            }
            if let Err(err) = jiff::tz::TimeZone::get(zone) {
                return ZoneSetting::Invalid(format!(
                    "TIME_ZONE = '{zone}' in {file} is not a zone of the tz database ({err})"
                ));
            }
            ZoneSetting::Set {
                zone: zone.clone(),
                file: file.clone(),
            }
        }
    }
}

/// What the db suggests: its newest event's naive time against the time the file was last
/// written (Sentry writes the db when it stores an event). Only a hint: an install that stayed
/// up long after its last event says nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hint {
    pub newest_event: String,
    pub written_utc: String,
    /// newest event − last write, rounded to 15 minutes: the zone's offset if the two are close.
    pub offset_minutes: i32,
}

pub fn hint(db: &Path) -> Result<Option<Hint>> {
    let written = fs::metadata(db)
        .and_then(|meta| meta.modified())
        .with_context(|| format!("cannot read the modification time of {}", db.display()))?;
    let conn = crate::sqlite::open_read_only(db)?;
    let newest: Option<String> = conn
        .query_row("SELECT max(datetime) FROM sentry_message", [], |row| {
            row.get(0)
        })
        .with_context(|| format!("cannot read the newest event of {}", db.display()))?;
    Ok(newest.and_then(|newest| hint_from(&newest, written)))
}

fn hint_from(newest: &str, written: SystemTime) -> Option<Hint> {
    let naive: jiff::civil::DateTime = newest.trim().replace(' ', "T").parse().ok()?;
    let as_utc = naive
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .ok()?
        .timestamp();
    let written = jiff::Timestamp::try_from(written).ok()?;
    let minutes = (as_utc.as_second() - written.as_second()) as f64 / 60.0;
    let rounded = ((minutes / 15.0).round() * 15.0) as i32;
    // Beyond any zone's offset: the install ran on long after its last event.
    (rounded.abs() <= 14 * 60).then(|| Hint {
        newest_event: newest.to_string(),
        written_utc: written.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
        offset_minutes: rounded,
    })
}

fn offset_text(minutes: i32) -> String {
    let sign = if minutes < 0 { '-' } else { '+' };
    format!(
        "UTC{sign}{:02}:{:02}",
        minutes.abs() / 60,
        minutes.abs() % 60
    )
}

/// One line for the preflight output and the report: the hint, and whether `setting` agrees.
pub fn judge(setting: &ZoneSetting, hint: &Hint) -> String {
    let looks = offset_text(hint.offset_minutes);
    let base = format!(
        "the newest event ({}) against the db's last write ({}) looks like {looks}",
        hint.newest_event, hint.written_utc
    );
    let Some(zone) = setting.zone() else {
        return base;
    };
    let Ok(tz) = jiff::tz::TimeZone::get(zone) else {
        return base;
    };
    let Ok(naive) = hint
        .newest_event
        .trim()
        .replace(' ', "T")
        .parse::<jiff::civil::DateTime>()
    else {
        return base;
    };
    let Ok(zoned) = naive.to_zoned_datetime(tz) else {
        return base;
    };
    let offset = zoned.offset().seconds() / 60;
    if (offset - hint.offset_minutes).abs() < 60 {
        format!("{base}; {zone} is {} then: consistent", offset_text(offset))
    } else {
        format!(
            "{base}, but {zone} is {} then: if Sentry 4 ran with another zone, every date will be off by the difference \
             (a db written long after its last event gives no hint)",
            offset_text(offset)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("settings")).unwrap();
        for (name, text) in files {
            fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn the_zone_is_read_never_guessed() {
        let none = root_with(&[("settings/settings.py", "import os\nSENTRY_PUBLIC = False\n")]);
        assert_eq!(read(none.path()), ZoneSetting::Missing);
        assert!(ZoneSetting::Missing
            .problem()
            .unwrap()
            .contains("no row count can see it"));

        let set = root_with(&[
            ("settings/settings.py", "import os\n"),
            (
                "settings/sentry_conf.py",
                "from sentry.conf.server import *\nTIME_ZONE = \"America/Chicago\"  # the office\n",
            ),
        ]);
        assert_eq!(
            read(set.path()),
            ZoneSetting::Set {
                zone: "America/Chicago".into(),
                file: "settings/sentry_conf.py".into()
            }
        );

        for (text, expected) in [
            (
                "TIME_ZONE = 'Mars/Olympus'\n",
                "is not a zone of the tz database",
            ),
            ("TIME_ZONE = None\n", "in a form this tool cannot read"),
            (
                "TIME_ZONE = os.environ['TZ']\n",
                "in a form this tool cannot read",
            ),
        ] {
            let bad = root_with(&[("settings/sentry_conf.py", text)]);
            match read(bad.path()) {
                ZoneSetting::Invalid(why) => assert!(why.contains(expected), "{text}: {why}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        let both = root_with(&[
            ("settings/settings.py", "TIME_ZONE = 'UTC'\n"),
            ("settings/sentry_conf.py", "TIME_ZONE = 'Europe/Berlin'\n"),
        ]);
        assert!(
            matches!(read(both.path()), ZoneSetting::Invalid(why) if why.contains("keep the one"))
        );
    }

    #[test]
    fn the_db_hints_at_its_zone() {
        // Written at 07:55 UTC, newest event 01:55 naive: six hours behind, as Chicago in winter.
        let written = jiff::Timestamp::from_second(1_795_679_700).unwrap(); // 2026-11-26T07:55:00Z
        let hint = hint_from("2026-11-26 01:55:03.123", written.try_into().unwrap()).unwrap();
        assert_eq!(hint.offset_minutes, -360);
        let chicago = ZoneSetting::Set {
            zone: "America/Chicago".into(),
            file: "settings/sentry_conf.py".into(),
        };
        assert!(judge(&chicago, &hint).ends_with("America/Chicago is UTC-06:00 then: consistent"));
        let utc = ZoneSetting::Set {
            zone: "UTC".into(),
            file: "settings/sentry_conf.py".into(),
        };
        let said = judge(&utc, &hint);
        assert!(
            said.contains("looks like UTC-06:00, but UTC is UTC+00:00 then"),
            "{said}"
        );
        // Daylight saving: in July Chicago is UTC-05:00.
        let summer = hint_from(
            "2026-07-01 02:55:00",
            jiff::Timestamp::from_second(1_782_892_500)
                .unwrap()
                .try_into()
                .unwrap(), // 2026-07-01T07:55:00Z
        )
        .unwrap();
        assert_eq!(summer.offset_minutes, -300);
        assert!(judge(&chicago, &summer).ends_with("UTC-05:00 then: consistent"));
        // Written days after the newest event: no hint.
        assert_eq!(
            hint_from("2026-11-20 01:55:00", written.try_into().unwrap()),
            None
        );
    }
}
