//! The operator's set-up of the fleet store, and the agent's check of it. Only
//! `sentinel fleet init` (with an admin DSN) changes the schema: it creates the group roles,
//! runs the migrations and hands every table to `sentinel_owner`, a role nobody logs in as.
//! `sentinel fleet add-host NAME` gives a host its own login role, whose name is the host's
//! name: row-level security (`schema_v2.sql`) lets it write only rows under that name. An
//! agent never runs DDL: it only checks that the schema is the one it knows and that it is
//! connected as itself.

use std::{io::Read as _, path::Path};

use tokio_postgres::{Client, GenericClient};

use crate::fleet::postgres::PgError;

/// Each migration once, in order; never edit one that shipped, add the next.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("schema_v1.sql")),
    (2, include_str!("schema_v2.sql")),
    (3, include_str!("schema_v3.sql")),
    (4, include_str!("schema_v4.sql")),
    (5, include_str!("schema_v5.sql")),
];

/// Owns every table; never logs in.
pub const OWNER: &str = "sentinel_owner";
/// The group of every host's login role.
pub const HOSTS: &str = "sentinel_host";
/// The group of the operators' login roles.
pub const OPERATORS: &str = "sentinel_operator";

/// The objects `fleet init` hands to [`OWNER`].
const TABLES: &[&str] = &[
    "sentinel_migrations",
    "fleet_hosts",
    "fleet_alerts",
    "fleet_decisions",
    "fleet_blocks",
    "fleet_kills",
    "fleet_events",
    "fleet_answers",
    "fleet_shared_blocks",
];

/// The schema version this build knows.
pub fn known_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(
        "the fleet store has no Sentinel schema: the operator runs `sentinel fleet init` with an \
         admin DSN (agents never change the schema)"
    )]
    NoSchema,
    #[error(
        "the fleet store has schema version {found}, older than this sentinel's {known}: the \
         operator runs `sentinel fleet init` with an admin DSN to upgrade it"
    )]
    Older { found: i32, known: i32 },
    #[error(
        "connected as role {role:?}, but this host is {host:?} (agent.id): each host ships under \
         its own role (`sentinel fleet add-host {host}`, see docs/fleet.md)"
    )]
    WrongRole { role: String, host: String },
    #[error("{0:?} cannot be a role name: {1}")]
    BadName(String, &'static str),
    #[error(
        "a role {0:?} already exists and is not a Sentinel {1}: choose another name (or agent.id)"
    )]
    Taken(String, &'static str),
    #[error("the fleet store is not set up: run `sentinel fleet init` first")]
    NotInitialised,
    #[error("{0}")]
    Io(String),
}

impl From<tokio_postgres::Error> for SetupError {
    fn from(e: tokio_postgres::Error) -> Self {
        SetupError::Pg(PgError::Pg(e))
    }
}

/// A role name as an SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Create the group roles, run the migrations, give the tables to [`OWNER`] and make sure
/// hosts cannot create objects of their own. Idempotent; one operator at a time. Returns the
/// schema version before and after.
pub async fn init(client: &mut Client) -> Result<(i32, i32), SetupError> {
    let known = known_version();
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(1936027252)", &[])
        .await?;
    for role in [OWNER, HOSTS, OPERATORS] {
        if !role_exists(&tx, role).await? {
            tx.batch_execute(&format!("CREATE ROLE {} NOLOGIN", ident(role)))
                .await?;
        }
    }
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS sentinel_migrations (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let found: i32 = tx
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM sentinel_migrations",
            &[],
        )
        .await?
        .get(0);
    if found > known {
        return Err(PgError::Newer { found, known }.into());
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > found) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO sentinel_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
    }
    for table in TABLES {
        tx.batch_execute(&format!("ALTER TABLE {table} OWNER TO {OWNER}"))
            .await?;
    }
    tx.batch_execute(&format!(
        "ALTER FUNCTION sentinel_fleet_notify() OWNER TO {OWNER}"
    ))
    .await?;
    // Before PostgreSQL 15 every role may create tables in `public`.
    let hosts_create: bool = tx
        .query_one(
            "SELECT has_schema_privilege($1, 'public', 'CREATE')",
            &[&HOSTS],
        )
        .await?
        .get(0);
    if hosts_create {
        tx.batch_execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            .await?;
    }
    tx.commit().await?;
    Ok((found, known))
}

