//! A real rsyslog (Debian's package; the test command installs it) listening on loopback: UDP,
//! TCP (octet counting and LF framing, auto-detected) and TLS, writing each message it receives,
//! unmodified (`%rawmsg%`), one per line to a file per input.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tls::Pki;

/// A running rsyslogd. Killed on drop.
pub struct Rsyslog {
    child: Child,
    dir: PathBuf,
    /// UDP port.
    pub udp: u16,
    /// TCP port (both framings).
    pub tcp: u16,
    /// TLS port (when started with a PKI).
    pub tls: u16,
}

fn free_port() -> u16 {
    // Free for both TCP and UDP at the moment of asking; rsyslog binds it right after.
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Rsyslog {
    /// Starts rsyslogd with its files under `dir`; with `pki`, a TLS input using its server
    /// certificate.
    pub fn start(dir: &Path, pki: Option<&Pki>) -> Rsyslog {
        Self::start_on(dir, pki, (free_port(), free_port(), free_port()))
    }

    /// Starts rsyslogd on the given (udp, tcp, tls) ports, e.g. those of one that was stopped.
    pub fn start_on(dir: &Path, pki: Option<&Pki>, (udp, tcp, tls): (u16, u16, u16)) -> Rsyslog {
        let tls_global = pki
            .map(|p| {
                format!(
                    "DefaultNetstreamDriverCAFile=\"{}\" DefaultNetstreamDriverCertFile=\"{}\" DefaultNetstreamDriverKeyFile=\"{}\"",
                    p.ca.display(),
                    p.server_cert.display(),
                    p.server_key.display()
                )
            })
            .unwrap_or_default();
        let tls_input = if pki.is_some() {
            format!(
                "input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{tls}\" ruleset=\"tls\" streamDriver.name=\"gtls\" streamDriver.mode=\"1\" streamDriver.authMode=\"anon\")"
            )
        } else {
            String::new()
        };
        let d = dir.display();
        let conf = format!(
            r#"
global(workDirectory="{d}" maxMessageSize="64k" parser.escapeControlCharactersOnReceive="off" {tls_global})
module(load="imudp")
module(load="imtcp")
template(name="raw" type="string" string="%rawmsg%\n")
ruleset(name="udp") {{ action(type="omfile" file="{d}/udp.log" template="raw") }}
ruleset(name="tcp") {{ action(type="omfile" file="{d}/tcp.log" template="raw") }}
ruleset(name="tls") {{ action(type="omfile" file="{d}/tls.log" template="raw") }}
input(type="imudp" address="127.0.0.1" port="{udp}" ruleset="udp")
input(type="imtcp" address="127.0.0.1" port="{tcp}" ruleset="tcp")
{tls_input}
"#
        );
        let conf_path = dir.join("rsyslog.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(&conf_path)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("rsyslogd.stderr")).unwrap())
            .spawn()
            .expect("rsyslogd runs (the test command installs rsyslog and rsyslog-gnutls)");
        let receiver = Rsyslog {
            child,
            dir: dir.to_path_buf(),
            udp,
            tcp,
            tls,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut ports = vec![tcp];
        if pki.is_some() {
            ports.push(tls);
        }
        for port in ports {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                let stderr =
                    std::fs::read_to_string(dir.join("rsyslogd.stderr")).unwrap_or_default();
                assert!(
                    Instant::now() < deadline,
                    "rsyslogd did not listen on {port}: {stderr}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // UDP has no handshake to wait for; imudp is up once the TCP inputs are.
        std::thread::sleep(Duration::from_millis(200));
        receiver
    }

    /// What `input` (`udp`, `tcp`, `tls`) has written so far, one message per line.
    pub fn received(&self, input: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.join(format!("{input}.log")))
            .map(|t| t.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// Waits until imudp takes datagrams (it has no handshake to wait for at start, and a busy
    /// machine starts it late), sending probe messages until one is written; returns how many
    /// lines the UDP file then has.
    pub async fn udp_ready(&self) -> usize {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            socket
                .send_to(b"<14>1 - - - - - - udp probe", ("127.0.0.1", self.udp))
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            let got = self.received("udp");
            if got.iter().any(|line| line.ends_with("udp probe")) {
                return got.len();
            }
            assert!(Instant::now() < deadline, "imudp took no datagram in 10 s");
        }
    }

    /// Waits until `input` has `count` messages (or fails after 10 s), and returns them.
    pub async fn wait_for(&self, input: &str, count: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.received(input);
            if got.len() >= count {
                return got;
            }
            if Instant::now() > deadline {
                let stderr =
                    std::fs::read_to_string(self.dir.join("rsyslogd.stderr")).unwrap_or_default();
                panic!(
                    "{input}: {} of {count} messages after 10 s; rsyslogd said: {stderr}",
                    got.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Rsyslog {
    /// Stops it as an operator's restart does (SIGTERM: rsyslog closes its inputs and writes what it
    /// has queued) and waits until it has exited, so a new one can bind the same ports.
    pub fn terminate(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }

    /// The (udp, tcp, tls) ports, to start another one on.
    pub fn ports(&self) -> (u16, u16, u16) {
        (self.udp, self.tcp, self.tls)
    }

    /// Where its files are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
