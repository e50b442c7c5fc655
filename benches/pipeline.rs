//! End-to-end throughput of `secrelay backfill`: N events from a vendor simulator (real HTTP on
//! loopback) → store (seen-set, outbox, cursor) → sink, as `app::backfill` runs it.
//!
//! Sources: `code42` (the Code42 simulator's file events, ~1.3 KB each, 10 000 per page, the
//! source's default `page_size`) and `sophos` (1 000-record pages). Sinks: `file` (NDJSON, write +
//! fdatasync), `syslog` (TCP, CEF, to `SyslogReceiver` writing to /dev/null) and `hec` (Splunk HEC
//! with gzip, to `HecSim`).
//!
//! Every run is two processes: this one (the parent) hosts the simulator and the receiver, and
//! a fresh child process runs secrelay alone, so the child's peak RSS (VmHWM), bytes written
//! (`write_bytes` of `/proc/self/io`) and CPU time are secrelay's only. The simulator runs on its
//! own tokio runtime (threads named `bench-sim`), the receiver on another (`bench-rcv`); their
//! shares of CPU are those threads' CPU time over the run (`/proc/self/task/<tid>/stat`) divided
//! by the total of simulator, receiver and child (`/proc/self/stat` of the child, all its threads).
//! That total, in CPU-seconds, is printed too: on a shared VM whose speed swings from hour to
//! hour it compares two builds better than events/s does.
//!
//! `cargo bench --bench pipeline` runs the default set (Code42 100k and 500k to a file, Sophos
//! 100k to a file). `-- code42 100000`, `-- sophos 100000`, `-- tenable 20000`,
//! `-- code42 syslog 100000`, `-- code42 hec 100000 500000`: one source, one sink, the sizes given.
//!
//! Two more cases: `-- idle 300` runs the daemon (`app::run`) with four caught-up sources (Code42,
//! Sophos, Tenable.sc, Jamf) polling every 60 s and reports its CPU (% of one core) and RSS over
//! that many seconds; `-- crash 1000000` kills (SIGKILL) a backfill of N Code42 events to a file
//! once about half are written, resumes it in a fresh process on the same state, and fails unless
//! every event id is in the output (it reports the duplicates). See `benches/README.md`.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use secrelay::app::{self, BackfillOptions};
use secrelay::settings::Settings;
use secrelay::simulate::code42::{Code42Sim, Code42SimConfig};
use secrelay::simulate::hec::{HecSim, HecSimConfig};
use secrelay::simulate::jamf::{JamfSim, JamfSimConfig};
use secrelay::simulate::sophos::{Identity, SophosSim, SophosSimConfig};
use secrelay::simulate::syslog::SyslogReceiver;
use secrelay::simulate::tenable_sc::{TenableSim, TenableSimConfig};
use tokio_util::sync::CancellationToken;

/// Name of the parent's source-simulator threads (`comm` keeps 15 bytes).
const SIM_THREAD: &str = "bench-sim";
/// Name of the parent's receiver threads (syslog receiver, HEC simulator).
const RCV_THREAD: &str = "bench-rcv";
/// HEC token the simulator accepts.
const HEC_TOKEN: &str = "00000000-0000-4000-8000-00000000cafe";
/// All events lie in the last 23 hours, inside both sources' 24-hour first look-back.
const SPAN_SECS: i64 = 23 * 3600;
/// `/proc` counts CPU time in USER_HZ ticks, 100 a second on Linux whatever the kernel's HZ.
const TICKS_PER_SEC: f64 = 100.0;
/// The idle case's daemon: poll interval of every source, seconds.
const IDLE_INTERVAL_SECS: f64 = 60.0;
/// The idle case: seconds between the daemon's start and the measured window (its first polls).
const IDLE_SETTLE_SECS: u64 = 10;
/// The configuration file the parent writes into a run's directory for the child.
const CONFIG_FILE: &str = "bench.toml";
/// The file sink's output in a run's directory.
const OUT_FILE: &str = "out.ndjson";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Source {
    Code42,
    Sophos,
    Tenable,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SinkKind {
    File,
    Syslog,
    Hec,
}

/// What one invocation runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    /// Backfill throughput (the table).
    Throughput,
    /// The daemon idle, for a number of seconds.
    Idle,
    /// A backfill killed half-way and resumed.
    Crash,
}