async fn role_exists(c: &impl GenericClient, role: &str) -> Result<bool, SetupError> {
    Ok(c.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
        &[&role],
    )
    .await?
    .get(0))
}

/// Which kind of login role [`add_role`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Host,
    Operator,
}

impl Kind {
    fn group(self) -> &'static str {
        match self {
            Kind::Host => HOSTS,
            Kind::Operator => OPERATORS,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::Host => "host",
            Kind::Operator => "operator",
        }
    }
}

/// Whether `name` can be a host's (or operator's) role.
pub fn check_name(name: &str) -> Result<(), SetupError> {
    let bad = |why| Err(SetupError::BadName(name.into(), why));
    if name.is_empty() || name.len() > 63 {
        return bad("it must be 1 to 63 bytes");
    }
    if name.chars().any(|c| c.is_control() || c == '"') {
        return bad("it has a control character or a double quote");
    }
    if name.starts_with("pg_") || [OWNER, HOSTS, OPERATORS].contains(&name) {
        return bad("the name is reserved");
    }
    Ok(())
}

/// Create `name`'s login role in its group, or give an existing one of that group a new
/// password. Returns the password (shown or written once, never stored by Sentinel).
pub async fn add_role(client: &Client, name: &str, kind: Kind) -> Result<String, SetupError> {
    check_name(name)?;
    if !role_exists(client, kind.group()).await? {
        return Err(SetupError::NotInitialised);
    }
    let password = new_password()?;
    // The server only ever sees the SCRAM verifier, never the password itself.
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    let literal = format!("'{}'", verifier.replace('\'', "''"));
    if role_exists(client, name).await? {
        let member: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_auth_members m
                     JOIN pg_roles r ON r.oid = m.member JOIN pg_roles g ON g.oid = m.roleid
                     WHERE r.rolname = $1 AND g.rolname = $2)",
                &[&name, &kind.group()],
            )
            .await?
            .get(0);
        if !member {
            return Err(SetupError::Taken(name.into(), kind.noun()));
        }
        client
            .batch_execute(&format!(
                "ALTER ROLE {} WITH PASSWORD {literal}",
                ident(name)
            ))
            .await?;
    } else {
        client
            .batch_execute(&format!(
                "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
                 NOBYPASSRLS PASSWORD {literal} IN ROLE {}",
                ident(name),
                kind.group()
            ))
            .await?;
    }
    Ok(password)
}

/// 128 random bits, in hex.
fn new_password() -> Result<String, SetupError> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| SetupError::Io(format!("/dev/urandom: {e}")))?;
    Ok(hex::encode(bytes))
}

/// Write a password to `path`, mode 0600 (replacing the file).
pub fn write_password(path: &Path, password: &str) -> Result<(), SetupError> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _, os::unix::fs::PermissionsExt};
    let io = |e: std::io::Error| SetupError::Io(format!("{}: {e}", path.display()));
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    f.write_all(format!("{password}\n").as_bytes()).map_err(io)
}

/// The agent's check on connecting: the schema is this build's and the role is the host's.
pub async fn check_store(client: &Client, host: &str) -> Result<(), SetupError> {
    let known = known_version();
    let found: i32 = match client
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM sentinel_migrations",
            &[],
        )
        .await
    {
        Ok(row) => row.get(0),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Err(SetupError::NoSchema);
        }
        Err(e) => return Err(e.into()),
    };
    if found < known {
        return Err(SetupError::Older { found, known });
    }
    if found > known {
        return Err(PgError::Newer { found, known }.into());
    }
    let role: String = client.query_one("SELECT current_user", &[]).await?.get(0);
    if role != host {
        return Err(SetupError::WrongRole {
            role,
            host: host.into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, (v, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v, i as i32 + 1);
        }
    }

    #[test]
    fn role_names_are_checked_and_quoted() {
        assert!(check_name("web1.example.com").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(64)).is_err());
        assert!(check_name("a\"b").is_err());
        assert!(check_name("web\n1").is_err());
        assert!(check_name("pg_monitor").is_err());
        assert!(check_name(HOSTS).is_err());
        assert_eq!(ident("we\"b"), "\"we\"\"b\"");
    }

    #[test]
    fn passwords_are_fresh_and_long() {
        let (a, b) = (new_password().unwrap(), new_password().unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
