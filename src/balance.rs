//! Backend selection for one pool: weighted round robin, least pending,
//! consistent hashing and connection stickiness, with backup tiers. Pure
//! logic over a snapshot of which backends are available; owned and called
//! by the pool's dispatcher, once per frame.
//!
//! Tiers: primaries take every frame while any of them is available; backups
//! only while none is.

use std::net::IpAddr;

use crate::config::{Balance, HashKey};
use crate::frame::{Frame, NO_BACKEND};
use crate::syslog;

/// Ring points per unit of weight for consistent hashing.
const VNODES_PER_WEIGHT: u32 = 160;

/// What the selector needs to know of each backend, fixed for its life.
#[derive(Debug, Clone)]
pub struct Member {
    /// Stable identity on the hash ring (the backend address).
    pub name: String,
    pub weight: u32,
    pub backup: bool,
}

/// The live part of a decision: per backend, can it take frames now, and how
/// many bytes are pending on it.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub avail: &'a [bool],
    pub pending: &'a [u64],
}

/// A consistent-hash ring of (point, backend index), sorted by point.
#[derive(Debug, Default)]
struct Ring {
    points: Vec<(u64, usize)>,
}

impl Ring {
    fn new(members: &[Member], backup: bool) -> Self {
        let mut points = Vec::new();
        for (i, m) in members.iter().enumerate() {
            if m.backup != backup {
                continue;
            }
            for v in 0..m.weight.saturating_mul(VNODES_PER_WEIGHT) {
                let mut key = m.name.clone().into_bytes();
                key.push(b'#');
                key.extend_from_slice(v.to_string().as_bytes());
                points.push((hash64(&key), i));
            }
        }
        points.sort_unstable();
        Self { points }
    }

    /// First eligible backend clockwise from `h`.
    fn lookup(&self, h: u64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|&(p, _)| p < h);
        let n = self.points.len();
        (0..n)
            .map(|k| self.points[(start + k) % n].1)
            .find(|&i| eligible(i))
    }
}

/// FNV-1a, finished with the splitmix64 mixer for a well-spread result.
/// Stable across runs and builds, so a host maps to the same backend after a
/// restart.
pub fn hash64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Which backends of a pool take frames now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Primary,
    /// Only while no primary is available.
    Backup,
}

/// Picks a backend per frame.
#[derive(Debug)]
pub struct Selector {
    mode: Balance,
    key: HashKey,
    members: Vec<Member>,
    /// Smooth weighted round robin state (nginx's algorithm).
    current: Vec<i64>,
    /// Rotating start for ties in least-pending.
    rotate: usize,
    primary_ring: Ring,
    backup_ring: Ring,
}

impl Selector {
    pub fn new(mode: Balance, key: HashKey, members: Vec<Member>) -> Self {
        let (primary_ring, backup_ring) = if mode == Balance::Hash {
            (Ring::new(&members, false), Ring::new(&members, true))
        } else {
            Default::default()
        };
        Self {
            mode,
            key,
            current: vec![0; members.len()],
            members,
            rotate: 0,
            primary_ring,
            backup_ring,
        }
    }

    /// True when a frame's backend is fixed by its key or connection, so a
    /// full backend must be waited for rather than skipped.
    pub fn is_keyed(&self) -> bool {
        matches!(self.mode, Balance::Hash | Balance::Connection)
    }

    /// Which tier serves now (`None` when nothing is available): the
    /// primaries while any is available, else the backups.
    pub fn tier(&self, view: View<'_>) -> Option<Tier> {
        let any = |backup: bool| {
            self.members
                .iter()
                .zip(view.avail)
                .any(|(m, &a)| a && m.backup == backup)
        };
        if any(false) {
            Some(Tier::Primary)
        } else if any(true) {
            Some(Tier::Backup)
        } else {
            None
        }
    }

    /// Chooses the backend for `frame`, or `None` when no backend is
    /// available.
    pub fn pick(&mut self, view: View<'_>, frame: &Frame) -> Option<usize> {
        let backup = self.tier(view)? == Tier::Backup;
        let members = &self.members;
        let eligible = |i: usize| view.avail[i] && members[i].backup == backup;
        match self.mode {
            // A mirror pool's dispatchers each own one backend.
            Balance::RoundRobin | Balance::Mirror => {
                weighted_rr(&mut self.current, members, eligible)
            }
            Balance::LeastPending => {
                self.rotate = (self.rotate + 1) % members.len().max(1);
                least_pending(self.rotate, members, view, eligible)
            }
            Balance::Hash => {
                let h = key_hash(self.key, frame);
                let ring = if backup {
                    &self.backup_ring
                } else {
                    &self.primary_ring
                };
                ring.lookup(h, eligible)
            }
            Balance::Connection => {
                let s = frame.conn.sticky();
                if s != NO_BACKEND && s < members.len() && eligible(s) {
                    return Some(s);
                }
                let chosen = weighted_rr(&mut self.current, members, eligible)?;
                frame.conn.set_sticky(chosen);
                Some(chosen)
            }
        }
    }
}