impl Source {
    fn parse(s: &str) -> Option<Source> {
        match s {
            "code42" => Some(Source::Code42),
            "sophos" => Some(Source::Sophos),
            "tenable" => Some(Source::Tenable),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Source::Code42 => "code42",
            Source::Sophos => "sophos",
            Source::Tenable => "tenable",
        }
    }
}

impl SinkKind {
    fn parse(s: &str) -> Option<SinkKind> {
        match s {
            "file" => Some(SinkKind::File),
            "syslog" => Some(SinkKind::Syslog),
            "hec" => Some(SinkKind::Hec),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            SinkKind::File => "file",
            SinkKind::Syslog => "syslog",
            SinkKind::Hec => "hec",
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        child(&args[1..]);
        return;
    }
    let mut source = None;
    let mut sink = None;
    let mut case = Case::Throughput;
    let mut sizes = Vec::new();
    for a in &args {
        if let Some(s) = Source::parse(a) {
            source = Some(s);
        } else if let Some(k) = SinkKind::parse(a) {
            sink = Some(k);
        } else if a == "idle" {
            case = Case::Idle;
        } else if a == "crash" {
            case = Case::Crash;
        } else if let Ok(n) = a.parse::<u64>() {
            sizes.push(n);
        }
        // Anything else (cargo passes `--bench`) is ignored.
    }
    let sim_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(SIM_THREAD)
        .enable_all()
        .build()
        .expect("simulator runtime");
    match case {
        Case::Idle => {
            for secs in if sizes.is_empty() { vec![300] } else { sizes } {
                run_idle(&sim_runtime, secs);
            }
            return;
        }
        Case::Crash => {
            let mut failed = false;
            for n in if sizes.is_empty() {
                vec![1_000_000]
            } else {
                sizes
            } {
                failed |= !run_crash(&sim_runtime, n);
            }
            if failed {
                std::process::exit(1);
            }
            return;
        }
        Case::Throughput => {}
    }
    let jobs: Vec<(Source, SinkKind, u64)> =
        if source.is_none() && sink.is_none() && sizes.is_empty() {
            vec![
                (Source::Code42, SinkKind::File, 100_000),
                (Source::Code42, SinkKind::File, 500_000),
                (Source::Sophos, SinkKind::File, 100_000),
            ]
        } else {
            let source = source.unwrap_or(Source::Code42);
            let sink = sink.unwrap_or(SinkKind::File);
            if sizes.is_empty() {
                sizes.push(100_000);
            }
            sizes.into_iter().map(|n| (source, sink, n)).collect()
        };
    let rcv_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(RCV_THREAD)
        .enable_all()
        .build()
        .expect("receiver runtime");
    println!(
        "{:>7} {:>6} {:>9} {:>8} {:>9} {:>10} {:>12} {:>9} {:>8} {:>8} {:>6}",
        "source",
        "sink",
        "events",
        "seconds",
        "events/s",
        "peak RSS",
        "written B/ev",
        "record B",
        "sim CPU",
        "rcv CPU",
        "CPU s"
    );
    for (source, sink, n) in jobs {
        run_job(&sim_runtime, &rcv_runtime, source, sink, n);
    }
}

/// What the parent started for one run; dropping it stops them.
#[derive(Default)]
struct Servers {
    code42: Option<Code42Sim>,
    sophos: Option<SophosSim>,
    tenable: Option<TenableSim>,
    jamf: Option<JamfSim>,
    syslog: Option<SyslogReceiver>,
    hec: Option<HecSim>,
}

impl Servers {
    /// Stops every server on the runtime it runs on.
    fn stop(self, rt: &tokio::runtime::Runtime, rcv_rt: Option<&tokio::runtime::Runtime>) {
        let Servers {
            code42,
            sophos,
            tenable,
            jamf,
            syslog,
            hec,
        } = self;
        rt.block_on(async move { drop((code42, sophos, tenable, jamf)) });
        match rcv_rt {
            Some(rcv_rt) => rcv_rt.block_on(async move { drop((syslog, hec)) }),
            None => drop((syslog, hec)),
        }
    }
}

/// A temporary directory on the disk (not tmpfs), so fdatasync and write_bytes mean what they say.
fn run_dir() -> tempfile::TempDir {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::tempdir_in(&base).expect("temp dir")
}

/// The Code42 simulator with `n` file events over the last 23 hours (loaded in one step, so
/// millions take seconds and ~50 bytes each).
async fn code42_with(n: u64) -> Code42Sim {
    let sim = Code42Sim::start(Code42SimConfig::default())
        .await
        .expect("code42 simulator");
    let start = chrono::Utc::now() - chrono::Duration::seconds(SPAN_SECS + 60);
    let spacing = chrono::Duration::microseconds(SPAN_SECS * 1_000_000 / n.max(1) as i64);
    sim.load_file_events(n as usize, start, spacing, chrono::Duration::seconds(30));
    sim
}

/// The Sophos simulator (one tenant) with `n` events over the last 23 hours.
async fn sophos_with(n: u64) -> SophosSim {
    let start = chrono::Utc::now() - chrono::Duration::seconds(SPAN_SECS + 60);
    SophosSim::start(SophosSimConfig {
        identity: Identity::Tenant,
        events_per_tenant: Some(n),
        rate_per_sec: n.max(1) as f64 / SPAN_SECS as f64,
        start,
        ..SophosSimConfig::default()
    })
    .await
    .expect("sophos simulator")
}

/// The Tenable.sc simulator with `n` open findings last seen over the last 23 hours.
async fn tenable_with(n: u64) -> TenableSim {
    let sim = TenableSim::start(TenableSimConfig::default())
        .await
        .expect("tenable simulator");
    let now = chrono::Utc::now().timestamp();
    sim.add_findings(n, now - SPAN_SECS, now - 60);
    sim
}

/// The `[sources.<id>]` body of `source` against `servers`, polling every `interval` seconds
/// (`None`: the source's default).
fn source_text(source: Source, servers: &Servers, interval: Option<f64>) -> String {
    let interval = interval.map_or(String::new(), |s| format!("\ninterval_secs = {s:?}"));
    match source {
        Source::Code42 => format!(
            "type = \"code42\"\nclient_id = \"key-42\"\nclient_secret = \"sim-code42-secret\"\n\
             api_url = {api:?}\nstreams = [\"file_events\"]\ninitial_lookback_hours = 24{interval}",
            api = servers.code42.as_ref().expect("code42 simulator").url()
        ),
        Source::Sophos => {
            let sim = servers.sophos.as_ref().expect("sophos simulator");
            format!(
                "type = \"sophos\"\nclient_id = \"sim-client\"\nclient_secret = \"sim-secret\"\n\
                 token_url = {token:?}\napi_url = {api:?}\nstreams = [\"events\"]\n\
                 initial_lookback_hours = 24\npage_size = 1000{interval}",
                token = sim.token_url(),
                api = sim.url()
            )
        }
        Source::Tenable => format!(
            "type = \"tenable_sc\"\nurl = {url:?}\naccess_key = \"ak-1\"\n\
             secret_key = \"sim-tenable-secret\"\nstreams = [\"cumulative\"]\n\
             initial_lookback_days = 1{interval}",
            url = servers.tenable.as_ref().expect("tenable simulator").url()
        ),
    }
}

/// The sink's `batch_size`: 2,000, or `BENCH_BATCH` (to see what the per-batch costs, an fsync
/// and a position commit each, weigh).
fn batch_size() -> usize {
    std::env::var("BENCH_BATCH")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000)
}

