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
//!
//! `cargo bench --bench pipeline` runs the default set (Code42 100k and 500k to a file, Sophos
//! 100k to a file). `-- code42 100000`, `-- sophos 100000`, `-- code42 syslog 100000`,
//! `-- code42 hec 100000 500000`: one source, one sink, the sizes given. See `benches/README.md`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use secrelay::app::{self, BackfillOptions};
use secrelay::settings::Settings;
use secrelay::simulate::code42::{Code42Sim, Code42SimConfig};
use secrelay::simulate::hec::{HecSim, HecSimConfig};
use secrelay::simulate::sophos::{Identity, SophosSim, SophosSimConfig};
use secrelay::simulate::syslog::SyslogReceiver;
use tokio_util::sync::CancellationToken;

/// Name of the parent's source-simulator threads (`comm` keeps 15 bytes).
const SIM_THREAD: &str = "bench-sim";
/// Name of the parent's receiver threads (syslog receiver, HEC simulator).
const RCV_THREAD: &str = "bench-rcv";
/// HEC token the simulator accepts.
const HEC_TOKEN: &str = "00000000-0000-4000-8000-00000000cafe";
/// All events lie in the last 23 hours, inside both sources' 24-hour first look-back.
const SPAN_SECS: i64 = 23 * 3600;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Source {
    Code42,
    Sophos,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SinkKind {
    File,
    Syslog,
    Hec,
}

impl Source {
    fn parse(s: &str) -> Option<Source> {
        match s {
            "code42" => Some(Source::Code42),
            "sophos" => Some(Source::Sophos),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Source::Code42 => "code42",
            Source::Sophos => "sophos",
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
    let mut sizes = Vec::new();
    for a in &args {
        if let Some(s) = Source::parse(a) {
            source = Some(s);
        } else if let Some(k) = SinkKind::parse(a) {
            sink = Some(k);
        } else if let Ok(n) = a.parse::<u64>() {
            sizes.push(n);
        }
        // Anything else (cargo passes `--bench`) is ignored.
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
    let sim_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(SIM_THREAD)
        .enable_all()
        .build()
        .expect("simulator runtime");
    let rcv_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(RCV_THREAD)
        .enable_all()
        .build()
        .expect("receiver runtime");
    println!(
        "{:>7} {:>6} {:>9} {:>8} {:>9} {:>10} {:>12} {:>9} {:>8} {:>8}",
        "source",
        "sink",
        "events",
        "seconds",
        "events/s",
        "peak RSS",
        "written B/ev",
        "record B",
        "sim CPU",
        "rcv CPU"
    );
    for (source, sink, n) in jobs {
        run_job(&sim_runtime, &rcv_runtime, source, sink, n);
    }
}

/// What the parent started for one run; dropping it stops them.
struct Servers {
    code42: Option<Code42Sim>,
    sophos: Option<SophosSim>,
    syslog: Option<SyslogReceiver>,
    hec: Option<HecSim>,
}

fn run_job(
    rt: &tokio::runtime::Runtime,
    rcv_rt: &tokio::runtime::Runtime,
    source: Source,
    sink: SinkKind,
    n: u64,
) {
    let now = chrono::Utc::now();
    let start = now - chrono::Duration::seconds(SPAN_SECS + 60);
    let mut servers = Servers {
        code42: None,
        sophos: None,
        syslog: None,
        hec: None,
    };
    rt.block_on(async {
        match source {
            Source::Code42 => {
                let sim = Code42Sim::start(Code42SimConfig::default())
                    .await
                    .expect("code42 simulator");
                let spacing = chrono::Duration::microseconds(SPAN_SECS * 1_000_000 / n as i64);
                sim.add_file_events(n as usize, start, spacing, chrono::Duration::seconds(30));
                servers.code42 = Some(sim);
            }
            Source::Sophos => {
                servers.sophos = Some(
                    SophosSim::start(SophosSimConfig {
                        identity: Identity::Tenant,
                        events_per_tenant: Some(n),
                        rate_per_sec: n as f64 / SPAN_SECS as f64,
                        start,
                        ..SophosSimConfig::default()
                    })
                    .await
                    .expect("sophos simulator"),
                );
            }
        }
    });
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
                    HecSim::start(HecSimConfig::default())
                        .await
                        .expect("hec simulator"),
                )
            }
        }
    });
    let (api, token) = match (&servers.code42, &servers.sophos) {
        (Some(c), _) => (c.url(), String::new()),
        (_, Some(s)) => (s.url(), s.token_url()),
        _ => unreachable!("one source simulator runs"),
    };
    let target = match (&servers.syslog, &servers.hec) {
        (Some(r), _) => r.address(),
        (_, Some(h)) => h.url(),
        _ => String::new(),
    };
    // On the disk (not tmpfs), so fdatasync and write_bytes mean what they say.
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).expect("temp dir");
    let sim_before = thread_ticks(SIM_THREAD);
    let rcv_before = thread_ticks(RCV_THREAD);
    let out = Command::new(std::env::current_exe().expect("own path"))
        .args([
            "--child",
            source.name(),
            sink.name(),
            &n.to_string(),
            &api,
            &token,
            &target,
        ])
        .arg(dir.path())
        .stderr(Stdio::inherit())
        .output()
        .expect("child runs");
    let sim_ticks = thread_ticks(SIM_THREAD).saturating_sub(sim_before);
    let rcv_ticks = thread_ticks(RCV_THREAD).saturating_sub(rcv_before);
    assert!(out.status.success(), "benchmark for {n} events failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .expect("child prints its result");
    let v: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse().expect("number"))
        .collect();
    let [secs, hwm_kib, write_bytes, child_ticks, record_bytes] = v[..] else {
        panic!("result line: {line}")
    };
    let all = (sim_ticks as f64 + rcv_ticks as f64 + child_ticks).max(1.0);
    println!(
        "{:>7} {:>6} {:>9} {:>8.1} {:>9.0} {:>6.1} MiB {:>12.0} {:>9.0} {:>7.1}% {:>7.1}%",
        source.name(),
        sink.name(),
        n,
        secs,
        n as f64 / secs,
        hwm_kib / 1024.0,
        write_bytes / n as f64,
        record_bytes,
        sim_ticks as f64 / all * 100.0,
        rcv_ticks as f64 / all * 100.0
    );
    let Servers {
        code42,
        sophos,
        syslog,
        hec,
    } = servers;
    rt.block_on(async move { drop((code42, sophos)) });
    rcv_rt.block_on(async move { drop((syslog, hec)) });
}

