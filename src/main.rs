//! The `secrelay` binary: command-line parsing, logging setup and exit codes only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use secrelay::app::{self, BackfillOptions, RunSummary};
use secrelay::settings::{LogFormat, Settings};
use secrelay::signals;

/// Exit status: configuration invalid.
const EXIT_CONFIG: u8 = 2;
/// Exit status: the command ran but did not finish its job (undelivered records, failed checks).
const EXIT_INCOMPLETE: u8 = 1;

/// Relays security events from vendor APIs to SIEM sinks, never lost, never duplicated in floods.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML), layered over the built-in defaults; SECRELAY__* variables override it.
    #[arg(long, short, global = true, env = "SECRELAY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: poll every source, deliver to every sink, until SIGTERM/SIGINT.
    Run,
    /// Catch up once, drain the outbox to the sinks, print a summary; exit 0 only if all was delivered.
    Backfill {
        /// Only this source id.
        #[arg(long)]
        source: Option<String>,
        /// Forget the stored cursors first, so history is pulled again (seen ids still drop repeats).
        #[arg(long)]
        reset: bool,
        /// With --reset: start N days back and forget the seen ids of those days, so they are sent again.
        #[arg(long, requires = "reset")]
        days: Option<u32>,
    },
    /// Validate the configuration, resolve secrets, reach every API and sink (moves no data).
    Check {
        /// Configuration, secrets, store and sink setup only: no network (systemd's ExecStartPre).
        #[arg(long)]
        offline: bool,
    },
    /// Show cursors, lag, errors, outbox backlog and dead letters.
    State {
        /// Machine-readable JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// List the records sinks rejected (dead letters), or re-queue them with `retry`.
    DeadLetters {
        /// Machine-readable JSON (with the records) instead of the table.
        #[arg(long, global = true)]
        json: bool,
        /// Only this sink's dead letters (listed, or re-queued: default every configured sink's).
        #[arg(long, global = true)]
        sink: Option<String>,
        #[command(subcommand)]
        action: Option<DeadLetterAction>,
    },
    /// The iTop tickets secrelay opened: list them with iTop's status, show, comment, resolve.
    Incidents {
        #[command(subcommand)]
        action: IncidentAction,
    },
    /// Ask a running daemon's health endpoint (exit 0 healthy, 1 not or unreachable); prints its answer.
    Health {
        /// The endpoint, e.g. http://127.0.0.1:9464/health (default: `metrics.listen` of the configuration).
        #[arg(long)]
        url: Option<String>,
    },
    /// Start the built-in vendor simulators and run the real pipeline into ./demo-out/.
    Demo {
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        seconds: Option<f64>,
        /// Output directory.
        #[arg(long, default_value = "demo-out")]
        out: PathBuf,
        /// Also run the iTop simulator and an iTop sink: Code42 sessions and high-severity alerts
        /// become tickets, logged to and resolved as the sessions change.
        #[arg(long)]
        itop: bool,
        /// Listen address (IP:PORT) of the metrics and health endpoint; default a free loopback port.
        #[arg(long)]
        metrics_listen: Option<String>,
    },
}

#[derive(Subcommand)]
enum DeadLetterAction {
    /// Send them again, each to the sink that rejected it only (by a running daemon, or the next
    /// run or backfill); rejected again, a record is a dead letter again.
    Retry,
}

