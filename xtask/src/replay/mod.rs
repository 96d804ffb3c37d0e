//! `cargo xtask replay-events`: every request `hold-events` held, sent to Sentry 6 in arrival
//! order, each at most once: `journal` records each send before it goes and its outcome after,
//! so a killed replay resumes where it stopped, and a send whose answer was lost is looked up in
//! Sentry 6's database (`sentry_message`) instead of being sent again. At the end every held
//! event is looked up there: "N held, N replayed, 0 lost".

pub mod journal;
mod send;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::{
    config::Config,
    hold::{self, spool},
    lock::Lock,
};
use journal::{Journal, Outcome};
use send::{Sent, Target};

/// `replay-events`' options.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--to HOST:PORT`; none: Sentry's address (SENTRY_WEB_HOST:SENTRY_WEB_PORT).
    pub to: Option<String>,
    /// How long to wait for Sentry 6 to answer before stopping (the replay resumes).
    pub wait: Duration,
}

/// Sentry 6 answered 5xx this many times for one request (and has not stored it): refused.
const SERVER_ERRORS: u32 = 3;

pub fn run(sh: &Shell, config: &Config, options: &Options) -> Result<()> {
    let dumps = config.dumps_dir();
    if let Some(pid) = Lock::holder(&hold::lock_path(&dumps))? {
        bail!(
            "hold-events (pid {pid}) still holds Sentry's address: start Sentry 6, then `cargo \
             xtask hold-events --release`, then replay (events it holds after the replay would \
             be left behind)"
        );
    }
    let _lock = Lock::acquire_for(
        &dumps.join("replay-events.lock"),
        "cargo xtask replay-events",
    )?;
    let spool_path = spool::path(&dumps);
    let found = spool::read(&spool_path)?;
    if found.held.is_empty() {
        println!(
            "replay-events: nothing to replay ({} holds no request).",
            config.display_path(&spool_path)
        );
        return Ok(());
    }
    let address = match &options.to {
        Some(to) => to.clone(),
        None => hold::sentry_address(sh, config)?,
    };
    let mut journal = Journal::open(&journal::path(&dumps))?;
    let mut db = EventsDb::connect(config)?;
    let target = Target::new(&address)?;
    let total = found.held.len();
    let started = Instant::now();
    let already = journal.outcomes().len();
    if already > 0 {
        println!("replay-events: resuming: {already} of {total} done before");
    }
    // Seconds from each request's arrival to its replay (this run's).
    let mut late: Vec<f64> = Vec::new();
    journal.check_spool(&found.held, &journal::path(&dumps))?;
    for held in &found.held {
        if journal.outcome(held.seq).is_some() {
            continue;
        }
        if journal.was_sending(held.seq) {
            // Sent before a kill, its answer unknown: stored, or sent again.
            if db.stored(held)? {
                journal.record(held.seq, &held.event_id, Outcome::already_stored())?;
                continue;
            }
        }
        let outcome = replay_one(&target, &mut journal, &mut db, held, options)?;
        if outcome.kind == journal::REPLAYED {
            if let Ok(received) = held.received.parse::<jiff::Timestamp>() {
                let now = jiff::Timestamp::now();
                late.push((now.as_millisecond() - received.as_millisecond()) as f64 / 1000.0);
            }
        }
        journal.record(held.seq, &held.event_id, outcome)?;
        let done = journal.outcomes().len();
        if done % 100 == 0 || done == total {
            println!("replay-events: [{done}/{total}] sent");
        }
    }
    // The proof: every held event looked up in Sentry 6.
    let outcomes = journal.outcomes();
    let mut tally: BTreeMap<&str, u64> = BTreeMap::new();
    let mut lost = Vec::new();
    let mut refused = Vec::new();
    for held in &found.held {
        let outcome = &outcomes[&held.seq];
        *tally.entry(outcome.kind.as_str()).or_default() += 1;
        if outcome.kind == journal::REFUSED {
            refused.push(format!(
                "#{} event {} project {}: {} {}",
                held.seq, held.event_id, held.project, outcome.status, outcome.answer
            ));
        } else if !db.stored(held)? {
            lost.push(format!(
                "#{} event {} project {} ({} {})",
                held.seq, held.event_id, held.project, outcome.status, outcome.answer
            ));
        }
    }
    let count = |kind| tally.get(kind).copied().unwrap_or(0);
    let gap = hold_gap(config);
    println!(
        "replay-events: {total} events held, {} replayed ({} found already stored), {} refused by \
         Sentry 6, {} lost; in {}{gap}",
        count(journal::REPLAYED),
        count(journal::ALREADY_STORED),
        refused.len(),
        lost.len(),
        crate::util::human_duration(started.elapsed()),
    );
    for line in &refused {
        println!("  refused: {line}");
    }
    if let Some(note) = dating_note(config, &late) {
        println!("  {note}");
    }
    if !refused.is_empty() {
        bail!(
            "Sentry 6 refused {} held events (listed above; hold-events had answered them 200): \
             they stay in {}; fix what Sentry 6 says, then look at them there",
            refused.len(),
            config.display_path(&spool_path)
        );
    }
    if !lost.is_empty() {
        bail!(
            "{} replayed events are not in Sentry 6's database ({}): Sentry 6 answered but did \
             not store them; see its log. The spool {} keeps them.\n  {}",
            lost.len(),
            config.pg.with_dbname(&config.pg.dbname),
            config.display_path(&spool_path),
            lost.join("\n  ")
        );
    }
    Ok(())
}

