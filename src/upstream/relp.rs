//! The RELP client side of a backend connection (`protocol = "relp"` on a
//! pool). After `open` (offering `commands=syslog`) each frame goes out as
//! a `syslog` command; at most `relp-window` are unanswered at once. A
//! frame settles on the backend's `rsp 200` for its transaction number
//! (answers come in command order; another order is taken too, as
//! librelp's client does). A refusal (any other code) marks the backend
//! down and sends the frame, and what waits behind it, to another backend;
//! a connection that ends with frames unanswered hands them all back, to be
//! sent again (counted in `auditlb_relp_resent_total`: the backend may have
//! taken some of them, so the receivers may see duplicates, never a loss).
//!
//! The dispatcher's channel is always read, whatever the window: frames
//! beyond it wait here (charged to this connection's `queue-bytes` like
//! any in flight), so a slow or hung backend never holds up the
//! dispatcher and with it the other backends. The connection counts as
//! connected only once `open` is answered.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{End, Upstream};
use crate::frame::Frame;
use crate::relp::{self, Command};

/// Longest answer data taken from a backend (an `rsp` is a status line and,
/// for `open`, the offers).
const MAX_RSP: usize = 64 * 1024;
/// How often the answer deadline is looked at.
const TICK: Duration = Duration::from_millis(100);
/// How long a closing connection waits for the answer to `close`.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Sends one command and reads the next frame the server sends.
pub(crate) async fn exchange<R, W>(
    rd: &mut R,
    wr: &mut W,
    dec: &mut relp::Decoder,
    buf: &mut BytesMut,
    txnr: u32,
    command: &str,
    data: &[u8],
) -> std::io::Result<relp::Frame>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out = Vec::new();
    relp::encode(txnr, command, data, &mut out);
    wr.write_all(&out).await?;
    wr.flush().await?;
    loop {
        if let Some(f) = dec.decode(buf).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not RELP: {e}"))
        })? {
            return Ok(f);
        }
        if rd.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Whether `f` answers our `open` (txnr 1) with 200 and the `syslog`
/// command; else why not.
pub(crate) fn check_open(f: &relp::Frame) -> Result<(), String> {
    let rsp = (f.command == Command::Rsp && f.txnr == 1)
        .then(|| relp::parse_rsp(&f.data))
        .flatten();
    match rsp {
        Some(r) if r.ok() && relp::offers_syslog(r.cmd_data) => Ok(()),
        Some(r) if r.ok() => Err("the RELP server does not offer the syslog command".into()),
        Some(r) => Err(format!(
            "RELP open refused: {} {}",
            r.code,
            String::from_utf8_lossy(r.text)
        )),
        None => Err(format!(
            "unexpected answer to RELP open: {}",
            f.command.name()
        )),
    }
}

fn failed(reason: String) -> End {
    End::Failed {
        reason,
        clean: false,
    }
}

