//! NDJSON file sink: appends one JSON envelope per line to a file, fsyncs, rotates by size.
//!
//! Owns: the active file, its rotation (`name-<UTC time>.ndjson` beside it, at most `keep_files`) and
//! the repair of a torn last line after a crash. Must not: format records (see `encode::json`) or
//! hold the file open between batches — every batch opens the path anew, so a rotated, deleted or
//! remounted file is picked up without a signal. Invariant: `deliver` returns only after the whole
//! batch is written and `fdatasync`ed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::encode::json;
use crate::settings::FileSinkSettings;
use crate::sinks::{Delivered, Sink, SinkError};
use crate::store::OutboxRecord;

/// The NDJSON file sink.
pub struct FileSink {
    name: String,
    settings: FileSinkSettings,
    /// The last line may be torn (first batch of this process, or after a failed write).
    needs_repair: bool,
}

impl FileSink {
    /// A sink writing to `settings.path`.
    pub fn new(name: &str, settings: FileSinkSettings) -> Self {
        FileSink {
            name: name.to_string(),
            settings,
            needs_repair: true,
        }
    }

    fn unavailable(&self, doing: &str, path: &Path, e: std::io::Error) -> SinkError {
        SinkError::Unavailable {
            sink: self.name.clone(),
            detail: format!("{doing} {}: {e}", path.display()),
            retry_after: None,
        }
    }
}

impl Sink for FileSink {
    type Encoded = ();

    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&mut self, batch: &[OutboxRecord]) -> Result<Delivered, SinkError> {
        let mut lines = Vec::with_capacity(batch.iter().map(|r| r.record.len() + 256).sum());
        for record in batch {
            json::write_line(record, &mut lines);
        }
        let settings = self.settings.clone();
        let repair = self.needs_repair;
        let written = tokio::task::spawn_blocking(move || append(&settings, repair, &lines))
            .await
            .map_err(|e| SinkError::Unavailable {
                sink: self.name.clone(),
                detail: format!("writer task failed: {e}"),
                retry_after: None,
            })?;
        match written {
            Ok(()) => {
                self.needs_repair = false;
                Ok(Delivered::default())
            }
            Err((doing, path, e)) => {
                self.needs_repair = true;
                Err(self.unavailable(doing, &path, e))
            }
        }
    }

    async fn check(&mut self) -> Result<(), SinkError> {
        let path = self.settings.path.clone();
        let result = tokio::task::spawn_blocking(move || open_append(&path).map(drop)).await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.unavailable("cannot open", &self.settings.path.clone(), e)),
            Err(e) => Err(SinkError::Unavailable {
                sink: self.name.clone(),
                detail: e.to_string(),
                retry_after: None,
            }),
        }
    }
}

type WriteFailure = (&'static str, PathBuf, std::io::Error);

fn open_append(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true).read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Writes `lines` to the active file: repair, rotate if full, append, fdatasync.
fn append(settings: &FileSinkSettings, repair: bool, lines: &[u8]) -> Result<(), WriteFailure> {
    let path = &settings.path;
    let fail = |doing: &'static str| move |e: std::io::Error| (doing, path.clone(), e);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(fail("cannot create the directory of"))?;
    }
    let existed = path.exists();
    let mut file = open_append(path).map_err(fail("cannot open"))?;
    if !existed {
        // A new file's name is durable only once its directory is: fsync it too.
        sync_dir(path).map_err(fail("cannot fsync the directory of"))?;
    }
    if repair {
        drop_torn_line(&mut file).map_err(fail("cannot repair the last line of"))?;
    }
    let size = file.metadata().map_err(fail("cannot stat"))?.len();
    if size > 0 && size + lines.len() as u64 > settings.rotate_bytes {
        drop(file);
        rotate(settings).map_err(fail("cannot rotate"))?;
        file = open_append(path).map_err(fail("cannot open"))?;
        sync_dir(path).map_err(fail("cannot fsync the directory of"))?;
    }
    file.write_all(lines).map_err(fail("cannot write"))?;
    file.sync_data().map_err(fail("cannot fsync"))?;
    Ok(())
}