/// The `[sinks.out]` body of `sink`, writing under `dir` (file) or to `target`.
fn sink_text(sink: SinkKind, dir: &Path, target: &str) -> String {
    let batch = batch_size();
    match sink {
        SinkKind::File => format!(
            "type = \"file\"\npath = {:?}\nrotate_bytes = 4294967296\nbatch_size = {batch}",
            dir.join(OUT_FILE).display().to_string()
        ),
        SinkKind::Syslog => {
            format!("type = \"syslog\"\naddress = {target:?}\ntransport = \"tcp\"\nbatch_size = {batch}\nhostname = \"bench\"")
        }
        SinkKind::Hec => format!(
            "type = \"splunk_hec\"\nurl = {target:?}\ntoken = {HEC_TOKEN:?}\ngzip = true\nbatch_size = {batch}"
        ),
    }
}

/// Writes the child's configuration into `dir`: the store there, sink `out`, and `sources`
/// (id, body), each routed to `out`.
fn write_config(dir: &Path, sink: &str, sources: &[(&str, String)]) {
    let mut text = format!(
        "[store]\npath = {store:?}\n[outbox]\nmax_bytes = 4294967296\n[backfill]\ndrain_timeout_secs = 900.0\n\
         [sinks.out]\n{sink}\n",
        store = dir.join("state.db").display().to_string(),
    );
    for (id, body) in sources {
        text.push_str(&format!("[sources.{id}]\n{body}\nsinks = [\"out\"]\n"));
    }
    std::fs::write(dir.join(CONFIG_FILE), text).expect("config written");
}