impl Upstream {
    /// Serves one open connection as a RELP client.
    pub(super) async fn serve_relp<R, W>(
        &mut self,
        mut rd: R,
        mut wr: W,
        window: usize,
        abort: &CancellationToken,
    ) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut dec = relp::Decoder::new(MAX_RSP);
        let mut rbuf = BytesMut::with_capacity(4096);
        let mut out = Vec::new();
        // Open, within connect-timeout.
        let limit = self.settings.connect_timeout;
        let offers = relp::offers();
        let opened = tokio::time::timeout(
            limit,
            exchange(&mut rd, &mut wr, &mut dec, &mut rbuf, 1, "open", &offers),
        );
        // Not ready for frames until the session is open.
        self.shared.connected.store(false, Ordering::Release);
        let f = tokio::select! {
            _ = abort.cancelled() => return End::Aborted,
            r = opened => match r {
                Err(_) => return failed(format!("no answer to RELP open within {limit:?}")),
                Ok(Err(e)) => return failed(format!("RELP open: {e}")),
                Ok(Ok(f)) => f,
            },
        };
        if let Err(why) = check_open(&f) {
            return failed(why);
        }
        tracing::debug!(backend = %self.backend.addr, "RELP session open");
        self.shared.connected.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        // Anything that came with the answer to open.
        if !rbuf.is_empty() {
            if let Err(end) = self.answers(&mut dec, &mut rbuf) {
                return end;
            }
        }
        let mut txnr = relp::next_txnr(1);
        let mut tick = tokio::time::interval(TICK);
        self.last_progress = Instant::now();
        loop {
            if self.input_closed && self.fifo.is_empty() && self.waiting.is_empty() {
                self.close(&mut rd, &mut wr, &mut dec, &mut rbuf, txnr)
                    .await;
                return End::Done;
            }
            // Send what the window allows.
            if !self.waiting.is_empty() && self.fifo.len() < window {
                out.clear();
                let mut n = 0u64;
                let was_idle = self.fifo.is_empty();
                while self.fifo.len() < window {
                    let Some(f) = self.waiting.pop_front() else {
                        break;
                    };
                    relp::encode(txnr, "syslog", &f.data, &mut out);
                    self.fifo.push_back((u64::from(txnr), f));
                    txnr = relp::next_txnr(txnr);
                    n += 1;
                }
                self.note_oldest();
                let write = async {
                    wr.write_all(&out).await?;
                    wr.flush().await
                };
                let r = tokio::select! {
                    _ = abort.cancelled() => return End::Aborted,
                    r = tokio::time::timeout(self.settings.tcp_user_timeout, write) => r,
                };
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return failed(format!("write: {e}")),
                    Err(_) => {
                        return failed(format!(
                            "write blocked for {:?}",
                            self.settings.tcp_user_timeout
                        ))
                    }
                }
                if was_idle {
                    // Nothing was outstanding: the answer clock starts
                    // once the messages are out.
                    self.last_progress = Instant::now();
                }
                self.backend.metrics.frames_out.inc_by(n);
                self.backend.metrics.bytes_out.inc_by(out.len() as u64);
            }
            let take_more = !self.input_closed;
            tokio::select! {
                biased;
                _ = abort.cancelled() => return End::Aborted,
                r = rd.read_buf(&mut rbuf) => match r {
                    Ok(0) => return failed("backend closed the connection".into()),
                    Ok(_) => {
                        if let Err(end) = self.answers(&mut dec, &mut rbuf) {
                            return end;
                        }
                    }
                    Err(e) => return failed(format!("read: {e}")),
                },
                b = self.rx.recv(), if take_more => match b {
                    Some(batch) => self.waiting.extend(batch),
                    None => self.input_closed = true,
                },
                _ = tick.tick(), if !self.fifo.is_empty() => {
                    if self.last_progress.elapsed() >= self.settings.tcp_user_timeout {
                        return failed(format!(
                            "no RELP answer for {:?}",
                            self.settings.tcp_user_timeout
                        ));
                    }
                }
            }
        }
    }

    /// Takes every answer in `rbuf`: settles what the backend acknowledged,
    /// hands back what it refused.
    fn answers(&mut self, dec: &mut relp::Decoder, rbuf: &mut BytesMut) -> Result<(), End> {
        let mut acked = 0u64;
        let mut acked_bytes = 0u64;
        let mut refused: Vec<Frame> = Vec::new();
        let mut refusal = String::new();
        self.settled_seqs.clear();
        let r = loop {
            let f = match dec.decode(rbuf) {
                Ok(Some(f)) => f,
                Ok(None) => break Ok(()),
                Err(e) => break Err(failed(format!("backend sent something not RELP: {e}"))),
            };
            match f.command {
                Command::Rsp => {}
                Command::ServerClose => {
                    break Err(failed(
                        "backend closes the RELP session (serverclose)".into(),
                    ))
                }
                other => {
                    break Err(failed(format!(
                        "backend sent a {} command to a RELP client",
                        other.name()
                    )))
                }
            }
            // Answers come in command order; another order is taken too
            // (the front is the usual case).
            let Some(at) = self.fifo.iter().position(|(t, _)| *t == u64::from(f.txnr)) else {
                break Err(failed(format!(
                    "RELP answer for transaction {}, which is not outstanding",
                    f.txnr
                )));
            };
            let (_, frame) = self.fifo.remove(at).expect("position found");
            match relp::parse_rsp(&f.data) {
                Some(r) if r.ok() => {
                    acked += 1;
                    acked_bytes += frame.len() as u64;
                    if frame.seq > 0 {
                        self.settled_seqs.push(frame.seq);
                    }
                }
                Some(r) => {
                    if refusal.is_empty() {
                        refusal = format!("{} {}", r.code, String::from_utf8_lossy(r.text));
                    }
                    refused.push(frame);
                }
                None => {
                    self.fifo.insert(at, (u64::from(f.txnr), frame));
                    break Err(failed("backend sent an rsp without a status code".into()));
                }
            }
        };
        if acked > 0 {
            self.last_progress = Instant::now();
            self.handback
                .settled(self.backend.index as u32, &self.settled_seqs);
            self.backend.metrics.settled.inc_by(acked);
            self.backend.metrics.relp_acks.inc_by(acked);
            self.backend.sub_pending(acked_bytes);
            self.shared.release(acked_bytes);
        }
        if !refused.is_empty() {
            self.last_progress = Instant::now();
            let n = refused.len() as u64;
            self.backend.metrics.relp_nacks.inc_by(n);
            self.settings.metrics.relp_resent.inc_by(n);
            // What waits to be sent goes elsewhere too: the backend is down.
            refused.extend(self.waiting.drain(..));
            let bytes: u64 = refused.iter().map(|f| f.len() as u64).sum();
            self.settings
                .metrics
                .redispatched
                .inc_by(refused.len() as u64);
            if let Some(skipped) = self.warn_limit.allow() {
                tracing::warn!(pool = %self.backend.pool, backend = %self.backend.addr, frames = n, answer = %refusal, skipped, "backend refused RELP messages; routing them again (to another backend while there is one)");
            }
            self.backend
                .passive_failure(&format!("refused RELP messages ({refusal})"));
            self.backend.sub_pending(bytes);
            self.handback
                .push_refused(self.backend.index as u32, refused);
            self.shared.release(bytes);
        }
        if self.fifo.is_empty() {
            self.last_progress = Instant::now();
        }
        self.note_oldest();
        r
    }

    /// Everything is settled and the dispatcher is gone: `close`, its
    /// answer (briefly), then the socket.
    async fn close<R, W>(
        &mut self,
        rd: &mut R,
        wr: &mut W,
        dec: &mut relp::Decoder,
        rbuf: &mut BytesMut,
        txnr: u32,
    ) where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut out = Vec::new();
        relp::encode(txnr, "close", b"", &mut out);
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            wr.write_all(&out).await?;
            wr.flush().await?;
            loop {
                if let Ok(Some(f)) = dec.decode(rbuf) {
                    if f.command == Command::Rsp && f.txnr == txnr {
                        break;
                    }
                    continue;
                }
                if rd.read_buf(rbuf).await? == 0 {
                    break;
                }
            }
            wr.shutdown().await
        })
        .await;
    }
}
