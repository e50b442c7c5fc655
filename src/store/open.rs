//! Opening the state database: the file (mode 0600), the writer's lock, migrations, WAL and
//! incremental auto-vacuum.
//!
//! Must not: read or write rows. Invariant: migrations run only under the exclusive lock on
//! `<path>.lock`, and a second writer is refused rather than let poll everything twice.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, SqlitePool};

use super::{Store, StoreError};

/// How long a writer waits for the lock before concluding another writer holds it.
const WRITER_LOCK_PATIENCE: Duration = Duration::from_secs(5);

/// The migrations in `migrations/`, built into the binary.
pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a reader waits for a writer to finish migrating.
const SCHEMA_PATIENCE: Duration = Duration::from_secs(10);

/// The WAL file is truncated to this after a checkpoint, so a burst does not leave it large.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 << 20;

/// A writer starts a checkpoint beside its commits once the WAL holds this much.
const CHECKPOINT_ABOVE_BYTES: i64 = 8 << 20;

/// SQLite's own checkpoint, inside a commit, only past this many pages (4 KiB each): a fallback
/// for when the checkpoints beside commits cannot keep up.
const AUTOCHECKPOINT_PAGES: i64 = 4 * (CHECKPOINT_ABOVE_BYTES / 4096);

/// How a process uses the state database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `run` and `backfill`: the only process moving cursors and positions. Holds an exclusive lock
    /// on `<path>.lock` for the life of the store, so a second one fails fast instead of polling
    /// everything twice.
    Writer,
    /// `state` and `check`: may run beside a writer.
    Reader,
}

impl Store {
    /// Opens (creating with mode 0600 if missing) and migrates the database at `path`.
    ///
    /// Migrations run under the exclusive lock on `<path>.lock`, so two processes starting at once
    /// never race them; a reader that finds a writer holding the lock leaves migrating to it.
    pub async fn open(path: &Path, access: Access) -> Result<Store, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: path.to_path_buf(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(format!("creating {}: {e}", dir.display())))?;
        }
        create_private_file(path).map_err(|e| open_err(e.to_string()))?;
        // A file name, not a URL: `?` and `#` in the path are part of the name.
        let options = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed page survives power loss, not only a process crash.
            .synchronous(SqliteSynchronous::Full)
            // Set on every connection, before `journal_mode`: on a new file it takes effect with the
            // first table; an older file needs one VACUUM (see `use_incremental_vacuum`).
            .auto_vacuum(SqliteAutoVacuum::Incremental)
            .pragma("journal_size_limit", WAL_SIZE_LIMIT_BYTES.to_string())
            .pragma("wal_autocheckpoint", AUTOCHECKPOINT_PAGES.to_string())
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true)
            // A commit waiting on another writer's fsync is normal here, not worth a warning per page.
            .log_slow_statements(log::LevelFilter::Debug, Duration::from_secs(5));
        // Take the lock before connecting: the first connection to a new file switches it to WAL,
        // which two processes must not attempt at once.
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        let lock = open_lock_file(&lock_path)
            .map_err(|e| open_err(format!("lock file {}: {e}", lock_path.display())))?;
        let locked = lock_or_wait(&lock, access)
            .await
            .map_err(|e| open_err(format!("locking {}: {e}", lock_path.display())))?;
        if !locked && access == Access::Writer {
            return Err(open_err(format!(
                "another secrelay run or backfill is using it (lock {} is held)",
                lock_path.display()
            )));
        }
        let pool = connect(options).await.map_err(open_err)?;
        if locked {
            MIGRATOR
                .run(&pool)
                .await
                .map_err(|e| open_err(format!("migration failed: {e}")))?;
            // Only a writer rewrites the file: `state` must not spend minutes on a VACUUM.
            if access == Access::Writer {
                use_incremental_vacuum(&pool, path)
                    .await
                    .map_err(|e| open_err(format!("switching to incremental vacuum: {e}")))?;
            }
        } else {
            // The writer holding the lock may still be migrating: wait for the schema it brings.
            wait_for_schema(&pool).await.map_err(open_err)?;
        }
        let lock = match access {
            Access::Writer => Some(Arc::new(lock)),
            // Dropping the file releases the lock.
            Access::Reader => None,
        };
        let store = Store {
            pool,
            path: path.to_path_buf(),
            reclaiming: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            scopes: Arc::default(),
            legacy_seen: Arc::default(),
            seen_changes: Arc::default(),
            seen_bounds: Arc::default(),
            checkpointing: Arc::default(),
            writing: Arc::default(),
            writer_lock: lock,
        };
        if access == Access::Writer {
            store
                .move_legacy_rows()
                .await
                .map_err(|e| open_err(e.to_string()))?;
            store
                .note_legacy_seen()
                .await
                .map_err(|e| open_err(e.to_string()))?;
        }
        Ok(store)
    }

    /// Closes the pool. A writer first waits for a checkpoint beside commits to finish and folds
    /// the whole WAL into the database (truncating it), so a stopped writer leaves one file. A
    /// reader (`state`) never checkpoints: it would wait for the writer beside it.
    pub async fn close(&self) {
        if self.writer_lock.is_some() {
            let _running = self.checkpointing.lock().await;
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await
            {
                tracing::debug!("state database: checkpoint at close failed: {e}");
            }
        }
        self.pool.close().await;
    }

    /// Starts a checkpoint of the WAL on another connection once it holds more than
    /// [`CHECKPOINT_ABOVE_BYTES`], unless one is running. Called after a commit: the commit itself
    /// never waits for a checkpoint (copying pages into the database and its fsync), which then
    /// runs on the other core while the next page is fetched and committed.
    pub(super) fn checkpoint_if_large(&self) {
        let wal = PathBuf::from(format!("{}-wal", self.path.display()));
        let large = std::fs::metadata(&wal).is_ok_and(|m| m.len() as i64 > CHECKPOINT_ABOVE_BYTES);
        if !large {
            return;
        }
        // One at a time: a commit finding one running leaves it be.
        let Ok(running) = self.checkpointing.clone().try_lock_owned() else {
            return;
        };
        let pool = self.pool.clone();
        tokio::spawn(async move {
            // PASSIVE: never blocks the writer; frames a reader still needs wait for the next one.
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&pool)
                .await
            {
                tracing::debug!("state database: checkpoint failed (the next commit retries): {e}");
            }
            drop(running);
        });
    }
}