/// The numbers after `prefix` on the child's output line that starts with it.
fn child_result(stdout: &[u8], prefix: &str) -> Vec<f64> {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("child prints its {prefix}line"));
    line.split_whitespace()
        .map(|x| x.parse().expect("number"))
        .collect()
}

/// The child process: `kind` (`backfill`, `resume`, `idle`), the run's directory, a number.
/// `BENCH_CHILD_WRAPPER=heaptrack` (any program that takes a command line) runs the child under it.
fn child_command(kind: &str, dir: &Path, n: u64) -> Command {
    let exe = std::env::current_exe().expect("own path");
    let mut command = match std::env::var_os("BENCH_CHILD_WRAPPER") {
        Some(wrapper) => {
            let mut c = Command::new(wrapper);
            c.arg(exe);
            c
        }
        None => Command::new(exe),
    };
    command
        .args(["--child", kind])
        .arg(dir)
        .arg(n.to_string())
        .stderr(Stdio::inherit());
    command
}

fn run_job(
    rt: &tokio::runtime::Runtime,
    rcv_rt: &tokio::runtime::Runtime,
    source: Source,
    sink: SinkKind,
    n: u64,
) {
    let mut servers = Servers::default();
    let loading = Instant::now();
    rt.block_on(async {
        match source {
            Source::Code42 => servers.code42 = Some(code42_with(n).await),
            Source::Sophos => servers.sophos = Some(sophos_with(n).await),
            Source::Tenable => servers.tenable = Some(tenable_with(n).await),
        }
    });
    // The parent's own cost of holding the data (not in any column).
    eprintln!(
        "{} simulator: {n} records ready in {:.1} s, parent RSS {:.0} MiB",
        source.name(),
        loading.elapsed().as_secs_f64(),
        proc_status_kib("VmRSS:") as f64 / 1024.0
    );
    rcv_rt.block_on(async {
        match sink {
            SinkKind::File => {}
            // /dev/null: the receiver's writes are not the relay's and stay out of every column.
            SinkKind::Syslog => {
                servers.syslog = Some(
                    SyslogReceiver::start(Path::new("/dev/null"))
                        .await
                        .expect("syslog receiver"),
                )
            }
            SinkKind::Hec => {
                servers.hec = Some(
                    HecSim::start(HecSimConfig {
                        keep_accepted: false,
                        ..HecSimConfig::default()
                    })
                    .await
                    .expect("hec simulator"),
                )
            }
        }
    });
    let target = match (&servers.syslog, &servers.hec) {
        (Some(r), _) => r.address(),
        (_, Some(h)) => h.url(),
        _ => String::new(),
    };
    let dir = run_dir();
    write_config(
        dir.path(),
        &sink_text(sink, dir.path(), &target),
        &[("bench", source_text(source, &servers, None))],
    );
    let sim_before = thread_ticks(SIM_THREAD);
    let rcv_before = thread_ticks(RCV_THREAD);
    let out = child_command("backfill", dir.path(), n)
        .output()
        .expect("child runs");
    let sim_ticks = thread_ticks(SIM_THREAD).saturating_sub(sim_before);
    let rcv_ticks = thread_ticks(RCV_THREAD).saturating_sub(rcv_before);
    assert!(out.status.success(), "benchmark for {n} events failed");
    if let Some(hec) = &servers.hec {
        // The receiver's count, not only the relay's word (a batch sent twice counts twice).
        assert!(
            hec.accepted_count() >= n,
            "the HEC simulator took {} of {n} events",
            hec.accepted_count()
        );
    }
    let v = child_result(&out.stdout, "RESULT ");
    let [secs, hwm_kib, write_bytes, child_ticks, record_bytes] = v[..] else {
        panic!("result line: {v:?}")
    };
    let all = (sim_ticks as f64 + rcv_ticks as f64 + child_ticks).max(1.0);
    println!(
        "{:>7} {:>6} {:>9} {:>8.1} {:>9.0} {:>6.1} MiB {:>12.0} {:>9.0} {:>7.1}% {:>7.1}% {:>6.1}",
        source.name(),
        sink.name(),
        n,
        secs,
        n as f64 / secs,
        hwm_kib / 1024.0,
        write_bytes / n as f64,
        record_bytes,
        sim_ticks as f64 / all * 100.0,
        rcv_ticks as f64 / all * 100.0,
        all / TICKS_PER_SEC
    );
    servers.stop(rt, Some(rcv_rt));
}

