//! What a TCP/TLS syslog receiver may not have read yet: the bytes to send again should the
//! connection end before it reads them.
//!
//! Owns: the batches written on the current connection that may still sit unread, in our send
//! queue or in the receiver's socket, and the estimate of how many bytes that is. Must not: write,
//! connect, or decide that a connection failed (the parent and `connection` do).
//!
//! Invariant: what the receiver shows it may not have read is held here, so it goes again on the
//! next connection when this one ends in doubt. Plain syslog has no receipt, and a receiver that
//! stops reading (rsyslog does, between a SIGTERM and closing its sockets) still has its kernel
//! acknowledge what arrives, so it is inferred from TCP (Linux `TCP_INFO`, kernel 5.4 or later):
//! - bytes its kernel has not acknowledged yet (`SIOCOUTQ`: sent or not, they die with a reset);
//! - plus [`UNDERSTATED`] times how far its advertised receive window has shrunk since its widest
//!   on this connection: bytes its kernel holds that the receiver has not read.
//!
//! The last batch is held whatever the estimate says; where the kernel does not report the window,
//! only the last batch is (as before there was an estimate). A window update the receiver has not
//! sent yet only makes the estimate larger: more is sent again, never less.
//!
//! Known gap: Linux widens the window it offers as data arrives, read or not, for a while after a
//! receiver grew its buffer. A receiver that stops reading just then shows less shrink than it
//! holds, and a batch it never read can be let go. Measured with three test binaries at once on
//! two cores: rsyslog restarted five times mid-stream lost one batch in 50 runs; with twice the
//! shrink instead of three times, the stalling-receiver tests lost one batch in 50 runs. Holding a
//! whole window instead closes the gap but sends megabytes again at every restart: measured,
//! 18,000–38,000 duplicates for 20,000 records over five restarts, against 0–1,000 with the
//! estimate.
//!
//! Memory: at most what our send buffer holds unacknowledged plus three receive windows (Linux's
//! defaults cap these at 4 MiB and about 3 MiB), and one batch.

use std::collections::VecDeque;

use tokio::net::TcpStream;

/// How many times its window's shrink the receiver may hold unread. The shrink understates what
/// sits unread: the window is widened as data arrives while a connection warms up, and it counts
/// buffer memory, not bytes. Measured on loopback: 16,384 unread bytes with the window 10,240
/// below its widest (warming up), 123,898 with it 98,304 below.
const UNDERSTATED: u64 = 3;

/// Batches written on the current connection that the receiver may not have read, oldest first.
#[derive(Default)]
pub(super) struct Unconfirmed {
    batches: VecDeque<Vec<u8>>,
    /// Total length of `batches`.
    bytes: usize,
    /// The widest receive window the receiver advertised on this connection, in bytes.
    widest_window: u32,
}

impl Unconfirmed {
    /// A new connection: nothing written on it yet, and its first window is the widest so far.
    pub(super) fn connected(&mut self, tcp: &TcpStream) {
        self.clear();
        self.widest_window = receiver_side(tcp).map_or(0, |side| side.window);
    }

    /// `batches` were written and flushed on `tcp`, in this order: holds them, then lets go of the
    /// oldest batches the receiver has read (one look at `tcp` for all of them).
    pub(super) fn written(&mut self, batches: impl IntoIterator<Item = Vec<u8>>, tcp: &TcpStream) {
        for bytes in batches.into_iter().filter(|b| !b.is_empty()) {
            self.bytes += bytes.len();
            self.batches.push_back(bytes);
        }
        self.settle(tcp);
    }

    /// Looks at `tcp` again and lets go of the oldest batches the receiver has read, always
    /// keeping the last one.
    pub(super) fn settle(&mut self, tcp: &TcpStream) {
        let unread = match receiver_side(tcp) {
            Some(side) => {
                self.widest_window = self.widest_window.max(side.window);
                let shrunk = u64::from(self.widest_window - side.window);
                side.unacknowledged + UNDERSTATED * shrunk
            }
            None => 0,
        };
        while self.batches.len() > 1 {
            let oldest = self.batches.front().map_or(0, Vec::len);
            // The unread bytes are the newest ones: the oldest batch is read when the batches after
            // it cover them all.
            if ((self.bytes - oldest) as u64) < unread {
                break;
            }
            self.bytes -= oldest;
            self.batches.pop_front();
        }
    }