/// The child: secrelay alone. Prints `RESULT seconds peak_rss_kib write_bytes cpu_ticks
/// mean_record_bytes`.
fn child(args: &[String]) {
    let [source, sink, n, api, token, target, dir] = args else {
        panic!("child arguments: {args:?}")
    };
    let source = Source::parse(source).expect("source");
    let sink = SinkKind::parse(sink).expect("sink");
    let n: u64 = n.parse().expect("event count");
    let dir = Path::new(dir);
    let sink_text = match sink {
        SinkKind::File => format!(
            "type = \"file\"\npath = {:?}\nrotate_bytes = 4294967296\nbatch_size = 2000",
            dir.join("out.ndjson").display().to_string()
        ),
        SinkKind::Syslog => {
            format!("type = \"syslog\"\naddress = {target:?}\ntransport = \"tcp\"\nbatch_size = 2000\nhostname = \"bench\"")
        }
        SinkKind::Hec => format!(
            "type = \"splunk_hec\"\nurl = {target:?}\ntoken = {HEC_TOKEN:?}\ngzip = true\nbatch_size = 2000"
        ),
    };
    let source_text = match source {
        Source::Code42 => format!(
            "type = \"code42\"\nclient_id = \"key-42\"\nclient_secret = \"sim-code42-secret\"\n\
             api_url = {api:?}\nstreams = [\"file_events\"]\ninitial_lookback_hours = 24"
        ),
        Source::Sophos => format!(
            "type = \"sophos\"\nclient_id = \"sim-client\"\nclient_secret = \"sim-secret\"\n\
             token_url = {token:?}\napi_url = {api:?}\nstreams = [\"events\"]\n\
             initial_lookback_hours = 24\npage_size = 1000"
        ),
    };
    let text = format!(
        "[store]\npath = {store:?}\n[outbox]\nmax_bytes = 4294967296\n[backfill]\ndrain_timeout_secs = 900.0\n\
         [sinks.out]\n{sink_text}\n[sources.bench]\n{source_text}\nsinks = [\"out\"]\n",
        store = dir.join("state.db").display().to_string(),
    );
    let settings = Settings::from_toml(&text).expect("bench config");
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
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
    let delivered: u64 = summary.sinks.iter().map(|s| s.delivered).sum();
    assert_eq!(delivered, n, "every event delivered once");
    // Mean record size as the file sink wrote it (one NDJSON line per record).
    let record_bytes = match sink {
        SinkKind::File => {
            std::fs::metadata(dir.join("out.ndjson")).map_or(0, |m| m.len()) as f64 / n as f64
        }
        _ => 0.0,
    };
    println!(
        "RESULT {secs} {} {written} {} {record_bytes}",
        proc_status_kib("VmHWM:"),
        own_cpu_ticks()
    );
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
