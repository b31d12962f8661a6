//! Schema migrations, written by hand so the crate needs no database (and no sqlx macros) to
//! build. Each backend has its own SQL files (`migrations/sqlite`, `migrations/postgres`),
//! embedded at compile time and applied in order, each in its own transaction, recorded in
//! `kith_store_schema` with a BLAKE3 checksum of its text.
//!
//! Opening a database whose recorded migrations differ from this build's (an edited migration)
//! or that has migrations this build does not know (a newer build ran) is
//! [`StoreError::Schema`]: the store refuses to guess.

use sqlx::Row;

use super::Db;
use crate::error::StoreError;

/// One migration: a version, a description and its statements (separated by `;` at line ends).
pub(crate) struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sql: &'static str,
}

/// Versions only grow; they need not be contiguous (each migration is applied on its own if the
/// database lacks it, so one numbered below an applied one is still applied later: branches that
/// add migrations side by side merge without renumbering).
pub(crate) const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        description: "logs",
        sql: include_str!("../../migrations/sqlite/0001_logs.sql"),
    },
    Migration {
        version: 2,
        description: "mirrors",
        sql: include_str!("../../migrations/sqlite/0002_mirrors.sql"),
    },
    Migration {
        version: 3,
        description: "files",
        sql: include_str!("../../migrations/sqlite/0003_files.sql"),
    },
    Migration {
        version: 4,
        description: "mailboxes",
        sql: include_str!("../../migrations/sqlite/0004_mailboxes.sql"),
    },
    Migration {
        version: 5,
        description: "topics",
        sql: include_str!("../../migrations/sqlite/0005_topics.sql"),
    },
    Migration {
        version: 6,
        description: "own logs",
        sql: include_str!("../../migrations/sqlite/0006_own_logs.sql"),
    },
    Migration {
        version: 7,
        description: "import started",
        sql: include_str!("../../migrations/sqlite/0007_import_started.sql"),
    },
];

pub(crate) const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        description: "logs",
        sql: include_str!("../../migrations/postgres/0001_logs.sql"),
    },
    Migration {
        version: 2,
        description: "mirrors",
        sql: include_str!("../../migrations/postgres/0002_mirrors.sql"),
    },
    Migration {
        version: 3,
        description: "files",
        sql: include_str!("../../migrations/postgres/0003_files.sql"),
    },
    Migration {
        version: 4,
        description: "mailboxes",
        sql: include_str!("../../migrations/postgres/0004_mailboxes.sql"),
    },
    Migration {
        version: 5,
        description: "topics",
        sql: include_str!("../../migrations/postgres/0005_topics.sql"),
    },
    Migration {
        version: 6,
        description: "own logs",
        sql: include_str!("../../migrations/postgres/0006_own_logs.sql"),
    },
    Migration {
        version: 7,
        description: "import started",
        sql: include_str!("../../migrations/postgres/0007_import_started.sql"),
    },
];

/// PostgreSQL's advisory lock (an arbitrary constant key), so two processes migrating the same
/// database at once take turns.
const PG_MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(5484001)";

impl Migration {
    fn checksum(&self) -> Vec<u8> {
        blake3::hash(self.sql.as_bytes()).as_bytes().to_vec()
    }

    fn statements(&self) -> impl Iterator<Item = &'static str> {
        self.sql
            .split(";\n")
            .map(|s| {
                // Drop comment lines; what is left is one statement.
                s.trim()
            })
            .filter(|s| {
                s.lines()
                    .any(|l| !l.trim().is_empty() && !l.trim().starts_with("--"))
            })
    }
}