/// Smooth weighted round robin (nginx): every eligible backend gains its
/// weight, the richest is chosen and pays the total.
fn weighted_rr(
    current: &mut [i64],
    members: &[Member],
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut total: i64 = 0;
    let mut best: Option<usize> = None;
    for (i, m) in members.iter().enumerate() {
        if !eligible(i) {
            continue;
        }
        let w = i64::from(m.weight);
        current[i] += w;
        total += w;
        if best.is_none_or(|b| current[i] > current[b]) {
            best = Some(i);
        }
    }
    let b = best?;
    current[b] -= total;
    Some(b)
}

/// Fewest pending bytes per unit of weight; ties go to the first from a
/// rotating start.
fn least_pending(
    start: usize,
    members: &[Member],
    view: View<'_>,
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    let n = members.len();
    let mut best: Option<(u128, usize)> = None;
    for k in 0..n {
        let i = (start + k) % n;
        if !eligible(i) {
            continue;
        }
        let score = u128::from(view.pending[i]) * 1000 / u128::from(members[i].weight);
        if best.is_none_or(|(s, _)| score < s) {
            best = Some((score, i));
        }
    }
    best.map(|(_, i)| i)
}

/// The hash of this frame's key. A frame whose syslog header has no
/// hostname (or app-name) falls back to its source IP.
fn key_hash(key: HashKey, frame: &Frame) -> u64 {
    let field = match key {
        HashKey::SourceIp => None,
        HashKey::Hostname => syslog::parse(&frame.data).hostname,
        HashKey::AppName => syslog::parse(&frame.data).app_name,
    };
    match field {
        Some(f) => hash64(f),
        None => match frame.conn.peer.ip() {
            IpAddr::V4(a) => hash64(&a.octets()),
            IpAddr::V6(a) => hash64(&a.octets()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::ConnMeta;
    use bytes::Bytes;
    use std::sync::Arc;

    fn members(spec: &[(u32, bool)]) -> Vec<Member> {
        spec.iter()
            .enumerate()
            .map(|(i, &(weight, backup))| Member {
                name: format!("10.0.0.{i}:514"),
                weight,
                backup,
            })
            .collect()
    }

    fn frame(data: &str, peer: &str) -> Frame {
        Frame::new(
            Bytes::from(data.to_owned()),
            Arc::new(ConnMeta::new(1, "l".into(), peer.parse().unwrap())),
        )
    }

    fn count(sel: &mut Selector, avail: &[bool], n: usize) -> Vec<usize> {
        let pending = vec![0; avail.len()];
        let mut c = vec![0; avail.len()];
        let f = frame("x", "127.0.0.1:1");
        for _ in 0..n {
            c[sel
                .pick(
                    View {
                        avail,
                        pending: &pending,
                    },
                    &f,
                )
                .unwrap()] += 1;
        }
        c
    }

    #[test]
    fn weighted_round_robin_is_exact_and_smooth() {
        let mut s = Selector::new(
            Balance::RoundRobin,
            HashKey::SourceIp,
            members(&[(5, false), (1, false), (1, false)]),
        );
        assert_eq!(count(&mut s, &[true; 3], 700), vec![500, 100, 100]);
        // Smooth: the heavy backend never gets more than 3 in a row here.
        let pending = [0; 3];
        let f = frame("x", "127.0.0.1:1");
        let seq: Vec<usize> = (0..7)
            .map(|_| {
                s.pick(
                    View {
                        avail: &[true; 3],
                        pending: &pending,
                    },
                    &f,
                )
                .unwrap()
            })
            .collect();
        assert_eq!(seq.iter().filter(|&&i| i == 0).count(), 5);
        assert!(
            !seq.windows(4).any(|w| w.iter().all(|&i| i == 0)),
            "{seq:?}"
        );
    }

    #[test]
    fn backups_only_when_no_primary_is_available() {
        let mut s = Selector::new(
            Balance::RoundRobin,
            HashKey::SourceIp,
            members(&[(1, false), (1, false), (1, true)]),
        );
        assert_eq!(count(&mut s, &[true, true, true], 10), vec![5, 5, 0]);
        assert_eq!(count(&mut s, &[false, true, true], 10), vec![0, 10, 0]);
        assert_eq!(count(&mut s, &[false, false, true], 10), vec![0, 0, 10]);
        let pending = [0; 3];
        assert_eq!(
            s.pick(
                View {
                    avail: &[false; 3],
                    pending: &pending
                },
                &frame("x", "127.0.0.1:1")
            ),
            None
        );
    }

    #[test]
    fn least_pending_prefers_the_emptiest_per_weight() {
        let mut s = Selector::new(
            Balance::LeastPending,
            HashKey::SourceIp,
            members(&[(1, false), (2, false), (1, false)]),
        );
        let f = frame("x", "127.0.0.1:1");
        let mut v = |p: &[u64; 3]| s_pick(&mut s, p, &f);
        fn s_pick(s: &mut Selector, p: &[u64; 3], f: &Frame) -> usize {
            s.pick(
                View {
                    avail: &[true; 3],
                    pending: p,
                },
                f,
            )
            .unwrap()
        }
        assert_eq!(v(&[100, 100, 10]), 2);
        assert_eq!(v(&[100, 150, 100]), 1, "weight 2 halves its score");
        assert_eq!(v(&[0, 500, 900]), 0);
    }

    #[test]
    fn hash_keeps_hosts_and_moves_only_the_failed_share() {
        let mut s = Selector::new(
            Balance::Hash,
            HashKey::Hostname,
            members(&[(1, false), (1, false), (1, false)]),
        );
        let pending = [0; 3];
        let hosts: Vec<String> = (0..600)
            .map(|i| format!("<13>1 - host{i} app - - - m"))
            .collect();
        let all = [true; 3];
        let before: Vec<usize> = hosts
            .iter()
            .map(|h| {
                s.pick(
                    View {
                        avail: &all,
                        pending: &pending,
                    },
                    &frame(h, "127.0.0.1:1"),
                )
                .unwrap()
            })
            .collect();
        let mut share = [0; 3];
        for &b in &before {
            share[b] += 1;
        }
        assert!(share.iter().all(|&c| c > 120), "uneven ring: {share:?}");
        // Same host from another source address: same backend.
        let again = s
            .pick(
                View {
                    avail: &all,
                    pending: &pending,
                },
                &frame(&hosts[7], "10.9.9.9:1"),
            )
            .unwrap();
        assert_eq!(again, before[7]);
        let one_down = [true, false, true];
        for (h, &b) in hosts.iter().zip(&before) {
            let now = s
                .pick(
                    View {
                        avail: &one_down,
                        pending: &pending,
                    },
                    &frame(h, "127.0.0.1:1"),
                )
                .unwrap();
            if b != 1 {
                assert_eq!(now, b, "{h} moved although its backend is up");
            } else {
                assert_ne!(now, 1);
            }
        }
    }

    #[test]
    fn hash_key_falls_back_to_source_ip() {
        let mut s = Selector::new(
            Balance::Hash,
            HashKey::AppName,
            members(&[(1, false), (1, false), (1, false), (1, false)]),
        );
        let pending = [0; 4];
        let all = [true; 4];
        let a = s
            .pick(
                View {
                    avail: &all,
                    pending: &pending,
                },
                &frame("no header", "10.1.1.1:5"),
            )
            .unwrap();
        for port in 6..20 {
            let b = s
                .pick(
                    View {
                        avail: &all,
                        pending: &pending,
                    },
                    &frame("other", &format!("10.1.1.1:{port}")),
                )
                .unwrap();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn connection_mode_sticks_until_the_backend_fails() {
        let mut s = Selector::new(
            Balance::Connection,
            HashKey::SourceIp,
            members(&[(1, false), (1, false)]),
        );
        let pending = [0; 2];
        let conn = Arc::new(ConnMeta::new(9, "l".into(), "127.0.0.1:9".parse().unwrap()));
        let f = Frame::new(Bytes::from_static(b"x"), conn.clone());
        let first = s
            .pick(
                View {
                    avail: &[true, true],
                    pending: &pending,
                },
                &f,
            )
            .unwrap();
        for _ in 0..20 {
            assert_eq!(
                s.pick(
                    View {
                        avail: &[true, true],
                        pending: &pending
                    },
                    &f
                ),
                Some(first)
            );
        }
        let mut avail = [true, true];
        avail[first] = false;
        let moved = s
            .pick(
                View {
                    avail: &avail,
                    pending: &pending,
                },
                &f,
            )
            .unwrap();
        assert_ne!(moved, first);
        // Stays on the new one even after the old one returns.
        assert_eq!(
            s.pick(
                View {
                    avail: &[true, true],
                    pending: &pending
                },
                &f
            ),
            Some(moved)
        );
    }
}
