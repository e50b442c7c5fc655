//! systemd service notifications (`sd_notify`): `READY=1`, `STOPPING=1` and `WATCHDOG=1`, sent as
//! one unix datagram each to the socket named by `$NOTIFY_SOCKET` (a path, or `@name` for Linux's
//! abstract namespace).
//!
//! Owns: reading `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`, and the wire format (one
//! `KEY=VALUE` line per datagram). Must not: decide when the daemon is ready or stopping (`app::run`
//! does) or fail the daemon: outside systemd (no `NOTIFY_SOCKET`) every call is a no-op, and a send
//! that fails is logged once per call at debug level and otherwise ignored — a notification is a
//! courtesy to the service manager, never a reason to stop relaying events.

use std::io;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The states secrelay reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// `READY=1`: start-up finished (store open, sources and sinks scheduled).
    Ready,
    /// `STOPPING=1`: a graceful stop began (sinks are flushing within the grace period).
    Stopping,
    /// `WATCHDOG=1`: still alive; systemd restarts the service when these stop for `WatchdogSec=`.
    Watchdog,
}

impl State {
    /// The datagram's text.
    pub fn message(self) -> &'static str {
        match self {
            State::Ready => "READY=1",
            State::Stopping => "STOPPING=1",
            State::Watchdog => "WATCHDOG=1",
        }
    }
}

/// Sends `state` to `$NOTIFY_SOCKET`; does nothing when it is unset (not started by systemd with
/// `Type=notify`). Errors are logged at debug level only.
pub fn notify(state: State) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_to(&socket.to_string_lossy(), state.message()) {
        tracing::debug!("cannot notify systemd ({}): {e}", state.message());
    }
}

/// Sends `message` as one datagram to `socket`: a filesystem path, or `@name` for the abstract
/// namespace (Linux).
pub fn send_to(socket: &str, message: &str) -> io::Result<()> {
    let sender = std::os::unix::net::UnixDatagram::unbound()?;
    if let Some(name) = socket.strip_prefix('@') {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            #[cfg(target_os = "android")]
            use std::os::android::net::SocketAddrExt;
            #[cfg(target_os = "linux")]
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sender.send_to_addr(message.as_bytes(), &address)?;
            return Ok(());
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let _ = name;
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "abstract unix sockets exist on Linux only",
            ));
        }
    }
    if socket.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is empty",
        ));
    }
    sender.send_to(message.as_bytes(), socket)?;
    Ok(())
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, as systemd recommends, when it is set
/// and `WATCHDOG_PID` is unset or this process. `None`: no watchdog asked of us.
pub fn watchdog_interval() -> Option<Duration> {
    interval_for(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// [`watchdog_interval`] from the variables' values, for a process `pid`.
fn interval_for(usec: Option<&str>, watchdog_pid: Option<&str>, pid: u32) -> Option<Duration> {
    if let Some(for_pid) = watchdog_pid {
        if for_pid.trim().parse::<u32>().ok() != Some(pid) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

/// Sends `WATCHDOG=1` every [`watchdog_interval`] until `done` is cancelled; returns at once when
/// no watchdog is asked of us. Keeps pinging through a graceful stop: systemd still watches then.
pub async fn watchdog(done: CancellationToken) {
    let Some(every) = watchdog_interval() else {
        return;
    };
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = ticks.tick() => notify(State::Watchdog),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_one_datagram_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        send_to(path.to_str().unwrap(), "READY=1").unwrap();
        assert_eq!(receive(&socket), "READY=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_at_sign_names_the_abstract_namespace() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("secrelay-notify-test-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&address).unwrap();
        send_to(&format!("@{name}"), "STOPPING=1").unwrap();
        assert_eq!(receive(&socket), "STOPPING=1");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        assert!(send_to(dir.path().join("absent").to_str().unwrap(), "READY=1").is_err());
        assert!(send_to("", "READY=1").is_err());
    }

    #[test]
    fn watchdog_pings_at_half_the_timeout_and_only_for_our_pid() {
        assert_eq!(
            interval_for(Some("10000000"), None, 42),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            interval_for(Some("10000000"), Some("42"), 42),
            Some(Duration::from_secs(5))
        );
        assert_eq!(interval_for(Some("10000000"), Some("43"), 42), None);
        assert_eq!(interval_for(None, None, 42), None);
        assert_eq!(interval_for(Some("0"), None, 42), None);
        assert_eq!(interval_for(Some("soon"), None, 42), None);
    }
}