/// The idle case: four sources with a little data each, caught up by a backfill (its own child),
/// then the daemon in a fresh child for `secs` seconds after it settled.
fn run_idle(rt: &tokio::runtime::Runtime, secs: u64) {
    let mut servers = Servers::default();
    rt.block_on(async {
        let code42 = code42_with(1000).await;
        let now = chrono::Utc::now();
        code42.add_alerts_at(now - chrono::Duration::hours(2), "idle", 20);
        code42.add_session(now - chrono::Duration::hours(3));
        servers.code42 = Some(code42);
        servers.sophos = Some(sophos_with(1000).await);
        servers.tenable = Some(tenable_with(1000).await);
        servers.jamf = Some(
            JamfSim::start(JamfSimConfig {
                computers: 200,
                ..JamfSimConfig::default()
            })
            .await
            .expect("jamf simulator"),
        );
    });
    let interval = Some(IDLE_INTERVAL_SECS);
    // Code42 with every stream (file events, alerts, sessions), as a daemon would run it.
    let code42 = source_text(Source::Code42, &servers, interval)
        .replace("streams = [\"file_events\"]\n", "");
    let jamf = format!(
        "type = \"jamf\"\nurl = {url:?}\nclient_id = \"jamf-client\"\n\
         client_secret = \"sim-jamf-secret\"\ninterval_secs = {IDLE_INTERVAL_SECS:?}",
        url = servers.jamf.as_ref().expect("jamf simulator").url()
    );
    let dir = run_dir();
    write_config(
        dir.path(),
        &sink_text(SinkKind::File, dir.path(), ""),
        &[
            ("code42", code42),
            ("sophos", source_text(Source::Sophos, &servers, interval)),
            (
                "tenable_sc",
                source_text(Source::Tenable, &servers, interval),
            ),
            ("jamf", jamf),
        ],
    );
    let caught_up = child_command("resume", dir.path(), 0)
        .output()
        .expect("catch-up child runs");
    assert!(caught_up.status.success(), "catch-up backfill failed");
    let out = child_command("idle", dir.path(), secs)
        .output()
        .expect("idle child runs");
    assert!(out.status.success(), "idle daemon failed");
    let v = child_result(&out.stdout, "IDLE ");
    let [wall, ticks, hwm_kib, rss_kib, settle_ticks] = v[..] else {
        panic!("idle line: {v:?}")
    };
    println!(
        "{:>7} {:>8} {:>10} {:>10} {:>10} {:>12}",
        "sources", "seconds", "CPU %core", "peak RSS", "final RSS", "settle CPU s"
    );
    println!(
        "{:>7} {:>8.0} {:>9.3}% {:>6.1} MiB {:>6.1} MiB {:>12.2}",
        4,
        wall,
        ticks / TICKS_PER_SEC / wall * 100.0,
        hwm_kib / 1024.0,
        rss_kib / 1024.0,
        settle_ticks / TICKS_PER_SEC
    );
    servers.stop(rt, None);
}

