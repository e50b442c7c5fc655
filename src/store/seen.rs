//! The seen-set: which vendor ids of a (source, stream) were committed, so that a record served
//! again is dropped; refreshing ids the vendor keeps serving, pruning by age and forgetting for a
//! reset.
//!
//! Must not: decide what an id or a time is (sources do). Invariant: an id is its scope, its key
//! time (ms) and a 64-bit FNV-1a hash of its text, so a key is three integers and a page of events
//! (which vendors serve in time order) lands in a few neighbouring B-tree pages. Two different ids
//! are confused only if they share scope, millisecond and hash (odds near 2⁻⁶⁴ per pair). A source
//! must give an id the same key time ([`crate::event::Event::key_time`]) every time it serves it:
//! sources take it from the record itself, and where a record changes (a session, an inventory
//! report) its id carries the time it changed at. The event's own time is kept beside the key:
//! a reset forgets by it.
//!
//! Ids recorded before this layout stay in the text-keyed `seen` table (their key time is not
//! known, so they cannot be moved): a commit also asks it while it holds rows, and pruning and
//! resets apply to it too, so it empties as its ids age out.

use std::collections::HashSet;

use sqlx::SqliteConnection;

use super::{millis, query_err, Store, StoreError};
use chrono::{DateTime, Utc};

/// Forgets ids of scopes of source `?1` last served before `?2` (ms) whose key time is before
/// `?2` too, or after `?3` (ms, the time of pruning). A key's time is the vendor's time of its
/// record, which is not after the moment it was served unless a vendor clock ran ahead of ours: so
/// the two ranges of the primary key hold every key last served before `?2`, with no index on
/// `seen_at` to keep up at every insert. What they miss is a key whose time was ahead of ours when
/// it was served and is now between `?2` and `?3`: it stays until its time passes `?2`, later than
/// it could go, never sooner.
const PRUNE_SQL: [&str; 2] = [
    "DELETE FROM seen_ids
      WHERE scope IN (SELECT scope FROM seen_scopes WHERE source = ?1)
        AND key_time < ?2 AND seen_at < ?2",
    "DELETE FROM seen_ids
      WHERE scope IN (SELECT scope FROM seen_scopes WHERE source = ?1)
        AND key_time > ?3 AND seen_at < ?2",
];

/// Keys per statement: four variables each, far below SQLite's limit of 32,766. Each connection
/// keeps its statements prepared, and a commit now looks keys up on one connection and records them
/// on another: at 1,000 a 1M backfill peaked at 60.9–65.7 MiB, at 250 at 59.5–63.1 MiB, at the
/// same events/s.
const KEYS_PER_STATEMENT: usize = 250;

/// A seen-set key within a scope: (event time in ms, id hash).
pub(super) type SeenKey = (i64, i64);

/// FNV-1a, 64 bits, of an id's UTF-8 bytes: stable across versions and platforms (it is stored),
/// cheap, and well spread for the short texts vendor ids are.
pub(super) fn id_hash(id: &str) -> i64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h as i64
}

/// The key of an id served with event time `time_ms`.
pub(super) fn key(time_ms: i64, id: &str) -> SeenKey {
    (time_ms, id_hash(id))
}