/// fsyncs the directory holding `path`, so that a file created or renamed there survives a crash.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// Truncates the file after its last `\n`: a crash mid-write can leave half a line.
fn drop_torn_line(file: &mut File) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut tail = Vec::new();
    let mut start = len;
    // Read backwards in 64 KiB steps until a newline (or the start of the file) is found.
    loop {
        let step = start.min(64 * 1024);
        start -= step;
        file.seek(SeekFrom::Start(start))?;
        let mut chunk = vec![0; step as usize];
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        let keep = match tail.iter().rposition(|&b| b == b'\n') {
            Some(i) => Some(start + i as u64 + 1),
            None if start == 0 => Some(0),
            None => None,
        };
        if let Some(keep) = keep {
            if keep < len {
                tracing::warn!(
                    dropped_bytes = len - keep,
                    "dropping a torn last line left by a crash"
                );
                file.set_len(keep)?;
                file.sync_data()?;
            }
            return Ok(());
        }
    }
}

/// Renames the active file to `stem-<UTC time>[-n].ndjson` and deletes the oldest beyond `keep_files`.
fn rotate(settings: &FileSinkSettings) -> std::io::Result<()> {
    let path = &settings.path;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("events");
    let ext = path
        .extension()
        .and_then(|s| s.to_str())
        .unwrap_or("ndjson");
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let mut target = dir.join(format!("{stem}-{stamp}.{ext}"));
    let mut n = 1;
    while target.exists() {
        target = dir.join(format!("{stem}-{stamp}-{n}.{ext}"));
        n += 1;
    }
    std::fs::rename(path, &target)?;
    File::open(dir)?.sync_all()?;
    let mut rotated = rotated_files(dir, stem, ext)?;
    // Oldest first: by modification time, then name (equal stamps get a `-n` suffix).
    rotated.sort_by_cached_key(|p| {
        (
            std::fs::metadata(p).and_then(|m| m.modified()).ok(),
            p.clone(),
        )
    });
    let excess = rotated.len().saturating_sub(settings.keep_files);
    for old in rotated.into_iter().take(excess) {
        std::fs::remove_file(&old)?;
    }
    Ok(())
}

/// Rotated files of the active file `stem.ext`, in no particular order: only names this sink's
/// [`rotate`] writes (`stem-YYYYMMDDTHHMMSS.mmmZ[-n].ext`), never another file that merely shares
/// the prefix (`alerts-critical.ndjson` beside `alerts.ndjson`).
pub fn rotated_files(dir: &Path, stem: &str, ext: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_rotation_of(name, stem, ext) {
            found.push(dir.join(name));
        }
    }
    Ok(found)
}