/// Newline-terminated lines in `path` from `*offset` on, moving `*offset` to the end read.
fn count_new_lines(path: &Path, offset: &mut u64) -> u64 {
    let Ok(mut file) = std::fs::File::open(path) else {
        return 0;
    };
    if file.seek(SeekFrom::Start(*offset)).is_err() {
        return 0;
    }
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    *offset += buf.len() as u64;
    buf.iter().filter(|b| **b == b'\n').count() as u64
}

/// The crash case: a backfill of `n` Code42 events killed with SIGKILL once about half are in
/// the output file, then resumed by a fresh child on the same state directory. Returns whether
/// every event id was delivered.
fn run_crash(rt: &tokio::runtime::Runtime, n: u64) -> bool {
    let mut servers = Servers::default();
    let expected: Vec<String> = rt.block_on(async {
        let sim = code42_with(n).await;
        let ids = (0..n).map(|k| sim.file_event_id(k)).collect();
        servers.code42 = Some(sim);
        ids
    });
    let dir = run_dir();
    let out_path = dir.path().join(OUT_FILE);
    write_config(
        dir.path(),
        &sink_text(SinkKind::File, dir.path(), ""),
        &[("bench", source_text(Source::Code42, &servers, None))],
    );
    let started = Instant::now();
    let mut first = child_command("resume", dir.path(), n)
        .stdout(Stdio::null())
        .spawn()
        .expect("first child runs");
    let (mut offset, mut lines) = (0, 0);
    while lines < n / 2 {
        std::thread::sleep(Duration::from_millis(10));
        lines += count_new_lines(&out_path, &mut offset);
        if let Some(status) = first.try_wait().expect("child status") {
            panic!("the first child ended ({status}) before half the events were written");
        }
    }
    first.kill().expect("SIGKILL");
    let _ = first.wait();
    let killed_at = started.elapsed().as_secs_f64();
    lines += count_new_lines(&out_path, &mut offset);
    let out = child_command("resume", dir.path(), n)
        .output()
        .expect("second child runs");
    let secs = started.elapsed().as_secs_f64();
    assert!(out.status.success(), "the resumed backfill failed");
    // Every line's `id` (the envelope's event id); a torn line is counted, not parsed.
    #[derive(serde::Deserialize)]
    struct Line {
        id: String,
    }
    let text = std::fs::read(&out_path).expect("output file");
    let mut seen: HashMap<&[u8], u32> = HashMap::with_capacity(n as usize);
    let mut unreadable = 0u64;
    let mut ids = Vec::new();
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<Line>(line) {
            Ok(l) => ids.push(l.id),
            Err(_) => unreadable += 1,
        }
    }
    for id in &ids {
        *seen.entry(id.as_bytes()).or_default() += 1;
    }
    let missing = expected
        .iter()
        .filter(|id| !seen.contains_key(id.as_bytes()))
        .count();
    let twice = seen.values().filter(|c| **c > 1).count();
    println!(
        "{:>9} {:>12} {:>9} {:>11} {:>8} {:>10} {:>8}",
        "events", "before kill", "killed s", "duplicates", "missing", "unreadable", "seconds"
    );
    println!(
        "{:>9} {:>12} {:>9.1} {:>11} {:>8} {:>10} {:>8.1}",
        n, lines, killed_at, twice, missing, unreadable, secs
    );
    servers.stop(rt, None);
    if missing > 0 {
        eprintln!("{missing} of {n} event ids are not in the output");
    }
    missing == 0
}