#[derive(Subcommand)]
enum IncidentAction {
    /// Every ticket secrelay opened, newest first, joined with iTop's current status.
    List {
        /// Only those still open (in iTop when it answers, else as secrelay last left them).
        #[arg(long)]
        open: bool,
        /// Machine-readable JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// One ticket, by the vendor alert id or the iTop reference (e.g. I-000123).
    Show {
        /// Vendor alert id or ticket reference.
        key: String,
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add TEXT to the ticket's public log.
    Comment {
        /// Vendor alert id or ticket reference.
        key: String,
        /// The entry, plain text.
        text: String,
    },
    /// Resolve the ticket with its sink's resolve stimulus (assigning it first if configured).
    Resolve {
        /// Vendor alert id or ticket reference.
        key: String,
    },
}

/// Changes the log filter of a running process (SIGHUP re-reads `log.level`).
type LogFilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

fn init_logging(level: &str, format: LogFormat) -> LogFilterHandle {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let human = (format == LogFormat::Human).then(|| {
        tracing_subscriber::fmt::layer()
            // A backfill's progress block is erased first, so a log line never lands on it.
            .with_writer(app::progress::log_writer)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
    });
    // The event's fields at the top level; the partition or sink a line is about comes from the
    // span its task runs in (`span`: source, stream, tenant, or sink).
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            // A backfill's progress block is erased first, so a log line never lands on it.
            .with_writer(app::progress::log_writer)
            .with_target(false)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(human)
        .with(json)
        .init();
    handle
}

/// SIGHUP in `run`: re-reads the configuration and applies its `log.level` (unless `RUST_LOG` is
/// set, which wins as at start-up). Nothing else is reloaded: sources, sinks, routes and the store
/// keep the settings they started with (changing them safely needs a restart). A configuration
/// that no longer loads is logged and ignored.
fn reload_log_level(config: Option<&std::path::Path>, logs: &LogFilterHandle) {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing::info!("SIGHUP: RUST_LOG is set, so the log level stays as it is");
        return;
    }
    let level = match Settings::load(config) {
        Ok(settings) => settings.log.level,
        Err(e) => {
            tracing::warn!("SIGHUP: configuration not reloaded, it does not load: {e}");
            return;
        }
    };
    match tracing_subscriber::EnvFilter::try_new(&level) {
        Ok(filter) => match logs.reload(filter) {
            Ok(()) => tracing::info!(level = %level, "SIGHUP: log level reloaded"),
            Err(e) => tracing::warn!("SIGHUP: log level not reloaded: {e}"),
        },
        Err(e) => tracing::warn!("SIGHUP: log.level {level:?} is not a valid filter: {e}"),
    }
}

/// `secrelay health`: asks the endpoint at `url`, or the configured `metrics.listen`.
async fn health(config: Option<&std::path::Path>, url: Option<&str>) -> ExitCode {
    let url = match url {
        Some(url) => url.to_string(),
        None => {
            let settings = match Settings::load(config) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            if !settings.metrics.enabled {
                eprintln!("error: metrics.enabled is false, so the daemon serves no health endpoint; enable [metrics] or pass --url");
                return ExitCode::from(EXIT_INCOMPLETE);
            }
            health_url(&settings.metrics.listen)
        }
    };
    match secrelay::metrics::probe_health(&url).await {
        Ok(answer) => {
            print!("{}", answer.body);
            if answer.status == 200 {
                ExitCode::SUCCESS
            } else {
                eprintln!("unhealthy: {url} answered {}", answer.status);
                ExitCode::from(EXIT_INCOMPLETE)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_INCOMPLETE)
        }
    }
}

/// The URL of the health endpoint on `listen`; an unspecified address (all interfaces) is asked
/// on loopback.
fn health_url(listen: &str) -> String {
    let addr = match listen.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            let ip: std::net::IpAddr = if a.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            std::net::SocketAddr::new(ip, a.port()).to_string()
        }
        _ => listen.to_string(),
    };
    format!("http://{addr}/health")
}

fn print_summary(summary: &RunSummary) {
    println!(
        "{:<16} {:<18} {:<38} {:>10} {:>10}  STATUS",
        "SOURCE", "STREAM", "TENANT", "NEW", "REPEATS"
    );
    for p in &summary.partitions {
        let status = match (&p.error, p.caught_up) {
            (Some(e), _) => format!("FAILED: {e}"),
            (None, true) => "caught up".to_string(),
            (None, false) => "stopped".to_string(),
        };
        let tenant = if p.tenant.is_empty() { "-" } else { &p.tenant };
        println!(
            "{:<16} {:<18} {:<38} {:>10} {:>10}  {status}",
            p.source, p.stream, tenant, p.appended, p.duplicates
        );
    }
    println!(
        "{:<16} {:>10} {:>12} {:>10}  STATUS",
        "SINK", "DELIVERED", "DEAD LETTERS", "BACKLOG"
    );
    for s in &summary.sinks {
        let status = s
            .error
            .as_deref()
            .map_or("ok".to_string(), |e| format!("FAILED: {e}"));
        println!(
            "{:<16} {:>10} {:>12} {:>10}  {status}",
            s.sink, s.delivered, s.dead_letters, s.backlog
        );
    }
}

