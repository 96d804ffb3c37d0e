//! The one PostgreSQL identifier: a name checked once, when it is made, and quoted when it goes
//! into SQL (`Display` and [`Ident::quoted`]; [`Ident::as_str`] is the plain name for messages).
//! A module of its own, under both `pgtarget` (which checks the names the user gives) and `pg`
//! (which quotes them and the catalog's), so that neither imports the other for it.
//!
//! Two rules, as the tool has always had them, because two kinds of names come in:
//! - [`Ident::new`], a name the user gives (the database, the role, a model's table): 1-63
//!   lowercase ASCII letters, digits and underscores, not starting with a digit;
//! - [`Ident::table`] and [`Ident::column`], a name read from the catalog: lowercase ASCII
//!   letters, digits and underscores, at least one (PostgreSQL itself keeps it under 64
//!   bytes; a leading digit is let through, as before).
//!
//! Neither lets a `"` through, so the quoted form is the name between double quotes.

use std::fmt;

use anyhow::{bail, Result};

/// A checked identifier; see the module's rules.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ident(String);

/// Lowercase ASCII letters, digits and underscores only.
fn plain(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl Ident {
    /// A name the user gives; `what` names it in the error (`database name`, `role name`).
    pub fn new(what: &str, name: &str) -> Result<Ident> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && plain(name);
        if !ok {
            bail!("{what} `{name}` is not allowed: use 1-63 lowercase letters, digits and underscores, not starting with a digit");
        }
        Ok(Ident(name.to_string()))
    }

    /// A table name from the catalog (schema public): plain ones only, odd ones refused.
    pub fn table(name: String) -> Result<Ident> {
        if name.is_empty() || !plain(&name) {
            bail!("unexpected table name {name:?} in schema public: this tool only handles Sentry's own tables");
        }
        Ok(Ident(name))
    }

    /// A column name from the catalog: plain ones only.
    pub fn column(name: &str) -> Result<Ident> {
        if name.is_empty() || !plain(name) {
            bail!("unexpected column name {name:?} in the target: this tool only handles Sentry's own tables");
        }
        Ok(Ident(name.to_string()))
    }

    /// The name as it is, for messages and `$1` parameters.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as it is.
    pub fn into_string(self) -> String {
        self.0
    }

    /// The name in double quotes, ready to put into SQL.
    pub fn quoted(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Ident {
    /// Quoted: `"sentry_project"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::Ident;

    #[test]
    fn names_the_user_gives_are_plain_and_start_with_a_letter() {
        for bad in [
            "",
            "Sentry",
            "1db",
            "a-b",
            "x\"; drop table y; --",
            &"a".repeat(64),
        ] {
            assert!(Ident::new("database name", bad).is_err(), "{bad}");
        }
        for good in ["sentry", "_x", "sentry_2"] {
            assert_eq!(Ident::new("database name", good).unwrap().as_str(), good);
        }
        let err = Ident::new("role name", "Bad").unwrap_err().to_string();
        assert_eq!(err, "role name `Bad` is not allowed: use 1-63 lowercase letters, digits and underscores, not starting with a digit");
    }

    #[test]
    fn catalog_names_are_plain_and_quoted() {
        for bad in ["", "Sentry", "a-b", "x\"y"] {
            assert!(Ident::table(bad.to_string()).is_err(), "{bad}");
            assert!(Ident::column(bad).is_err(), "{bad}");
        }
        // As before: a catalog name may start with a digit.
        assert_eq!(Ident::table("2fa".into()).unwrap().quoted(), "\"2fa\"");
        let table = Ident::table("sentry_project".into()).unwrap();
        assert_eq!(table.to_string(), "\"sentry_project\"");
        assert_eq!(table.as_str(), "sentry_project");
        assert!(Ident::table("A".into())
            .unwrap_err()
            .to_string()
            .starts_with("unexpected table name \"A\" in schema public"));
        assert!(Ident::column("A")
            .unwrap_err()
            .to_string()
            .starts_with("unexpected column name \"A\" in the target"));
    }
}