/// Sentry 6 judges a client's timestamp "in the future" against its local clock
/// (`coreapi.py` `process_data_timestamp`: `datetime.now()`, in `TIME_ZONE`, which Django puts
/// into the process's `TZ`), while raven sends UTC. West of UTC every client's timestamp is
/// discarded and the event dated when Sentry receives it: a replayed event is then dated when
/// replayed, not when it arrived. Says so, with how late, when the settings' zone is west of UTC.
fn dating_note(config: &Config, late: &[f64]) -> Option<String> {
    let zone = config.time_zone.zone()?;
    let offset = jiff::tz::TimeZone::get(zone)
        .ok()?
        .to_offset(jiff::Timestamp::now())
        .seconds();
    if offset >= 0 || late.is_empty() {
        return None;
    }
    let min = late.iter().copied().fold(f64::INFINITY, f64::min);
    let max = late.iter().copied().fold(0.0, f64::max);
    Some(format!(
        "dates: Sentry 6 runs with TIME_ZONE {zone} (UTC{:+}h), west of UTC: it discards the UTC \
         timestamp raven sends as \"in the future\" (it compares it with its local clock) and \
         dates each event when it receives it, so the {} replayed events are dated when \
         replayed, {min:.0} s to {max:.0} s after they arrived (events sent to Sentry 6 directly \
         are dated on receipt too)",
        offset as f64 / 3600.0,
        late.len()
    ))
}

fn hold_gap(config: &Config) -> String {
    std::fs::read(hold::state_path(&config.dumps_dir()))
        .ok()
        .and_then(|text| serde_json::from_slice::<hold::State>(&text).ok())
        .and_then(|state| state.gap_ms)
        .map(|gap| format!("; the hand-over left Sentry's address free for {gap} ms"))
        .unwrap_or_default()
}

/// Sends one held request until Sentry 6 gives an answer that decides it.
fn replay_one(
    target: &Target,
    journal: &mut Journal,
    db: &mut EventsDb,
    held: &spool::Held,
    options: &Options,
) -> Result<Outcome> {
    let mut server_errors = 0;
    let mut down_since: Option<Instant> = None;
    let mut said = Instant::now() - Duration::from_secs(60);
    loop {
        journal.sending(held.seq, &held.event_id)?;
        let sent = target.send(held)?;
        match sent {
            // 429: Sentry 6 rate-limits (a burst of replays may well trip it): wait, as when down.
            Sent::Answer { status, answer } if status < 500 && status != 429 => {
                return Ok(if status == 200 {
                    Outcome::replayed(status, answer)
                } else {
                    Outcome::refused(status, answer)
                })
            }
            Sent::Answer { status, answer } if !matches!(status, 429 | 502..=504) => {
                // Sentry itself failed: it may have counted the event first.
                if db.stored(held)? {
                    return Ok(Outcome::already_stored());
                }
                server_errors += 1;
                if server_errors >= SERVER_ERRORS {
                    return Ok(Outcome::refused(status, answer));
                }
            }
            Sent::Answer { .. } | Sent::Down(_) | Sent::Unanswered(_) => {
                if matches!(sent, Sent::Unanswered(_) | Sent::Answer { .. }) && db.stored(held)? {
                    return Ok(Outcome::already_stored());
                }
                let since = *down_since.get_or_insert_with(Instant::now);
                if since.elapsed() > options.wait {
                    bail!(
                        "Sentry 6 has not answered at {} for {} s ({}): start it, then run \
                         `cargo xtask replay-events` again: it resumes at #{} of the spool",
                        target.address(),
                        options.wait.as_secs(),
                        sent.describe(),
                        held.seq
                    );
                }
                if said.elapsed() > Duration::from_secs(10) {
                    println!(
                        "replay-events: Sentry 6 does not answer at {} ({}): waiting (up to {} \
                         s; Ctrl-C stops, a re-run resumes)",
                        target.address(),
                        sent.describe(),
                        options.wait.as_secs()
                    );
                    said = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// Sentry 6's events table, to tell whether an event is stored.
struct EventsDb {
    client: postgres::Client,
}

impl EventsDb {
    fn connect(config: &Config) -> Result<EventsDb> {
        let client = crate::pg::connect(&config.pg, &config.pg.dbname, Duration::from_secs(5))
            .context(
                "replay-events looks every held event up in Sentry 6's database (the target of \
                 `migrate`, from the same PG* variables or --database-url)",
            )?;
        Ok(EventsDb { client })
    }

    fn stored(&mut self, held: &spool::Held) -> Result<bool> {
        let row = self
            .client
            .query_one(
                // A sampled event has no row of its own, only its mapping to its group.
                "SELECT (SELECT count(*) FROM sentry_message \
                         WHERE message_id = $1 AND project_id = $2::bigint) \
                      + (SELECT count(*) FROM sentry_eventmapping \
                         WHERE event_id = $1 AND project_id = $2::bigint)",
                &[&held.event_id, &held.project],
            )
            .context(
                "cannot look the event up in Sentry 6's sentry_message and sentry_eventmapping",
            )?;
        Ok(row.get::<_, i64>(0) > 0)
    }
}

impl crate::flags::ReplayEvents {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let config = Config::for_flags(
            &sh.current_dir(),
            None,
            self.database_url.as_deref(),
            None,
            None,
        )?;
        run(
            sh,
            &config,
            &Options {
                to: self.to,
                wait: Duration::from_secs(self.wait.unwrap_or(600)),
            },
        )
    }
}