/// Applies every migration the database lacks.
pub(crate) async fn run(db: &Db) -> Result<(), StoreError> {
    macro_rules! migrate {
        ($begin:expr, $lock:expr, $table:expr, $migrations:expr) => {{
            for m in $migrations {
                let mut tx = $begin.await?;
                if let Some(lock) = $lock {
                    sqlx::query(lock).execute(&mut *tx).await?;
                }
                sqlx::query($table).execute(&mut *tx).await?;
                let rows = sqlx::query("SELECT version, checksum FROM kith_store_schema")
                    .fetch_all(&mut *tx)
                    .await?;
                let mut applied = None;
                for row in &rows {
                    let version: i64 = row.try_get(0)?;
                    let checksum: Vec<u8> = row.try_get(1)?;
                    if !$migrations.iter().any(|m: &Migration| m.version == version) {
                        return Err(StoreError::Schema(format!(
                            "database has schema version {version}, unknown to this build (a newer kith wrote it)"
                        )));
                    }
                    if version == m.version {
                        applied = Some(checksum);
                    }
                }
                match applied {
                    Some(checksum) if checksum == m.checksum() => {}
                    Some(_) => {
                        return Err(StoreError::Schema(format!(
                            "migration {} ({}) differs from the one applied to this database",
                            m.version, m.description
                        )));
                    }
                    None => {
                        for statement in m.statements() {
                            sqlx::query(sqlx::AssertSqlSafe(statement))
                                .execute(&mut *tx)
                                .await?;
                        }
                        sqlx::query(
                            "INSERT INTO kith_store_schema (version, description, checksum) VALUES ($1, $2, $3)",
                        )
                        .bind(m.version)
                        .bind(m.description)
                        .bind(m.checksum())
                        .execute(&mut *tx)
                        .await?;
                        tracing::info!(version = m.version, description = m.description, "applied store migration");
                    }
                }
                tx.commit().await?;
            }
            Ok(())
        }};
    }
    match db {
        Db::Sqlite(pool, _) => migrate!(
            pool.begin_with("BEGIN IMMEDIATE"),
            None::<&'static str>,
            "CREATE TABLE IF NOT EXISTS kith_store_schema (version INTEGER PRIMARY KEY, description TEXT NOT NULL, checksum BLOB NOT NULL)",
            SQLITE
        ),
        Db::Postgres(pool, _) => migrate!(
            pool.begin(),
            Some(PG_MIGRATION_LOCK),
            "CREATE TABLE IF NOT EXISTS kith_store_schema (version BIGINT PRIMARY KEY, description TEXT NOT NULL, checksum BYTEA NOT NULL)",
            POSTGRES
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_split_into_statements_and_are_numbered_in_order() {
        for set in [SQLITE, POSTGRES] {
            assert_eq!(set[0].version, 1);
            for pair in set.windows(2) {
                assert!(pair[0].version < pair[1].version);
            }
            for m in set {
                let statements: Vec<_> = m.statements().collect();
                assert!(!statements.is_empty(), "{statements:?}");
                for s in statements {
                    assert!(!s.ends_with(';'), "{s}");
                }
            }
        }
        // Both backends have the same migrations and get the same tables.
        let versions = |set: &[Migration]| set.iter().map(|m| m.version).collect::<Vec<_>>();
        assert_eq!(versions(SQLITE), versions(POSTGRES));
        // Both backends get the same tables.
        for (m, table) in [
            (0, "logs"),
            (0, "entries"),
            (0, "nodes"),
            (0, "fork_evidence"),
            (1, "mirrors"),
            (2, "files"),
            (2, "file_blocks"),
            (3, "mailbox_records"),
            (4, "topics"),
            (4, "log_topics"),
            (4, "topic_mirrors"),
            (5, "own_logs"),
        ] {
            let create = format!("CREATE TABLE {table} (");
            assert!(SQLITE[m].sql.contains(&create), "{table}");
            assert!(POSTGRES[m].sql.contains(&create), "{table}");
        }
        // Columns added to a table created earlier.
        for set in [SQLITE, POSTGRES] {
            assert!(set[4].sql.contains("ALTER TABLE mirrors ADD COLUMN by_key"));
        }
        assert_eq!(SQLITE.len(), POSTGRES.len());
        for (s, p) in SQLITE.iter().zip(POSTGRES) {
            assert_eq!((s.version, s.description), (p.version, p.description));
        }
    }
}