/// Whether `name` is `stem-YYYYMMDDTHHMMSS.mmmZ[-n].ext`.
fn is_rotation_of(name: &str, stem: &str, ext: &str) -> bool {
    let Some(middle) = name
        .strip_prefix(stem)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.strip_suffix(ext))
        .and_then(|rest| rest.strip_suffix('.'))
    else {
        return false;
    };
    let (stamp, n) = match middle.split_once('-') {
        Some((stamp, n)) => (stamp, Some(n)),
        None => (middle, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let b = stamp.as_bytes();
    b.len() == 20
        && digits(&stamp[0..8])
        && b[8] == b'T'
        && digits(&stamp[9..15])
        && b[15] == b'.'
        && digits(&stamp[16..19])
        && b[19] == b'Z'
        && n.is_none_or(digits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn record(seq: i64, text: &str) -> OutboxRecord {
        OutboxRecord {
            seq,
            source: "s".into(),
            stream: "events".into(),
            tenant: String::new(),
            event_id: format!("e{seq}"),
            event_time: Utc.timestamp_millis_opt(0).unwrap(),
            ingest_time: Utc.timestamp_millis_opt(0).unwrap(),
            severity: 1,
            record: text.into(),
        }
    }

    fn settings(dir: &Path, rotate_bytes: u64, keep_files: usize) -> FileSinkSettings {
        settings_named(dir, "out", rotate_bytes, keep_files)
    }

    fn settings_named(
        dir: &Path,
        stem: &str,
        rotate_bytes: u64,
        keep_files: usize,
    ) -> FileSinkSettings {
        FileSinkSettings {
            path: dir.join(format!("{stem}.ndjson")),
            rotate_bytes,
            keep_files,
            batch_size: 10,
        }
    }

    #[tokio::test]
    async fn appends_one_line_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::new("f", settings(dir.path(), 1 << 20, 3));
        sink.deliver(&[record(1, "{}"), record(2, r#"{"a":"b"}"#)])
            .await
            .unwrap();
        sink.deliver(&[record(3, "{}")]).await.unwrap();
        let text = std::fs::read_to_string(dir.path().join("out.ndjson")).unwrap();
        let ids: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(ids, ["e1", "e2", "e3"]);
    }

    #[tokio::test]
    async fn a_torn_last_line_is_dropped_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        std::fs::write(&path, "{\"whole\":1}\n{\"torn\":").unwrap();
        let mut sink = FileSink::new("f", settings(dir.path(), 1 << 20, 3));
        sink.deliver(&[record(1, "{}")]).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], "{\"whole\":1}");
        assert!(lines[1].starts_with("{\"source\":\"s\""));
    }

    #[tokio::test]
    async fn rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = FileSink::new("f", settings(dir.path(), 400, 2));
        for seq in 0..12 {
            sink.deliver(&[record(
                seq,
                r#"{"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
            )])
            .await
            .unwrap();
        }
        let rotated = rotated_files(dir.path(), "out", "ndjson").unwrap();
        assert_eq!(rotated.len(), 2, "{rotated:?}");
        for file in rotated.iter().chain([&dir.path().join("out.ndjson")]) {
            assert!(std::fs::metadata(file).unwrap().len() <= 400);
        }
    }

    #[test]
    fn only_this_sinks_rotation_names_count_as_its_rotations() {
        for own in [
            "alerts-20261201T020304.567Z.ndjson",
            "alerts-20261201T020304.567Z-3.ndjson",
        ] {
            assert!(is_rotation_of(own, "alerts", "ndjson"), "{own}");
        }
        for other in [
            "alerts-critical.ndjson",
            "alerts-critical-20261201T020304.567Z.ndjson",
            "alerts-20261201T020304.567Z.json",
            "alerts-20261201T020304Z.ndjson",
            "alerts-20261201T020304.567Z-.ndjson",
            "alerts-20261201T020304.567Z-x.ndjson",
            "alerts.ndjson",
        ] {
            assert!(!is_rotation_of(other, "alerts", "ndjson"), "{other}");
        }
    }

    #[tokio::test]
    async fn rotation_never_deletes_another_sinks_files_that_share_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let mut critical = FileSink::new(
            "critical",
            settings_named(dir.path(), "out-critical", 400, 1),
        );
        let mut all = FileSink::new("all", settings(dir.path(), 400, 1));
        let pad = r#"{"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
        for seq in 0..12 {
            critical.deliver(&[record(seq, pad)]).await.unwrap();
        }
        let mut before: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        before.sort();
        assert_eq!(
            before.len(),
            2,
            "out-critical.ndjson and one rotation: {before:?}"
        );
        for seq in 0..12 {
            all.deliver(&[record(seq, pad)]).await.unwrap();
        }
        for name in &before {
            assert!(
                dir.path().join(name).exists(),
                "the `out` sink's rotation deleted {name:?}"
            );
        }
        assert_eq!(rotated_files(dir.path(), "out", "ndjson").unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_unusable_directory_is_an_unavailable_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, "").unwrap();
        let mut s = settings(dir.path(), 1 << 20, 3);
        s.path = blocker.join("out.ndjson");
        let mut sink = FileSink::new("f", s);
        let err = sink.deliver(&[record(1, "{}")]).await.unwrap_err();
        assert!(matches!(err, SinkError::Unavailable { .. }));
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}