fn main() -> ExitCode {
    // Before the runtime's threads exist (see `allocator`).
    secrelay::allocator::tune_for_long_runs();
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Demo {
        seconds,
        out,
        itop,
        metrics_listen,
    } = &cli.command
    {
        return run_demo(*seconds, out, *itop, metrics_listen.clone()).await;
    }

    if let Command::Health { url } = &cli.command {
        return health(cli.config.as_deref(), url.as_deref()).await;
    }

    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let logs = init_logging(&settings.log.level, settings.log.format);
    let result: anyhow::Result<ExitCode> = async {
        match cli.command {
            Command::Run => {
                let config = cli.config.clone();
                let stop = signals::install_with_hangup(move || {
                    reload_log_level(config.as_deref(), &logs)
                })?;
                app::run(&settings, stop).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Backfill { source, reset, days } => {
                let stop = signals::install()?;
                let progress = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                    app::progress::ProgressStyle::Line
                } else {
                    app::progress::ProgressStyle::Log
                };
                let options = BackfillOptions {
                    source,
                    reset,
                    days,
                    progress,
                };
                let summary = app::backfill(&settings, &options, stop).await?;
                print!("{}", app::progress::summary_table(&summary));
                println!();
                print_summary(&summary);
                Ok(if summary.complete() {
                    ExitCode::SUCCESS
                } else {
                    eprintln!("backfill incomplete: see the summary above; undelivered records stay in the outbox");
                    ExitCode::from(EXIT_INCOMPLETE)
                })
            }
            Command::Check { offline } => {
                let results = if offline {
                    app::check_offline(&settings).await
                } else {
                    app::check(&settings).await
                };
                for r in &results {
                    println!("{:<4} {:<24} {}", if r.ok { "ok" } else { "FAIL" }, r.what, r.detail);
                }
                Ok(if results.iter().all(|r| r.ok) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(EXIT_INCOMPLETE)
                })
            }
            Command::State { json } => {
                let report = app::state(&settings).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{}", report.to_table());
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::DeadLetters { json, sink, action } => match action {
                None => {
                    let letters = app::dead_letters(&settings, sink.as_deref()).await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&letters)?);
                    } else {
                        print!("{}", app::dead_letters_table(&letters));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Some(DeadLetterAction::Retry) => {
                    let done = app::retry_dead_letters(&settings, sink.as_deref()).await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&done)?);
                    } else {
                        for r in &done {
                            println!("{:<16} {} re-queued", r.sink, r.records);
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
            },
            Command::Incidents { action } => incidents(&settings, action).await,
            Command::Demo { .. } | Command::Health { .. } => Ok(ExitCode::SUCCESS),
        }
    }
    .await;
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `secrelay incidents …`.
async fn incidents(settings: &Settings, action: IncidentAction) -> anyhow::Result<ExitCode> {
    use secrelay::app::incidents::{self, incident_detail, incidents_table};
    match action {
        IncidentAction::List { open, json } => {
            let list = incidents::list(settings, open).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", incidents_table(&list));
            }
        }
        IncidentAction::Show { key, json } => {
            let incident = incidents::show(settings, &key).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&incident)?);
            } else {
                print!("{}", incident_detail(&incident));
            }
        }
        IncidentAction::Comment { key, text } => {
            let incident = incidents::comment(settings, &key, &text).await?;
            println!("{}: comment added", incident.ticket.ticket_ref);
        }
        IncidentAction::Resolve { key } => {
            let incident = incidents::resolve(settings, &key).await?;
            println!(
                "{}: {}",
                incident.ticket.ticket_ref,
                incident.itop_status.as_deref().unwrap_or("resolved")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `secrelay demo`: the simulators and the real pipeline into `out`.
#[cfg(feature = "simulators")]
async fn run_demo(
    seconds: Option<f64>,
    out: &std::path::Path,
    itop: bool,
    metrics_listen: Option<String>,
) -> ExitCode {
    use secrelay::demo::{self, DemoOptions};
    let out = out.to_path_buf();
    let _logs = init_logging("info", LogFormat::Human);
    let stop = match signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = DemoOptions {
        seconds,
        out: out.clone(),
        itop,
        metrics_listen,
    };
    match demo::run(&options, stop).await {
        Ok(summary) => {
            print_summary(&summary);
            println!(
                "events are in {} (and {}, {})",
                out.join("events.ndjson").display(),
                out.join(secrelay::demo::SYSLOG_FILE).display(),
                out.join(secrelay::demo::HEC_FILE).display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `secrelay demo` in a build without the simulators: says so and fails.
#[cfg(not(feature = "simulators"))]
async fn run_demo(
    _seconds: Option<f64>,
    _out: &std::path::Path,
    _itop: bool,
    _metrics_listen: Option<String>,
) -> ExitCode {
    eprintln!(
        "error: this build of secrelay has no simulators (built without the cargo feature \
         `simulators`), so `secrelay demo` is not available; build with default features to use it"
    );
    ExitCode::FAILURE
}
