//! A linearizability checker for registers (Wing and Gong's search with Lowe's memoisation, the
//! algorithm behind Knossos' `wgl`): is there a total order of the operations, consistent with
//! their real-time order, in which every read returns the value of the latest write before it?
//!
//! An operation that ended indeterminate (info) may have taken effect at any time after its
//! call, or never: it is given a return time after every other operation. Failed operations never
//! happened and are left out, as are indeterminate reads (they observed nothing).

use std::collections::HashSet;

/// What one register operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Set the register to this value.
    Write(u32),
    /// Read this value (`None`: the register was never written).
    Read(Option<u32>),
}

/// One operation: when it was called and returned (`None`: indeterminate), and what it did.
#[derive(Clone, Debug)]
pub struct RegOp {
    /// Call time (any monotonic unit).
    pub call: u64,
    /// Return time; `None` when the outcome is unknown.
    pub ret: Option<u64>,
    /// What it did.
    pub action: Action,
}

/// The verdict on one register's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// None exists. The operations (indexes into the input) the deepest search could not place
    /// next: every one of them contradicts what was linearized before it.
    NotLinearizable { linearized: usize, stuck_at: Vec<usize> },
    /// The search gave up after this many steps (no verdict).
    Unknown(u64),
}

/// One event of the search's list: the call or return of operation `op`.
#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    /// For a call, the index of its return entry.
    ret: usize,
    prev: usize,
    next: usize,
}