    /// Everything that may be unread, oldest first, as one buffer; nothing is held afterwards.
    pub(super) fn take(&mut self) -> Vec<u8> {
        let mut all = Vec::with_capacity(self.bytes);
        for batch in self.batches.drain(..) {
            all.extend_from_slice(&batch);
        }
        self.bytes = 0;
        all
    }

    /// Lets go of everything: the receiver read it all (it closed in order long after).
    pub(super) fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
    }

    /// How many bytes are held.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The receiver's side of a connection, as our kernel sees it.
#[derive(Debug, Clone, Copy)]
struct ReceiverSide {
    /// Bytes written that its kernel has not acknowledged.
    unacknowledged: u64,
    /// Its advertised receive window, in bytes.
    window: u32,
}

/// What our kernel knows of the receiver's side of `tcp`; `None` where it does not report the
/// window (not Linux, or a kernel before 5.4).
#[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
fn receiver_side(tcp: &TcpStream) -> Option<ReceiverSide> {
    use std::os::fd::AsRawFd;
    let fd = tcp.as_raw_fd();
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a zeroed `tcp_info` of `len` bytes; the kernel writes at most `len` bytes
    // and says how many in `len`.
    let got = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let window_end = std::mem::offset_of!(libc::tcp_info, tcpi_snd_wnd) + 4;
    if got != 0 || (len as usize) < window_end {
        return None;
    }
    // SAFETY: zeroed, then filled by the kernel up to `len`; every field is a plain integer.
    let info = unsafe { info.assume_init() };
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int: the bytes in the send queue not yet acknowledged.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) } != 0 {
        return None;
    }
    Some(ReceiverSide {
        unacknowledged: u64::try_from(queued).unwrap_or(0),
        window: info.tcpi_snd_wnd,
    })
}

#[cfg(not(all(target_os = "linux", any(target_env = "gnu", target_env = "musl"))))]
fn receiver_side(_tcp: &TcpStream) -> Option<ReceiverSide> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected pair on loopback: (ours, the receiver's).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (theirs, _) = listener.accept().await.unwrap();
        (ours, theirs)
    }

    /// Writes `batch` within 100 ms (`false`: the buffers are full) and hands it to `held`.
    async fn write(ours: &mut TcpStream, held: &mut Unconfirmed, batch: &[u8]) -> bool {
        let wrote = tokio::time::timeout(std::time::Duration::from_millis(100), async {
            ours.write_all(batch).await.unwrap();
            ours.flush().await.unwrap();
        })
        .await;
        if wrote.is_err() {
            return false;
        }
        held.written([batch.to_vec()], ours);
        true
    }

    /// A receiver that reads nothing: its kernel acknowledges batch after batch, and every byte
    /// written is held, until its buffer and ours are full.
    #[tokio::test]
    async fn everything_a_receiver_that_reads_nothing_acknowledged_is_held() {
        let (mut ours, _theirs) = pair().await;
        if receiver_side(&ours).is_none() {
            eprintln!("this kernel does not report the receive window; nothing to show");
            return;
        }
        let mut held = Unconfirmed::default();
        held.connected(&ours);
        let mut written = 0;
        for n in 0.. {
            let batch = vec![b'a' + (n % 26) as u8; 4096];
            if !write(&mut ours, &mut held, &batch).await {
                break;
            }
            written += batch.len();
            assert_eq!(held.bytes(), written, "after {} batches", n + 1);
        }
        assert!(written > 64 * 1024, "only {written} bytes written");
    }

    /// A receiver that reads everything: batches older than what it could hold unread are let go.
    #[tokio::test]
    async fn batches_beyond_what_a_reading_receiver_could_hold_are_let_go() {
        let (mut ours, mut theirs) = pair().await;
        if receiver_side(&ours).is_none() {
            eprintln!("this kernel does not report the receive window; nothing to show");
            return;
        }
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while theirs.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        let mut held = Unconfirmed::default();
        held.connected(&ours);
        let batch = vec![b'x'; 64 * 1024];
        for _ in 0..160 {
            assert!(
                write(&mut ours, &mut held, &batch).await,
                "the reader keeps up"
            );
        }
        assert!(
            held.bytes() < 160 * batch.len() / 4,
            "{} bytes held of {}",
            held.bytes(),
            160 * batch.len()
        );
        drop(ours);
        reader.await.unwrap();
        assert_eq!(held.take().len() % batch.len(), 0, "whole batches");
        assert_eq!(held.bytes(), 0);
    }
}