/// Makes sure the file uses incremental auto-vacuum. A new file already does (the connection sets
/// it before the first table); a file made before that needs one VACUUM, which rewrites it whole:
/// logged, since it takes time and up to twice the file's size on disk once.
async fn use_incremental_vacuum(pool: &SqlitePool, path: &Path) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
        .fetch_one(&mut *conn)
        .await?;
    if mode == 2 {
        return Ok(());
    }
    let before = std::fs::metadata(path).map_or(0, |m| m.len());
    tracing::info!(path = %path.display(), bytes = before,
        "state database: switching to incremental auto-vacuum (one VACUUM rewrites the file)");
    let started = std::time::Instant::now();
    sqlx::query("PRAGMA auto_vacuum = INCREMENTAL")
        .execute(&mut *conn)
        .await?;
    sqlx::query("VACUUM").execute(&mut *conn).await?;
    let after = std::fs::metadata(path).map_or(0, |m| m.len());
    tracing::info!(path = %path.display(), bytes = after, took_ms = started.elapsed().as_millis() as u64,
        "state database: incremental auto-vacuum on");
    Ok(())
}

/// Takes the exclusive lock. A reader gives up at once when it is held (a writer has migrated
/// already); a writer waits a little, since readers hold it only while migrating.
async fn lock_or_wait(lock: &std::fs::File, access: Access) -> std::io::Result<bool> {
    let patience = match access {
        Access::Writer => WRITER_LOCK_PATIENCE,
        Access::Reader => Duration::ZERO,
    };
    let until = std::time::Instant::now() + patience;
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(true),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// Connects, retrying while the file is busy: a reader may arrive while the lock holder is
/// still switching a new database to WAL.
async fn connect(options: SqliteConnectOptions) -> Result<SqlitePool, String> {
    let until = std::time::Instant::now() + SCHEMA_PATIENCE;
    loop {
        let attempt = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await;
        match attempt {
            Ok(pool) => return Ok(pool),
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("5") && std::time::Instant::now() < until =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Waits until every built-in migration is recorded as applied.
async fn wait_for_schema(pool: &SqlitePool) -> Result<(), String> {
    let wanted = MIGRATOR.iter().count() as i64;
    let until = std::time::Instant::now() + SCHEMA_PATIENCE;
    loop {
        // Before the first migration the table does not exist: count that as none applied.
        let applied: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = 1")
                .fetch_one(pool)
                .await
                .unwrap_or(0);
        if applied >= wanted {
            return Ok(());
        }
        if std::time::Instant::now() >= until {
            return Err(format!(
                "schema has {applied} of {wanted} migrations and the process holding the lock did not finish them"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(super) fn open_lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Creates `path` with mode 0600 if it does not exist, so the database never starts world-readable.
pub(super) fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map(drop)
}