impl Store {
    /// The scope number of (`source`, `stream`), created on first use. Created in its own
    /// statement, outside any page transaction, so a cached number always exists on disk.
    pub(super) async fn seen_scope(&self, source: &str, stream: &str) -> Result<i64, StoreError> {
        let cache_key = (source.to_string(), stream.to_string());
        if let Some(scope) = self
            .scopes
            .lock()
            .ok()
            .and_then(|s| s.get(&cache_key).copied())
        {
            return Ok(scope);
        }
        sqlx::query(
            "INSERT INTO seen_scopes (source, stream) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )
        .bind(source)
        .bind(stream)
        .execute(&self.pool)
        .await
        .map_err(query_err("creating a seen-set scope"))?;
        let scope: i64 =
            sqlx::query_scalar("SELECT scope FROM seen_scopes WHERE source = ?1 AND stream = ?2")
                .bind(source)
                .bind(stream)
                .fetch_one(&self.pool)
                .await
                .map_err(query_err("reading a seen-set scope"))?;
        if let Ok(mut scopes) = self.scopes.lock() {
            scopes.insert(cache_key, scope);
        }
        Ok(scope)
    }

    /// Forgets seen ids of `source` last served before `before`, in both tables. Returns ids
    /// removed.
    ///
    /// The integer seen-set is walked by its primary key: keys of a time before `before` or in the
    /// future, of which those not served since go (see [`PRUNE_SQL`]).
    pub async fn prune_seen(&self, source: &str, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut removed = 0;
        let now = millis(Utc::now());
        for sql in [
            PRUNE_SQL[0],
            PRUNE_SQL[1],
            "DELETE FROM seen WHERE source = ?1 AND seen_at < ?2",
        ] {
            removed += sqlx::query(sql)
                .bind(source)
                .bind(millis(before))
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(query_err("pruning the seen-set"))?
                .rows_affected();
        }
        self.note_seen_change(None);
        self.note_legacy_seen().await?;
        Ok(removed)
    }

    /// Notes whether the older, text-keyed `seen` table still holds rows, so commits ask it only
    /// while it does.
    pub(super) async fn note_legacy_seen(&self) -> Result<(), StoreError> {
        let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM seen)")
            .fetch_one(&self.pool)
            .await
            .map_err(query_err("looking for older seen ids"))?;
        self.legacy_seen
            .store(any, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}

/// Per scope, a key time no key of the scope is newer than: keys newer than it are new without a
/// lookup. Vendors serve pages in time order, so in a backfill or a steady poll most of a page is
/// newer than anything committed before it, and its lookup (14 ms of a ~75 ms 10,000-event page
/// commit, issue 13) shrinks to the few keys that tie with the page before.
///
/// A bound is read from disk, and raised, only while the writer's turn is held (a page commit,
/// before it records its keys): then no other commit of this process is between its read and its
/// rows, and no other process writes the seen-set. A bound raised for a transaction that then
/// fails is only higher than it needs to be. Resets and pruning only remove keys, so a bound stays
/// true after them. A lookup outside the turn reads the bound after [`SeenChanges`]' token: a commit that
/// raised it later ends before the lookup's turn, and moves the token. A key time far in the
/// future (a vendor clock ahead of ours) holds its scope's bound up: pages are then looked up
/// whole, as before the bound, until pruning forgets that key and the store is opened again.
#[derive(Debug, Default)]
pub(super) struct SeenBounds(std::collections::HashMap<i64, i64>);

impl SeenBounds {
    /// The bound of `scope`, if read from disk yet.
    pub(super) fn get(&self, scope: i64) -> Option<i64> {
        self.0.get(&scope).copied()
    }
}

/// Of `keys`, those a scope whose key times are at most `bound` may hold (`None`: not known, all).
pub(super) fn to_look_up(keys: &[(SeenKey, i64)], bound: Option<i64>) -> Vec<(SeenKey, i64)> {
    match bound {
        Some(bound) => keys
            .iter()
            .filter(|((key_time, _), _)| *key_time <= bound)
            .copied()
            .collect(),
        None => keys.to_vec(),
    }
}

impl Store {
    /// The key-time bound of `scope` as this process knows it (see [`SeenBounds`]).
    pub(super) fn seen_bound(&self, scope: i64) -> Option<i64> {
        self.seen_bounds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(scope)
    }

    /// Reads the bound of `scope` from disk if not known yet, and raises it to the newest of
    /// `keys`. Only with the writer's turn held (`conn` is its transaction), before `keys` are
    /// recorded. Returns the bound before the raise.
    pub(super) async fn raise_seen_bound(
        &self,
        conn: &mut SqliteConnection,
        scope: i64,
        keys: &[(SeenKey, i64)],
    ) -> Result<i64, StoreError> {
        let before = match self.seen_bound(scope) {
            Some(bound) => bound,
            None => sqlx::query_scalar::<_, Option<i64>>(
                "SELECT MAX(key_time) FROM seen_ids WHERE scope = ?1",
            )
            .bind(scope)
            .fetch_one(&mut *conn)
            .await
            .map_err(query_err("reading the newest seen id"))?
            .unwrap_or(i64::MIN),
        };
        let newest = keys.iter().map(|((t, _), _)| *t).max().unwrap_or(i64::MIN);
        // Set, not maxed: the turn held makes this the only raise of the scope in progress.
        self.seen_bounds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .insert(scope, before.max(newest));
        Ok(before)
    }
}

/// Changes this process made to the seen-set, counted: by scope for page commits, and once for
/// all scopes for resets and pruning. A commit looks its keys up before it takes the writer's turn
/// (a lookup is a read, which needs no turn, and it took a quarter of the time the turn was held);
/// once it holds the turn, an unchanged count says no commit of its scope, reset or prune ended
/// in between, so the lookup still holds. A count moves after its transaction is on disk and
/// before the turn is given up, so a lookup that read the count first either saw that
/// transaction's rows or finds the count moved. Only this process writes the database (its
/// writer lock), so nothing else changes the seen-set. (Pruning does not take the turn: a key it
/// removes after the lookup is then taken as seen, which it was; nothing is lost.)
#[derive(Debug, Default)]
pub(super) struct SeenChanges {
    /// Resets and prunes.
    all: u64,
    /// Page commits, by scope.
    by_scope: std::collections::HashMap<i64, u64>,
}

/// What [`SeenChanges`] said when a lookup started.
pub(super) type SeenToken = (u64, u64);

impl SeenChanges {
    pub(super) fn token(&self, scope: i64) -> SeenToken {
        (self.all, self.by_scope.get(&scope).copied().unwrap_or(0))
    }

    /// Notes a change to `scope`, or to every scope (`None`).
    pub(super) fn note(&mut self, scope: Option<i64>) {
        match scope {
            Some(scope) => *self.by_scope.entry(scope).or_default() += 1,
            None => self.all += 1,
        }
    }
}

impl Store {
    /// The seen-set's change count for `scope` now (see [`SeenChanges`]).
    pub(super) fn seen_token(&self, scope: i64) -> SeenToken {
        // The counts are plain numbers, whole after any panic: a poisoned lock still counts.
        self.seen_changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .token(scope)
    }

    /// Notes a change to the seen-set of `scope`, or of every scope (`None`).
    pub(super) fn note_seen_change(&self, scope: Option<i64>) {
        self.seen_changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .note(scope);
    }
}

/// Of `keys` (scope `scope`), those the seen-set holds. A read: it needs no transaction.
pub(super) async fn known(
    conn: &mut SqliteConnection,
    scope: i64,
    keys: &[(SeenKey, i64)],
) -> Result<HashSet<SeenKey>, StoreError> {
    let mut found = HashSet::new();
    for chunk in keys.chunks(KEYS_PER_STATEMENT) {
        // The scope is written into the text (a number of ours, the same for every page of a
        // partition); the rest are `?`, never `?N`: binding a numbered parameter looks its name up
        // in a list, which made a statement of 500 rows cost quadratic time.
        let sql = lookup_sql(scope, chunk.len());
        let mut q = sqlx::query_as::<_, SeenKey>(&sql);
        for ((key_time, hash), _) in chunk {
            q = q.bind(key_time).bind(hash);
        }
        found.extend(
            q.fetch_all(&mut *conn)
                .await
                .map_err(query_err("looking up seen ids"))?,
        );
    }
    Ok(found)
}

/// Records `keys` (scope `scope`, served at `now_ms`), each with its event's time. A key already
/// there is marked as served again (its `seen_at` moves to `now_ms`), so pruning by age never
/// forgets an id the vendor keeps serving. Part of the caller's transaction.
///
/// One upsert per run of keys, after a lookup ([`known`]) of those already there. An
/// `INSERT … RETURNING` of the new keys did both in one, but it handed every new key back as a
/// row of its own, and rows cost more than the insert (measured: 65–90 ms of a 10,000-event page
/// commit).
pub(super) async fn upsert(
    conn: &mut SqliteConnection,
    scope: i64,
    keys: &[(SeenKey, i64)],
    now_ms: i64,
) -> Result<(), StoreError> {
    for chunk in keys.chunks(KEYS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO seen_ids (scope, key_time, id_hash, event_time, seen_at) VALUES {}
             ON CONFLICT DO UPDATE SET seen_at = excluded.seen_at",
            rows_sql(chunk.len(), |_| format!("({scope}, ?, ?, ?, ?)"))
        );
        let mut q = sqlx::query(&sql);
        for ((key_time, hash), event_time) in chunk {
            q = q.bind(key_time).bind(hash).bind(event_time).bind(now_ms);
        }
        q.execute(&mut *conn)
            .await
            .map_err(query_err("recording seen ids"))?;
    }
    Ok(())
}

/// The statement that finds which of `n` keys (bound as `key_time, id_hash` pairs) scope `scope`
/// holds: a join driven by the keys, one primary-key lookup each. (The bundled SQLite plans
/// `(key_time, id_hash) IN (VALUES …)` the same way, but SQLite 3.40 scanned the whole scope for
/// it: 180 ms per 1,000 keys against a million ids. The join leaves no room for that.)
fn lookup_sql(scope: i64, n: usize) -> String {
    format!(
        "SELECT s.key_time, s.id_hash FROM (VALUES {}) AS k
           JOIN seen_ids AS s ON s.scope = {scope} AND s.key_time = k.column1
                             AND s.id_hash = k.column2",
        rows_sql(n, |_| "(?, ?)".to_string())
    )
}

/// Of `ids` (of `source`, `stream`), those the older, text-keyed `seen` table holds. Asked only
/// while it holds rows: they cannot be moved, since their key time is not known.
pub(super) async fn in_legacy(
    conn: &mut SqliteConnection,
    source: &str,
    stream: &str,
    ids: &[&str],
) -> Result<HashSet<String>, StoreError> {
    let mut found = HashSet::new();
    for chunk in ids.chunks(KEYS_PER_STATEMENT) {
        let sql = format!(
            "SELECT event_id FROM seen WHERE source = ? AND stream = ? AND event_id IN ({})",
            rows_sql(chunk.len(), |_| "?".to_string())
        );
        let mut q = sqlx::query_scalar::<_, String>(&sql)
            .bind(source)
            .bind(stream);
        for id in chunk {
            q = q.bind(*id);
        }
        found.extend(
            q.fetch_all(&mut *conn)
                .await
                .map_err(query_err("reading older seen ids"))?,
        );
    }
    Ok(found)
}

/// Forgets the seen ids of `source` with an event time at or after `since_ms`, in both tables.
pub(super) async fn forget_since(
    conn: &mut SqliteConnection,
    source: &str,
    since_ms: i64,
) -> Result<u64, StoreError> {
    let mut forgotten = 0;
    for sql in [
        "DELETE FROM seen_ids WHERE event_time >= ?2
           AND scope IN (SELECT scope FROM seen_scopes WHERE source = ?1)",
        "DELETE FROM seen WHERE source = ?1 AND event_time >= ?2",
    ] {
        forgotten += sqlx::query(sql)
            .bind(source)
            .bind(since_ms)
            .execute(&mut *conn)
            .await
            .map_err(query_err("forgetting seen ids"))?
            .rows_affected();
    }
    Ok(forgotten)
}

/// `n` value rows joined by commas, row `i` given by `row(i)`. The text depends on `n` alone, so
/// SQLite's prepared statements are reused across pages.
fn rows_sql(n: usize, row: impl Fn(usize) -> String) -> String {
    (0..n).map(row).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fnv1a_64() {
        // Published FNV-1a 64 test vectors: the stored keys depend on these never changing.
        assert_eq!(id_hash("") as u64, 0xcbf2_9ce4_8422_2325);
        assert_eq!(id_hash("a") as u64, 0xaf63_dc4c_8601_ec8c);
        assert_eq!(id_hash("foobar") as u64, 0x8594_4171_f739_67e8);
    }

    #[test]
    fn a_key_is_time_then_hash() {
        assert_eq!(key(42, "a"), (42, id_hash("a")));
        assert_ne!(key(42, "a"), key(43, "a"));
        assert_ne!(key(42, "a"), key(42, "b"));
    }

    /// A page's lookup must cost a primary-key search per key, whatever the seen-set holds.
    #[tokio::test]
    async fn the_lookup_searches_by_the_whole_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db"), super::super::Access::Writer)
            .await
            .unwrap();
        let sql = format!("EXPLAIN QUERY PLAN {}", lookup_sql(7, 3));
        let mut q = sqlx::query_as::<_, (i64, i64, i64, String)>(&sql);
        for i in 0..3i64 {
            q = q.bind(i).bind(i);
        }
        let plan: Vec<String> = q
            .fetch_all(&store.pool)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.3)
            .collect();
        assert!(
            plan.iter()
                .any(|step| step
                    == "SEARCH s USING PRIMARY KEY (scope=? AND key_time=? AND id_hash=?)"),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.starts_with("SCAN s")),
            "{plan:?}"
        );
    }

    #[test]
    fn keys_newer_than_the_bound_are_not_looked_up() {
        let keys = [((5, 1), 0), ((7, 2), 0), ((6, 3), 0), ((8, 4), 0)];
        assert_eq!(to_look_up(&keys, None), keys.to_vec());
        assert_eq!(
            to_look_up(&keys, Some(6)),
            vec![((5, 1), 0), ((6, 3), 0)],
            "a tie is looked up"
        );
        assert!(to_look_up(&keys, Some(4)).is_empty());
        assert_eq!(to_look_up(&keys, Some(i64::MAX)), keys.to_vec());
    }

    /// Pruning walks each scope's old keys by the primary key, whatever the seen-set holds, and
    /// needs no index of its own.
    #[tokio::test]
    async fn pruning_walks_the_primary_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db"), super::super::Access::Writer)
            .await
            .unwrap();
        for (sql, range) in PRUNE_SQL.iter().zip(["key_time<?", "key_time>?"]) {
            let plan: Vec<String> =
                sqlx::query_as::<_, (i64, i64, i64, String)>(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .bind("src")
                    .bind(0i64)
                    .bind(0i64)
                    .fetch_all(&store.pool)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| r.3)
                    .collect();
            let wanted = format!("SEARCH seen_ids USING PRIMARY KEY (scope=? AND {range})");
            assert!(plan.contains(&wanted), "{plan:?}");
        }
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'seen_ids'",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap();
        assert!(
            indexes.iter().all(|n| n.starts_with("sqlite_autoindex")),
            "{indexes:?}"
        );
    }

    #[test]
    fn value_rows_are_joined() {
        assert_eq!(rows_sql(2, |i| format!("({i})")), "(0), (1)".to_string());
        assert_eq!(rows_sql(0, |i| i.to_string()), "");
    }
}