/// The child: secrelay alone, with the configuration the parent wrote into `dir`.
/// - `backfill <dir> <n>`: backfills, asserts all `n` were delivered and prints `RESULT seconds
///   peak_rss_kib write_bytes cpu_ticks mean_record_bytes`.
/// - `resume <dir> <n>`: backfills (after a crash, or to catch up) and asserts only that it
///   completed.
/// - `idle <dir> <secs>`: runs the daemon, lets it settle, and prints `IDLE wall_secs cpu_ticks
///   peak_rss_kib rss_kib settle_cpu_ticks` over the next `secs` seconds.
fn child(args: &[String]) {
    let [kind, dir, n] = args else {
        panic!("child arguments: {args:?}")
    };
    let n: u64 = n.parse().expect("a number");
    let dir = Path::new(dir);
    let text = std::fs::read_to_string(dir.join(CONFIG_FILE)).expect("bench config");
    let settings = Settings::from_toml(&text).expect("bench config");
    // `BENCH_LOG=secrelay=debug`: the child's log on stderr (page commits, batches, their times).
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    // As the binary does, before the runtime's threads exist.
    if std::env::var_os("BENCH_UNTUNED").is_none() {
        secrelay::allocator::tune_for_long_runs();
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if kind == "idle" {
        let stop = CancellationToken::new();
        let daemon = runtime.spawn({
            let stop = stop.clone();
            async move { app::run(&settings, stop).await }
        });
        std::thread::sleep(Duration::from_secs(IDLE_SETTLE_SECS));
        let (settle_ticks, started) = (own_cpu_ticks(), Instant::now());
        std::thread::sleep(Duration::from_secs(n));
        let ticks = own_cpu_ticks().saturating_sub(settle_ticks);
        let wall = started.elapsed().as_secs_f64();
        let (hwm, rss) = (proc_status_kib("VmHWM:"), proc_status_kib("VmRSS:"));
        stop.cancel();
        let summary = runtime
            .block_on(daemon)
            .expect("daemon task")
            .expect("daemon");
        // Not fatal (the figures stand), but a source that failed was not idle: say so.
        for p in summary.partitions.iter().filter(|p| p.error.is_some()) {
            eprintln!("idle daemon: a partition failed: {p:?}");
        }
        println!("IDLE {wall} {ticks} {hwm} {rss} {settle_ticks}");
        return;
    }
    let written_before = proc_io_write_bytes();
    let started = Instant::now();
    let summary = runtime
        .block_on(app::backfill(
            &settings,
            &BackfillOptions::default(),
            CancellationToken::new(),
        ))
        .expect("backfill");
    let secs = started.elapsed().as_secs_f64();
    let written = proc_io_write_bytes().saturating_sub(written_before);
    assert!(summary.complete(), "{summary:?}");
    if kind == "resume" {
        return;
    }
    let delivered: u64 = summary.sinks.iter().map(|s| s.delivered).sum();
    assert_eq!(delivered, n, "every event delivered once");
    // Mean record size as the file sink wrote it (one NDJSON line per record), the files it
    // rotated at `rotate_bytes` (4 GiB: past ~3M events) included; 0 for other sinks.
    let record_bytes = output_bytes(dir) as f64 / n as f64;
    println!(
        "RESULT {secs} {} {written} {} {record_bytes}",
        proc_status_kib("VmHWM:"),
        own_cpu_ticks()
    );
}

/// Bytes in the file sink's output: the active file and those it rotated beside it.
fn output_bytes(dir: &Path) -> u64 {
    let rotated = secrelay::sinks::file::rotated_files(dir, "out", "ndjson").unwrap_or_default();
    std::iter::once(dir.join(OUT_FILE))
        .chain(rotated)
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|m| m.len())
        .sum()
}

/// A `/proc/self/status` field in KiB (VmHWM: peak resident set size).
fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Bytes this process caused to be sent to the storage layer (`write_bytes`).
fn proc_io_write_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime (clock ticks) from a `stat` file's text; `None` if unreadable.
fn stat_ticks(stat: &str) -> Option<(String, u64)> {
    // comm sits in parentheses and may hold spaces; fields after ')' start at field 3 (state).
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_string();
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// This process's CPU time so far (all its threads, living and exited), clock ticks.
fn own_cpu_ticks() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| stat_ticks(&s))
        .map_or(0, |(_, t)| t)
}

/// CPU time of this process's living threads whose name starts with `name`, clock ticks.
fn thread_ticks(name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|s| stat_ticks(&s))
        .filter(|(comm, _)| comm.starts_with(name))
        .map(|(_, t)| t)
        .sum()
}
