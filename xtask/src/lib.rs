//! sentry-migrate as a library: every module of the `xtask` binary, so the integration tests use
//! the same code (the test cluster, the helpers) instead of including source files by path.

pub mod bench;
pub mod check;
pub mod config;
pub mod copy;
pub mod dumps;
pub mod execute;
pub mod flags;
pub mod hold;
pub mod ident;
pub mod journal;
pub mod jsonl;
pub mod lock;
pub mod merge;
pub mod pg;
pub mod pgcluster;
pub mod pgpass;
pub mod pgtarget;
pub mod plan;
pub mod progress;
pub mod pyliteral;
pub mod rehearse;
pub mod replay;
pub mod report;
pub mod rollback;
pub mod sentry;
pub mod settings;
pub mod sqlite;
pub mod streams;
pub mod util;
pub mod values;
pub mod verify;
pub mod zone;
