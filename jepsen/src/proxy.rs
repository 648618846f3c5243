//! Per-link TCP proxies. Every connection from node `i` to node `j` (peer and client ports) and
//! from the harness's clients to each node goes through a proxy the harness owns, so partitions,
//! one-way cuts and delay need no root.
//!
//! A link is directed: the link `i -> j` carries the connections node `i` opens to node `j` (both
//! ways of their bytes). Cutting it closes those connections and refuses new ones; a one-way cut
//! cuts `i -> j` and leaves `j -> i`. Delay holds each chunk of bytes for the link's delay in both
//! directions of its connections. Loss stalls a connection's bytes as TCP retransmission would
//! (a proxy cannot drop segments of a TCP stream; netem in a network namespace could, as root).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What a link lets through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkState {
    /// Connections are closed and refused.
    pub cut: bool,
    /// Added to every chunk of bytes, in milliseconds.
    pub delay_ms: u64,
    /// Percent of segments lost. TCP retransmits a lost segment after its retransmission
    /// timeout, so the application sees the stream stall: a lost chunk is held 200 ms (Linux's
    /// minimum RTO), doubling with each further loss in a row up to 3.2 s.
    pub loss_pct: u8,
}

/// One proxy: a listening address that forwards to `upstream` under a link's state.
pub struct Proxy {
    /// Where callers connect.
    pub listen: String,
    state: watch::Sender<LinkState>,
}

impl Proxy {
    /// Starts a proxy on a free port of 127.0.0.1 that forwards to `upstream`.
    pub async fn start(upstream: String) -> anyhow::Result<Arc<Proxy>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let listen = listener.local_addr()?.to_string();
        let (tx, rx) = watch::channel(LinkState::default());
        tokio::spawn(accept_loop(listener, upstream, rx));
        Ok(Arc::new(Proxy { listen, state: tx }))
    }

    /// Sets the link's state; a cut closes its open connections at once.
    pub fn set(&self, s: LinkState) {
        self.state.send_replace(s);
    }

    /// The link's state.
    pub fn get(&self) -> LinkState {
        *self.state.borrow()
    }
}

async fn accept_loop(listener: TcpListener, upstream: String, state: watch::Receiver<LinkState>) {
    loop {
        let Ok((down, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if state.borrow().cut {
            drop(down);
            continue;
        }
        let upstream = upstream.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(up) = TcpStream::connect(&upstream).await else { return };
            let _ = down.set_nodelay(true);
            let _ = up.set_nodelay(true);
            let (dr, dw) = down.into_split();
            let (ur, uw) = up.into_split();
            let a = tokio::spawn(pump(dr, uw, state.clone()));
            let b = tokio::spawn(pump(ur, dw, state));
            // When one direction ends, the other goes too.
            tokio::select! {
                _ = a => {}
                _ = b => {}
            }
        });
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<LinkState>,
) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::from_entropy();
    let mut lost_in_a_row = 0u32;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = state.changed() => {
                if changed.is_err() || state.borrow().cut {
                    return;
                }
                continue;
            }
        };
        let s = *state.borrow();
        if s.cut {
            return;
        }
        if s.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(s.delay_ms)).await;
        }
        while s.loss_pct > 0 && rng.gen_range(0..100u8) < s.loss_pct {
            tokio::time::sleep(retransmit_after(lost_in_a_row)).await;
            lost_in_a_row += 1;
        }
        lost_in_a_row = 0;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// How long TCP waits before resending a segment lost `lost_before` times in a row already.
fn retransmit_after(lost_before: u32) -> Duration {
    Duration::from_millis(200u64 << lost_before.min(4))
}

/// Which service a link reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Port {
    /// The peer port (Raft and internal calls).
    Peer,
    /// The client port (forwarded WorkflowService calls).
    Client,
}

/// Every proxy of a cluster: `(from, to, port)`; `from` 0 is the harness's clients.
#[derive(Default)]
pub struct Net {
    /// The proxies.
    pub links: BTreeMap<(u64, u64, Port), Arc<Proxy>>,
}

impl Net {
    /// Applies `f` to the state of every link between the two sets (both directions unless
    /// `one_way`, which touches only links from `a` to `b`). Client links (from 0) are never cut.
    pub fn between(&self, a: &[u64], b: &[u64], one_way: bool, f: impl Fn(&mut LinkState)) {
        for ((from, to, _), p) in &self.links {
            if *from == 0 {
                continue;
            }
            let hit = (a.contains(from) && b.contains(to)) || (!one_way && b.contains(from) && a.contains(to));
            if hit {
                let mut s = p.get();
                f(&mut s);
                p.set(s);
            }
        }
    }

    /// Every link back to normal.
    pub fn heal(&self) {
        for p in self.links.values() {
            p.set(LinkState::default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_segment_stalls_for_a_retransmission_timeout_that_backs_off() {
        assert_eq!(retransmit_after(0), Duration::from_millis(200));
        assert_eq!(retransmit_after(1), Duration::from_millis(400));
        assert_eq!(retransmit_after(9), Duration::from_millis(3_200));
    }

    #[tokio::test]
    async fn a_cut_closes_open_connections_and_refuses_new_ones_until_healed() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = echo.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut b = [0u8; 16];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let p = Proxy::start(addr).await.unwrap();
        let mut c = TcpStream::connect(&p.listen).await.unwrap();
        c.write_all(b"hi").await.unwrap();
        let mut b = [0u8; 2];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"hi");
        p.set(LinkState { cut: true, ..Default::default() });
        let n = tokio::time::timeout(Duration::from_secs(2), c.read(&mut b)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0, "the open connection was not closed");
        let mut d = TcpStream::connect(&p.listen).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(2), d.read(&mut b)).await.unwrap().unwrap_or(0);
        assert_eq!(n, 0, "a new connection was not refused");
        p.set(LinkState::default());
        let mut e = TcpStream::connect(&p.listen).await.unwrap();
        e.write_all(b"ok").await.unwrap();
        e.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ok");
    }
}
