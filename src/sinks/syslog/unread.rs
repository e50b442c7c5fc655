//! What a TCP/TLS syslog receiver is not yet known to have read: the bytes to send again should
//! the connection end before it proves it read them.
//!
//! Owns: the batches written on the current connection since it was opened or last confirmed,
//! oldest first. Must not: write, connect, close, or decide that a connection failed (the parent,
//! `connection` and `liveness` do).
//!
//! Invariant: every byte written on the current connection is held here until the receiver has
//! closed it in order after reading to our end, or until it is taken to be sent again (a failed
//! write, a reset, a close that failed or went unanswered, or a new connection opened while bytes
//! are still held). The parent lets go without such a close in two cases only, each logged: a
//! receiver that closed in order long after our last write (it read everything), and the end of a
//! run. Plain syslog has no receipt, and a receiver's kernel acknowledges bytes its process never
//! reads: rsyslog stops reading at a SIGTERM and closes a moment later, and the bytes that
//! arrived meanwhile die in the reset. The sender cannot see how much that is: Linux advertises a
//! receive window below its free buffer (by up to megabytes), so unread bytes need not shrink it.
//! An earlier estimate from the window let such a batch go: 4 of 45 runs of
//! `a_receiver_restarted_five_times_during_delivery_gets_every_record` lost one (`/proc/net/tcp`
//! showed two batches unread at the reset, one held).
//!
//! Memory: here at most `confirm_after_bytes` plus one batch; with what waits to be sent again and
//! what the connection being closed carried, the parent holds at most 4 × `confirm_after_bytes`
//! + 1 MiB + one batch before it refuses new batches.

/// Batches written on the current connection that the receiver has not yet shown it read.
#[derive(Default)]
pub(super) struct Unconfirmed {
    batches: Vec<Vec<u8>>,
    /// Total length of `batches`.
    bytes: usize,
}

impl Unconfirmed {
    /// `batches` were written and flushed on the current connection, in this order: holds them.
    pub(super) fn written(&mut self, batches: impl IntoIterator<Item = Vec<u8>>) {
        for bytes in batches.into_iter().filter(|b| !b.is_empty()) {
            self.bytes += bytes.len();
            self.batches.push(bytes);
        }
    }

    /// Everything held, oldest first, as one buffer; nothing is held afterwards.
    pub(super) fn take(&mut self) -> Vec<u8> {
        if self.batches.len() == 1 {
            self.bytes = 0;
            return self.batches.pop().unwrap_or_default();
        }
        let mut all = Vec::with_capacity(self.bytes);
        for batch in self.batches.drain(..) {
            all.extend_from_slice(&batch);
        }
        self.bytes = 0;
        all
    }

    /// Lets go of everything: the receiver read it all (it closed in order after our end), or a
    /// new connection starts with nothing written on it.
    pub(super) fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
    }

    /// How many bytes are held.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_written_is_held_in_order_until_taken() {
        let mut held = Unconfirmed::default();
        held.written([b"one ".to_vec(), Vec::new(), b"two ".to_vec()]);
        held.written([b"three".to_vec()]);
        assert_eq!(held.bytes(), 13);
        assert_eq!(held.take(), b"one two three");
        assert_eq!(held.bytes(), 0);
        assert!(held.take().is_empty());
    }

    #[test]
    fn a_single_batch_is_taken_whole() {
        let mut held = Unconfirmed::default();
        held.written([b"only".to_vec()]);
        assert_eq!(held.take(), b"only");
        assert_eq!(held.bytes(), 0);
    }

    #[test]
    fn a_confirmed_connection_holds_nothing() {
        let mut held = Unconfirmed::default();
        held.written([b"read".to_vec(), b"all".to_vec()]);
        held.clear();
        assert_eq!(held.bytes(), 0);
        assert!(held.take().is_empty());
    }
}