/// Checks one register's operations, starting from `initial`, giving up after `budget` steps.
pub fn check(ops: &[RegOp], initial: Option<u32>, budget: u64) -> Verdict {
    // Calls and returns, by time; a call sorts before a return at the same instant (they overlap).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, o) in ops.iter().enumerate() {
        events.push((o.call, false, i));
        events.push((o.ret.unwrap_or(u64::MAX), true, i));
    }
    events.sort_by_key(|&(t, is_ret, i)| (t, is_ret, i));
    // A doubly linked list with a head sentinel at index 0.
    let n = events.len();
    let mut list: Vec<Entry> = Vec::with_capacity(n + 1);
    list.push(Entry { op: usize::MAX, is_call: false, ret: 0, prev: 0, next: if n == 0 { usize::MAX } else { 1 } });
    let mut ret_of = vec![0usize; ops.len()];
    for (k, &(_, is_ret, i)) in events.iter().enumerate() {
        let at = k + 1;
        if is_ret {
            ret_of[i] = at;
        }
        list.push(Entry {
            op: i,
            is_call: !is_ret,
            ret: 0,
            prev: at - 1,
            next: if at == n { usize::MAX } else { at + 1 },
        });
    }
    for e in list.iter_mut().skip(1) {
        if e.is_call {
            e.ret = ret_of[e.op];
        }
    }
    let lift = |list: &mut Vec<Entry>, call: usize| {
        let ret = list[call].ret;
        let (p, nx) = (list[call].prev, list[call].next);
        list[p].next = nx;
        if nx != usize::MAX {
            list[nx].prev = p;
        }
        let (p, nx) = (list[ret].prev, list[ret].next);
        list[p].next = nx;
        if nx != usize::MAX {
            list[nx].prev = p;
        }
    };
    let unlift = |list: &mut Vec<Entry>, call: usize| {
        let ret = list[call].ret;
        let (p, nx) = (list[ret].prev, list[ret].next);
        list[p].next = ret;
        if nx != usize::MAX {
            list[nx].prev = ret;
        }
        let (p, nx) = (list[call].prev, list[call].next);
        list[p].next = call;
        if nx != usize::MAX {
            list[nx].prev = call;
        }
    };
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<u32>)> = HashSet::new();
    // (call entry, state before it)
    let mut stack: Vec<(usize, Option<u32>)> = Vec::new();
    let mut state = initial;
    let mut entry = list[0].next;
    let (mut deepest, mut stuck) = (0usize, Vec::new());
    let mut steps = 0u64;
    while list[0].next != usize::MAX {
        steps += 1;
        if steps > budget {
            return Verdict::Unknown(steps);
        }
        let e = list[entry];
        if e.is_call {
            let next_state = match ops[e.op].action {
                Action::Write(v) => Some(Some(v)),
                Action::Read(r) if r == state => Some(state),
                Action::Read(_) => None,
            };
            let mut advanced = false;
            if let Some(s) = next_state {
                linearized[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((linearized.clone(), s)) {
                    stack.push((entry, state));
                    state = s;
                    lift(&mut list, entry);
                    entry = list[0].next;
                    advanced = true;
                } else {
                    linearized[e.op / 64] &= !(1 << (e.op % 64));
                }
            }
            if !advanced {
                if stack.len() >= deepest {
                    if stack.len() > deepest {
                        stuck.clear();
                    }
                    deepest = stack.len();
                    if !stuck.contains(&e.op) {
                        stuck.push(e.op);
                    }
                }
                entry = e.next;
            }
        } else {
            // A return reached: the operations before it cannot all be placed this way.
            let Some((call, prev_state)) = stack.pop() else {
                return Verdict::NotLinearizable { linearized: deepest, stuck_at: stuck };
            };
            let op = list[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            state = prev_state;
            unlift(&mut list, call);
            entry = list[call].next;
        }
    }
    Verdict::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(call: u64, ret: u64, v: u32) -> RegOp {
        RegOp { call, ret: Some(ret), action: Action::Write(v) }
    }
    fn r(call: u64, ret: u64, v: Option<u32>) -> RegOp {
        RegOp { call, ret: Some(ret), action: Action::Read(v) }
    }

    #[test]
    fn sequential_and_overlapping_histories_that_linearize_pass() {
        assert_eq!(check(&[], None, 1_000), Verdict::Linearizable);
        assert_eq!(
            check(&[w(0, 1, 1), r(2, 3, Some(1)), w(4, 5, 2), r(6, 7, Some(2))], None, 1_000),
            Verdict::Linearizable
        );
        // A read overlapping a write may see either value.
        assert_eq!(check(&[w(0, 10, 1), r(1, 2, None), r(3, 4, Some(1))], None, 1_000), Verdict::Linearizable);
        // Concurrent writes may land in either order.
        assert_eq!(check(&[w(0, 10, 1), w(0, 10, 2), r(11, 12, Some(1))], None, 1_000), Verdict::Linearizable);
        // An indeterminate write may have happened late...
        let info = RegOp { call: 0, ret: None, action: Action::Write(3) };
        assert_eq!(check(&[info.clone(), r(5, 6, None), r(7, 8, Some(3))], None, 1_000), Verdict::Linearizable);
        // ...or never.
        assert_eq!(check(&[info, r(5, 6, None)], None, 1_000), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_and_a_value_never_written_fail() {
        // Read the old value after the new one was acknowledged and read.
        let stale = [w(0, 1, 1), w(2, 3, 2), r(4, 5, Some(2)), r(6, 7, Some(1))];
        match check(&stale, None, 1_000) {
            Verdict::NotLinearizable { stuck_at, .. } => assert!(stuck_at.contains(&3), "{stuck_at:?}"),
            v => panic!("{v:?}"),
        }
        // A value nobody wrote.
        assert!(matches!(check(&[w(0, 1, 1), r(2, 3, Some(9))], None, 1_000), Verdict::NotLinearizable { .. }));
        // A read that misses a write acknowledged before it began.
        assert!(matches!(check(&[w(0, 1, 1), r(2, 3, None)], None, 1_000), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn the_search_gives_up_at_its_budget() {
        let ops: Vec<RegOp> = (0..12).map(|i| w(0, 100, i)).chain([r(101, 102, Some(99))]).collect();
        assert!(matches!(check(&ops, None, 50), Verdict::Unknown(_)));
    }
}
