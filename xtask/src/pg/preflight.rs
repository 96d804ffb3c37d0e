//! Preflight questions to the target before anything runs: the privileges the role lacks and
//! an encoding other than UTF8, each as a message with the SQL a DBA runs.

use std::time::Duration;

use anyhow::{Context, Result};
use postgres::Client;

use super::connect::{connect, connect_admin, is_missing_database};
use crate::config::PgTarget;

/// What would stop the migration on the target for lack of a privilege or a wrong encoding, as
/// a message with the exact SQL a DBA runs; `None` when the role can go on. Asked in preflight,
/// before the dumps, so a missing privilege does not fail an hour later. The target is
/// connected to first (a password file may have a line for it only); the maintenance database
/// only when the target does not exist yet.
pub fn privilege_problem(target: &PgTarget) -> Result<Option<String>> {
    let wait = Duration::from_secs(5);
    let (db, user) = (target.database()?, target.role()?);
    let mut client = match connect(target, &target.dbname, wait) {
        Ok(client) => client,
        Err(err) if is_missing_database(&err) => {
            let mut admin = connect_admin(target, wait).with_context(|| {
                format!(
                    "database `{}` does not exist yet, and creating it needs a connection to the maintenance database",
                    target.dbname
                )
            })?;
            let row = admin.query_one(
                "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )?;
            let may_create: bool = row.get(0);
            return Ok((!may_create).then(|| {
                format!(
                    "database `{}` does not exist and role `{}` may not create databases (no CREATEDB): ask a DBA to run\n    \
                     CREATE DATABASE {db} OWNER {user} ENCODING 'UTF8' TEMPLATE template0;\n  then run again",
                    target.dbname, target.user
                )
            }));
        }
        Err(err) => return Err(err),
    };
    if let Some(problem) = encoding_problem(&mut client, target)? {
        return Ok(Some(problem));
    }
    let may_create: bool = client
        .query_one("SELECT has_schema_privilege('public', 'CREATE')", &[])?
        .get(0);
    Ok((!may_create).then(|| {
        format!(
            "role `{}` may not create tables in schema public of database `{}` (PostgreSQL 15 no longer lets every role do that), \
             and `sentry upgrade` must: ask a DBA to run, in database `{}`,\n    GRANT CREATE ON SCHEMA public TO {user};\n  \
             or to make the role the database's owner (on PostgreSQL 15 the owner may create in public):\n    \
             ALTER DATABASE {db} OWNER TO {user};\n  then run again",
            target.user, target.dbname, target.dbname
        )
    }))
}

/// The encoding of the database `client` is connected to (`UTF8`, `SQL_ASCII`, `LATIN1`, …).
pub fn database_encoding(client: &mut Client) -> Result<String> {
    let row = client
        .query_one(
            "SELECT pg_encoding_to_char(encoding)::text FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .context("cannot read the target database's encoding")?;
    Ok(row.get(0))
}

/// An existing target database in another encoding than UTF8, as a message with the SQL that
/// makes it right: in `SQL_ASCII` a `varchar(n)` counts bytes (`ééé` overflows varchar(3)),
/// `LATIN1` and the like cannot store what Sentry stores (an emoji), both found only at the
/// load, after Sentry's upgrade.
pub fn encoding_problem(client: &mut Client, target: &PgTarget) -> Result<Option<String>> {
    let encoding = database_encoding(client)?;
    if encoding == "UTF8" {
        return Ok(None);
    }
    let (db, user) = (target.database()?, target.role()?);
    Ok(Some(format!(
        "database `{}` has encoding {encoding}, and Sentry's data needs UTF8 ({}): \
         the tool creates a missing database in UTF8, so drop this one (it must be empty anyway) or ask a DBA to run\n    \
         DROP DATABASE {db};\n    CREATE DATABASE {db} OWNER {user} ENCODING 'UTF8' TEMPLATE template0;\n  then run again",
        target.dbname,
        match encoding.as_str() {
            "SQL_ASCII" => "in SQL_ASCII a varchar(n) counts bytes, so text the scan counted as fitting fails the load",
            _ => "it cannot store every character Sentry 4 stored, an emoji for one, and the load would fail",
        }
    )))
}

#[cfg(test)]
mod tests {
    use super::privilege_problem;
    use crate::{
        pg::{catalog::server_version_num, tests::target},
        pgcluster::testing::{skip, TestDb},
    };

    #[test]
    fn missing_privileges_are_named_with_the_sql_for_a_dba() {
        if skip() {
            return;
        }
        let db = TestDb::new("privs");
        let mut admin = db.client();
        if server_version_num(&mut admin).unwrap() < 150000 {
            return; // before 15 every role may create in public
        }
        let role = format!("app_{}", db.name);
        admin
            .batch_execute(&format!("CREATE ROLE \"{role}\" LOGIN PASSWORD 'apppw'"))
            .unwrap();
        let mut app = target(&db, &role, "apppw");
        // A database the app role owns nothing in: a DBA made it.
        let problem = privilege_problem(&app)
            .unwrap()
            .expect("no CREATE on public");
        assert!(
            problem.contains(&format!("GRANT CREATE ON SCHEMA public TO \"{role}\";")),
            "{problem}"
        );
        assert!(
            problem.contains(&format!("ALTER DATABASE \"{}\" OWNER TO", db.name)),
            "{problem}"
        );
        admin
            .batch_execute(&format!("GRANT CREATE ON SCHEMA public TO \"{role}\""))
            .unwrap();
        assert_eq!(privilege_problem(&app).unwrap(), None);
        // No database yet, and no CREATEDB.
        app.dbname = format!("{}_new", db.name);
        let problem = privilege_problem(&app).unwrap().expect("no CREATEDB");
        assert!(
            problem.contains("may not create databases (no CREATEDB)")
                && problem.contains(&format!(
                    "CREATE DATABASE \"{}\" OWNER \"{role}\"",
                    app.dbname
                )),
            "{problem}"
        );
        admin
            .batch_execute(&format!("ALTER ROLE \"{role}\" CREATEDB"))
            .unwrap();
        assert_eq!(privilege_problem(&app).unwrap(), None);
        admin
            .batch_execute(&format!("DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\""))
            .unwrap();
    }
}
